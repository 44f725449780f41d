package engine

import (
	"bytes"
	"time"

	"github.com/nftknock/nftknock/knock"
)

// FakeSource is a Source that tests feed: what Log hands it comes out of
// Read, in order, as if the kernel had logged it.
type FakeSource struct {
	c    chan knock.Logged
	wake chan struct{}
}

// NewFakeSource returns a FakeSource that holds up to n packets not yet
// read.
func NewFakeSource(n int) *FakeSource {
	return &FakeSource{c: make(chan knock.Logged, n), wake: make(chan struct{}, 1)}
}

// Log queues a packet logged under prefix; payload is the packet from its
// network header on. It blocks while the queue is full.
func (s *FakeSource) Log(prefix string, payload []byte) {
	s.c <- knock.Logged{Prefix: []byte(prefix), Payload: bytes.Clone(payload)}
}

// Read implements Source.
func (s *FakeSource) Read(deadline time.Time, handle func(knock.Logged)) error {
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		timeout = t.C
	}
	for {
		select {
		case lg := <-s.c:
			handle(lg)
		case <-s.wake:
			return nil
		case <-timeout:
			return nil
		}
	}
}

// Wake implements Source.
func (s *FakeSource) Wake() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}
