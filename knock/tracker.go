package knock

import (
	"net/netip"
	"time"

	"github.com/nftknock/nftknock/config"
)

// EventKind says what a packet or a sweep did to a source's progress.
type EventKind uint8

// The events a Tracker reports.
const (
	// EventStep: a knock advanced a source through a door; Step knocks of
	// the door's sequence are now done.
	EventStep EventKind = iota + 1
	// EventOpen: a source completed a door's sequence.
	EventOpen
	// EventReset: a knock on one of the door's ports that was not the next
	// step threw away the source's progress (Got was sent, Want expected).
	EventReset
	// EventTimeout: the sequence was not completed within seq_timeout of
	// its first knock.
	EventTimeout
	// EventEvict: max_tracked sources were being tracked and this one, the
	// least recently seen, was forgotten to make room.
	EventEvict
)

func (k EventKind) String() string {
	switch k {
	case EventStep:
		return "step"
	case EventOpen:
		return "open"
	case EventReset:
		return "reset"
	case EventTimeout:
		return "timeout"
	case EventEvict:
		return "evict"
	}
	return "unknown"
}

// Event is one thing that happened to one source. Door indexes the doors
// the Tracker was made with; it is -1 for EventEvict.
type Event struct {
	Kind EventKind
	Door int
	Src  netip.Addr
	Step int // knocks done: after EventStep, or before EventReset/EventTimeout
	Got  config.Port
	Want config.Port
}

// Tracker follows each source's progress through each door's sequence.
//
// Cost per packet is O(doors sharing the packet's port): a map lookup for
// the port, one for the source, and a compare with the expected step.
// Memory is bounded by maxTracked sources; the least recently seen source
// is forgotten first. A Tracker is not safe for concurrent use: the daemon
// gives it one owner goroutine.
type Tracker struct {
	doors   []config.Door
	byPort  map[config.Port][]int // knock port → doors with a step on it
	max     int
	sources map[netip.Addr]*source
	// head is the least recently seen source, tail the most recent: a
	// doubly linked list so that moving a source to the tail and evicting
	// the head are O(1).
	head, tail *source
	free       *source // recycled sources, so the steady path allocates nothing
	emit       func(Event)
}

type source struct {
	addr       netip.Addr
	prev, next *source
	progress   []progress // one per door
	active     int        // doors with step > 0
}

type progress struct {
	step    int       // knocks done; 0 = not started
	started time.Time // first knock, for seq_timeout
}

// NewTracker returns a Tracker for doors that reports through emit.
// emit is called synchronously and must not call back into the Tracker.
func NewTracker(doors []config.Door, maxTracked int, emit func(Event)) *Tracker {
	t := &Tracker{
		doors:   doors,
		byPort:  map[config.Port][]int{},
		max:     max(maxTracked, 1),
		sources: map[netip.Addr]*source{},
		emit:    emit,
	}
	for i, d := range doors {
		seen := map[config.Port]bool{}
		for _, p := range d.Sequence {
			if !seen[p] {
				seen[p] = true
				t.byPort[p] = append(t.byPort[p], i)
			}
		}
	}
	return t
}

// Len returns how many sources are being tracked.
func (t *Tracker) Len() int { return len(t.sources) }

// Observe feeds one logged packet at time now.
func (t *Tracker) Observe(now time.Time, p *Packet) {
	// Only a connection attempt counts as a TCP knock: a SYN without ACK.
	// Anything else (the stray ACK of an old connection, a RST) is ignored,
	// neither a step nor a reason to reset.
	if p.Proto == config.TCP && p.TCPFlags&(FlagSYN|FlagACK) != FlagSYN {
		return
	}
	port := config.Port{Num: p.DstPort, Proto: p.Proto}
	doors := t.byPort[port]
	if len(doors) == 0 {
		return
	}
	s := t.sources[p.Src]
	for _, di := range doors {
		s = t.step(now, s, p.Src, di, port)
	}
	if s != nil {
		if s.active == 0 {
			t.remove(s)
		} else {
			t.touch(s)
		}
	}
}

