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
	// EventStep: a knock advanced a source through a sequence; Step knocks
	// of it are now done.
	EventStep EventKind = iota + 1
	// EventOpen: a source completed a door's sequence.
	EventOpen
	// EventClose: a source completed a door's close sequence.
	EventClose
	// EventReset: the source's progress through a sequence was thrown
	// away; Reason says why.
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
	case EventClose:
		return "close"
	case EventReset:
		return "reset"
	case EventTimeout:
		return "timeout"
	case EventEvict:
		return "evict"
	}
	return "unknown"
}

// ResetReason says why an EventReset happened.
type ResetReason uint8

const (
	// ResetWrongKnock: a knock on one of the door's own ports that was not
	// the next step (Got was sent, Want expected).
	ResetWrongKnock ResetReason = iota + 1
	// ResetOtherPort: a new connection to a port that is no step of the
	// door — what a port scan that walks the knock ports in order does.
	ResetOtherPort
)

func (r ResetReason) String() string {
	switch r {
	case ResetWrongKnock:
		return "wrong knock"
	case ResetOtherPort:
		return "connection to another port"
	}
	return ""
}

// Event is one thing that happened to one source. Door indexes the doors
// the Tracker was made with; it is -1 for EventEvict. Close says the event
// concerns the door's close sequence; Slot, which of a rotating door's
// open sequences (0 otherwise).
type Event struct {
	Kind   EventKind
	Door   int
	Close  bool
	Slot   int
	Src    netip.Addr
	Step   int // knocks done: after EventStep, or before EventReset/EventTimeout
	Of     int // length of the sequence
	Reason ResetReason
	Got    config.Port
	Want   config.Port // for ResetWrongKnock
}

// Tracker follows each source's progress through each door's sequences.
//
// The kernel decides which door a knock is for: each door's knock rules
// log with the door's index as prefix, after matching the door's
// interface, TCP flags and ICMP payload size, so Packet.Door names it.
// Packets from the scan rule (Door -1) are new connections from sources
// that are part-way through a sequence, to ports that are no knock port.
//
// Cost per packet is O(sequences of the door) plus, for a source that is
// being tracked, O(sequences it is part-way through). Memory is bounded by
// maxTracked sources; the least recently seen source is forgotten first.
// A Tracker is not safe for concurrent use: the daemon gives it one owner
// goroutine.
type Tracker struct {
	doors []config.Door
	seqs  []sequence
	// doorSeqs[d] are the indexes in seqs of door d's sequences.
	doorSeqs [][]int
	// ports[d] are all knock steps of door d, open and close.
	ports   []map[config.Port]bool
	max     int
	sources map[netip.Addr]*source
	// head is the least recently seen source, tail the most recent: a
	// doubly linked list so that moving a source to the tail and evicting
	// the head are O(1).
	head, tail *source
	free       *source // recycled sources, so the steady path allocates nothing
	emit       func(Event)
}

type sequence struct {
	door  int
	close bool
	slot  int // which of the door's open sequences
	steps []config.Port
}

type source struct {
	addr       netip.Addr
	prev, next *source
	progress   []progress // one per sequence
	active     int        // sequences with step > 0
}

type progress struct {
	step    int       // knocks done; 0 = not started
	started time.Time // first knock, for seq_timeout
}

// NewTracker returns a Tracker for doors that reports through emit.
// emit is called synchronously and must not call back into the Tracker.
func NewTracker(doors []config.Door, maxTracked int, emit func(Event)) *Tracker {
	t := &Tracker{
		doors:    doors,
		doorSeqs: make([][]int, len(doors)),
		ports:    make([]map[config.Port]bool, len(doors)),
		max:      max(maxTracked, 1),
		sources:  map[netip.Addr]*source{},
		emit:     emit,
	}
	for i, d := range doors {
		t.doorSeqs[i] = append(t.doorSeqs[i], len(t.seqs))
		t.seqs = append(t.seqs, sequence{door: i, steps: d.Sequence})
		if d.IsRotating() {
			// Two slots, for the current and the previous window's
			// sequences; SetSequence fills them as the windows turn.
			t.doorSeqs[i] = append(t.doorSeqs[i], len(t.seqs))
			t.seqs = append(t.seqs, sequence{door: i, slot: 1})
		}
		if len(d.CloseSequence) > 0 {
			t.doorSeqs[i] = append(t.doorSeqs[i], len(t.seqs))
			t.seqs = append(t.seqs, sequence{door: i, close: true, steps: d.CloseSequence})
		}
		t.indexPorts(i)
	}
	return t
}

func (t *Tracker) indexPorts(door int) {
	t.ports[door] = map[config.Port]bool{}
	for _, si := range t.doorSeqs[door] {
		for _, p := range t.seqs[si].steps {
			t.ports[door][p] = true
		}
	}
}

// SetSequence replaces one of door's open sequences — slot 0, or for a
// rotating door slot 0 or 1 — as a one_time_sequences door does once a
// sequence is used up and a rotating door each window, and forgets every
// source's progress through the old one. An empty sequence opens nothing.
func (t *Tracker) SetSequence(door, slot int, steps []config.Port) {
	si := t.doorSeqs[door][slot]
	t.seqs[si].steps = steps
	t.indexPorts(door)
	for s := t.head; s != nil; {
		next := s.next
		s.clear(si)
		if s.active == 0 {
			t.remove(s)
		}
		s = next
	}
}

