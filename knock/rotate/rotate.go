// Package rotate derives the knock sequences of a rotating door: for each
// time window, a sequence of distinct ports drawn from the door's range by
// HMAC-SHA256 of the door's name and the window's number, as TOTP derives
// a code from a counter. The daemon and the client compute the same
// sequence from the same key and clock; a listener who captures one learns
// nothing about the next.
package rotate

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"time"

	"github.com/nftknock/nftknock/config"
)

// label separates this use of a key from every other (an SPA door may
// share the key file): the first bytes HMAC'd, before the door's name.
const label = "nftknock rotating sequence v1\x00"

// Window is the number of the window that t falls in: whole rotate_every
// periods since the Unix epoch (0 for times before it).
func Window(t time.Time, every time.Duration) uint64 {
	ms := t.UnixMilli()
	if ms < 0 || every < time.Millisecond {
		return 0
	}
	return uint64(ms) / uint64(every.Milliseconds())
}

// Start is when window w begins.
func Start(w uint64, every time.Duration) time.Time {
	return time.UnixMilli(int64(w * uint64(every.Milliseconds())))
}

// ClientWindow is the window a client knocks with at time now: the window
// of now − every/4. The daemon accepts a window's sequence until the end of
// the window after it, so this leaves a client whose clock runs up to a
// quarter window ahead of the daemon's still inside the accepted span, and
// one that runs behind three quarters of a window.
func ClientWindow(now time.Time, every time.Duration) uint64 {
	return Window(now.Add(-every/4), every)
}

// Deriver computes one door's sequences. It is not safe for concurrent use.
type Deriver struct {
	mac    hash.Hash
	door   string
	length int
	ports  config.Port // a range: Num-Last, with its protocol
	buf    []byte
}

// NewDeriver returns a Deriver for the door named door with key key, whose
// sequences are length distinct ports of the range ports (Num to Last).
// The range must hold at least length ports.
func NewDeriver(key []byte, door string, length int, ports config.Port) *Deriver {
	return &Deriver{mac: hmac.New(sha256.New, key), door: door, length: length, ports: ports}
}

// Sequence derives window w's sequence.
//
// Block i of the stream is HMAC(key, label ‖ door ‖ 0x00 ‖ w (8 bytes, big
// endian) ‖ i (4 bytes, big endian)). Each 4-byte big-endian word v of it
// is a draw: a draw at or above the largest multiple of the range's size
// that fits in 32 bits is skipped, so every port is equally likely; else
// the port is first + v mod size, skipped if the sequence has it already.
func (d *Deriver) Sequence(w uint64) []config.Port {
	first, last := uint32(d.ports.Num), uint32(max(d.ports.Last, d.ports.Num))
	size := last - first + 1
	limit := uint64(1<<32) / uint64(size) * uint64(size)
	want := min(d.length, int(size)) // distinct ports: never more than the range holds
	seq := make([]config.Port, 0, want)
	for block := uint32(0); len(seq) < want; block++ {
		d.mac.Reset()
		d.buf = append(d.buf[:0], label...)
		d.buf = append(d.buf, d.door...)
		d.buf = append(d.buf, 0)
		d.buf = binary.BigEndian.AppendUint64(d.buf, w)
		d.buf = binary.BigEndian.AppendUint32(d.buf, block)
		d.mac.Write(d.buf)
		sum := d.mac.Sum(d.buf[:0])
		for i := 0; i+4 <= len(sum) && len(seq) < want; i += 4 {
			v := binary.BigEndian.Uint32(sum[i:])
			if uint64(v) >= limit {
				continue
			}
			p := config.Port{Num: uint16(first + v%size), Proto: d.ports.Proto}
			if !contains(seq, p) {
				seq = append(seq, p)
			}
		}
	}
	return seq
}

func contains(seq []config.Port, p config.Port) bool {
	for _, q := range seq {
		if q == p {
			return true
		}
	}
	return false
}