// step applies one knock on port to door di for the source s (nil when
// not tracked yet) and returns the source, which it may have created.
func (t *Tracker) step(now time.Time, s *source, src netip.Addr, di int, port config.Port) *source {
	d := &t.doors[di]
	if s != nil {
		pr := &s.progress[di]
		if pr.step > 0 && now.Sub(pr.started) > d.SeqTimeout {
			t.emit(Event{Kind: EventTimeout, Door: di, Src: src, Step: pr.step})
			s.clear(di)
		}
		if pr.step > 0 {
			switch port {
			case d.Sequence[pr.step]:
				pr.step++
				if pr.step == len(d.Sequence) {
					s.clear(di)
					t.emit(Event{Kind: EventOpen, Door: di, Src: src, Step: len(d.Sequence)})
				} else {
					t.emit(Event{Kind: EventStep, Door: di, Src: src, Step: pr.step})
				}
				return s
			case d.Sequence[pr.step-1]:
				// The step just done, again: a retransmitted SYN or a client
				// that sends each knock twice. Not a reason to reset.
				return s
			}
			t.emit(Event{Kind: EventReset, Door: di, Src: src, Step: pr.step, Got: port, Want: d.Sequence[pr.step]})
			s.clear(di)
		}
	}
	if port != d.Sequence[0] {
		return s
	}
	if len(d.Sequence) == 1 {
		t.emit(Event{Kind: EventOpen, Door: di, Src: src, Step: 1})
		return s
	}
	if s == nil {
		s = t.add(src)
	}
	s.progress[di] = progress{step: 1, started: now}
	s.active++
	t.emit(Event{Kind: EventStep, Door: di, Src: src, Step: 1})
	return s
}

// Sweep forgets progress older than its door's seq_timeout, reporting each
// as EventTimeout, so that memory is returned even when a source never
// sends another packet.
func (t *Tracker) Sweep(now time.Time) {
	for s := t.head; s != nil; {
		next := s.next
		for di := range s.progress {
			pr := &s.progress[di]
			if pr.step > 0 && now.Sub(pr.started) > t.doors[di].SeqTimeout {
				t.emit(Event{Kind: EventTimeout, Door: di, Src: s.addr, Step: pr.step})
				s.clear(di)
			}
		}
		if s.active == 0 {
			t.remove(s)
		}
		s = next
	}
}

func (s *source) clear(di int) {
	if s.progress[di].step > 0 {
		s.active--
	}
	s.progress[di] = progress{}
}

// add starts tracking src, evicting the least recently seen source when
// the table is full.
func (t *Tracker) add(src netip.Addr) *source {
	if len(t.sources) >= t.max {
		old := t.head
		t.emit(Event{Kind: EventEvict, Door: -1, Src: old.addr})
		t.remove(old)
	}
	s := t.free
	if s != nil {
		t.free = s.next
		s.next = nil
	} else {
		s = &source{progress: make([]progress, len(t.doors))}
	}
	s.addr = src
	t.sources[src] = s
	t.pushTail(s)
	return s
}

func (t *Tracker) remove(s *source) {
	t.unlink(s)
	delete(t.sources, s.addr)
	clear(s.progress)
	*s = source{progress: s.progress, next: t.free}
	t.free = s
}

func (t *Tracker) touch(s *source) {
	if t.tail != s {
		t.unlink(s)
		t.pushTail(s)
	}
}

func (t *Tracker) pushTail(s *source) {
	s.prev, s.next = t.tail, nil
	if t.tail != nil {
		t.tail.next = s
	} else {
		t.head = s
	}
	t.tail = s
}

func (t *Tracker) unlink(s *source) {
	if s.prev != nil {
		s.prev.next = s.next
	} else {
		t.head = s.next
	}
	if s.next != nil {
		s.next.prev = s.prev
	} else {
		t.tail = s.prev
	}
	s.prev, s.next = nil, nil
}