// Len returns how many sources are being tracked.
func (t *Tracker) Len() int { return len(t.sources) }

// Observe feeds one logged packet at time now.
func (t *Tracker) Observe(now time.Time, p *Packet) {
	port := config.Port{Num: p.DstPort, Proto: p.Proto}
	s := t.sources[p.Src]
	if p.Door >= 0 && p.Door < len(t.doors) && t.counts(p.Door, p) {
		for _, si := range t.doorSeqs[p.Door] {
			s = t.step(now, s, p.Src, si, port)
		}
	}
	if s == nil {
		return
	}
	// A source part-way through another door's sequence has broken it off:
	// it tried a port that is no step of that door.
	if s.active > 0 && (p.Proto == config.TCP || p.Proto == config.UDP) {
		for si := range t.seqs {
			d := t.seqs[si].door
			if s.progress[si].step == 0 || d == p.Door || t.ports[d][port] || !t.counts(d, p) {
				continue
			}
			if t.expired(now, s, si) {
				continue
			}
			t.emitReset(s, si, ResetOtherPort, port)
		}
	}
	if s.active == 0 {
		t.remove(s)
	} else {
		t.touch(s)
	}
}

// counts reports whether p is a connection attempt in door's terms: for
// TCP, its flags must match the door's tcp_flags. Other packets are
// ignored, neither a step nor a reason to reset.
func (t *Tracker) counts(door int, p *Packet) bool {
	return p.Proto != config.TCP || t.doors[door].TCPFlags.Match(p.TCPFlags)
}

// expired forgets progress older than its door's seq_timeout, reporting it.
func (t *Tracker) expired(now time.Time, s *source, si int) bool {
	pr := &s.progress[si]
	if pr.step == 0 || now.Sub(pr.started) <= t.doors[t.seqs[si].door].SeqTimeout {
		return false
	}
	sq := &t.seqs[si]
	t.emit(Event{Kind: EventTimeout, Door: sq.door, Close: sq.close, Src: s.addr, Step: pr.step, Of: len(sq.steps)})
	s.clear(si)
	return true
}

func (t *Tracker) emitReset(s *source, si int, why ResetReason, got config.Port) {
	sq := &t.seqs[si]
	pr := &s.progress[si]
	e := Event{Kind: EventReset, Door: sq.door, Close: sq.close, Src: s.addr, Step: pr.step, Of: len(sq.steps), Reason: why, Got: got}
	if why == ResetWrongKnock {
		e.Want = sq.steps[pr.step]
	}
	t.emit(e)
	s.clear(si)
}

// step applies one knock on port to sequence si for the source s (nil
// when not tracked yet) and returns the source, which it may have created.
func (t *Tracker) step(now time.Time, s *source, src netip.Addr, si int, port config.Port) *source {
	sq := &t.seqs[si]
	if len(sq.steps) == 0 {
		return s // a one-time door whose file has run out
	}
	if s != nil && !t.expired(now, s, si) && s.progress[si].step > 0 {
		pr := &s.progress[si]
		switch port {
		case sq.steps[pr.step]:
			pr.step++
			if pr.step == len(sq.steps) {
				s.clear(si)
				t.emit(t.done(sq, src))
			} else {
				t.emit(Event{Kind: EventStep, Door: sq.door, Close: sq.close, Src: src, Step: pr.step, Of: len(sq.steps)})
			}
			return s
		case sq.steps[pr.step-1]:
			// The step just done, again: a retransmitted SYN or a client
			// that sends each knock twice. Not a reason to reset.
			return s
		}
		t.emitReset(s, si, ResetWrongKnock, port)
	}
	if port != sq.steps[0] {
		return s
	}
	if len(sq.steps) == 1 {
		t.emit(t.done(sq, src))
		return s
	}
	if s == nil {
		s = t.add(src)
	}
	s.progress[si] = progress{step: 1, started: now}
	s.active++
	t.emit(Event{Kind: EventStep, Door: sq.door, Close: sq.close, Src: src, Step: 1, Of: len(sq.steps)})
	return s
}

func (t *Tracker) done(sq *sequence, src netip.Addr) Event {
	kind := EventOpen
	if sq.close {
		kind = EventClose
	}
	return Event{Kind: kind, Door: sq.door, Close: sq.close, Slot: sq.slot, Src: src, Step: len(sq.steps), Of: len(sq.steps)}
}

// Sweep forgets progress older than its door's seq_timeout, reporting each
// as EventTimeout, so that memory is returned even when a source never
// sends another packet.
func (t *Tracker) Sweep(now time.Time) {
	for s := t.head; s != nil; {
		next := s.next
		for si := range s.progress {
			t.expired(now, s, si)
		}
		if s.active == 0 {
			t.remove(s)
		}
		s = next
	}
}

func (s *source) clear(si int) {
	if s.progress[si].step > 0 {
		s.active--
	}
	s.progress[si] = progress{}
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
		s = &source{progress: make([]progress, len(t.seqs))}
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
