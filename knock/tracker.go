package knock

import (
	"hash/maphash"
	"math/bits"
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
// concerns the door's close sequence; Slot, which of the door's open
// sequences (a rotating door has two).
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

// TrackedDoor is what the Tracker needs of a door with knock sequences.
type TrackedDoor struct {
	// Slots are the door's open sequences: one, or two for a rotating
	// door (the current and the previous window's). SetSequence replaces
	// them; an empty one opens nothing.
	Slots      [][]config.Port
	Close      []config.Port
	SeqTimeout time.Duration
	TCPFlags   config.TCPFlags
}

// Tracker follows each source's progress through each door's sequences.
//
// The kernel decides which door a knock is for: each door's knock rules
// log under the door's prefix, after matching the door's interface, TCP
// flags and ICMP payload size, so Packet.Door names it. Packets from the
// scan rule (Door -1) are new connections from sources that are part-way
// through a sequence, to ports that are no knock port.
//
// All its memory is taken when it is made, sized for maxTracked sources:
// a table of sources, their progress, and an open-addressing index keyed
// with a random seed (so that no choice of spoofed addresses makes
// lookups slow). A flood of new sources evicts the least recently seen
// one per new source and allocates nothing; the memory is the same after
// a minute of flood as before it.
//
// Observe and Sweep return what happened as events, in a slice that is
// valid until the next call. A Tracker is not safe for concurrent use:
// the daemon gives it one owner goroutine.
type Tracker struct {
	doors []TrackedDoor
	seqs  []sequence
	// doorSeqs[d] are the indexes in seqs of door d's sequences.
	doorSeqs [][]int
	// ports[d] are all knock steps of door d, open and close.
	ports []map[config.Port]bool

	// base is the time progress is counted from: each progress stores
	// the nanoseconds since, so the monotonic clock is kept.
	base time.Time

	// sources[1:] are the slots for tracked sources (0 means none); a
	// source's progress is progress[i*len(seqs):(i+1)*len(seqs)].
	sources  []source
	progress []progress
	// head is the least recently seen source, tail the most recent: a
	// doubly linked list so that moving a source to the tail and evicting
	// the head are O(1). free chains the slots given back through next;
	// fresh is the first slot never used (slots are taken in order, so
	// memory the kernel gave the tables is only touched as sources come).
	head, tail, free, fresh int32
	n                       int // sources tracked

	// index maps an address to its slot: linear probing in a table of a
	// power of two at least twice maxTracked, deletion by backward shift.
	index []int32
	mask  uint64
	seed  maphash.Seed

	events []Event
}

type sequence struct {
	door  int
	close bool
	slot  int // which of the door's open sequences
	steps []config.Port
}

// key is an address as the index keeps it: IPv4 sources as their 4 bytes
// mapped into 16, with v4 set, so that an IPv4 source and the v4-mapped
// IPv6 source of the same bytes stay apart.
type key struct {
	b  [16]byte
	v4 bool
}

func keyOf(a netip.Addr) key { return key{a.As16(), a.Is4()} }

func (k key) addr() netip.Addr {
	a := netip.AddrFrom16(k.b)
	if k.v4 {
		return a.Unmap()
	}
	return a
}

type source struct {
	key        key
	hash       uint64 // of key: kept, so the index never hashes twice
	prev, next int32
	active     int32 // sequences with step > 0
}

type progress struct {
	started int64 // nanoseconds since base of the first knock
	step    int32 // knocks done; 0 = not started
}

// NewTracker returns a Tracker for doors with room for maxTracked sources.
func NewTracker(doors []TrackedDoor, maxTracked int, now time.Time) *Tracker {
	maxTracked = max(maxTracked, 1)
	t := &Tracker{
		doors:    doors,
		doorSeqs: make([][]int, len(doors)),
		ports:    make([]map[config.Port]bool, len(doors)),
		base:     now,
		seed:     maphash.MakeSeed(),
	}
	for i, d := range doors {
		for slot, steps := range d.Slots {
			t.doorSeqs[i] = append(t.doorSeqs[i], len(t.seqs))
			t.seqs = append(t.seqs, sequence{door: i, slot: slot, steps: steps})
		}
		if len(d.Close) > 0 {
			t.doorSeqs[i] = append(t.doorSeqs[i], len(t.seqs))
			t.seqs = append(t.seqs, sequence{door: i, close: true, steps: d.Close})
		}
		t.indexPorts(i)
	}
	t.sources = make([]source, maxTracked+1)
	t.progress = make([]progress, (maxTracked+1)*len(t.seqs))
	t.fresh = 1
	size := uint64(1) << bits.Len64(uint64(2*maxTracked-1))
	t.index = make([]int32, size)
	t.mask = size - 1
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

// SetSequence replaces one of door's open sequences (slot 0, or for a
// rotating door slot 0 or 1), as a one_time_sequences door does once a
// sequence is used up and a rotating door each window, and forgets every
// source's progress through the old one. An empty sequence opens nothing.
func (t *Tracker) SetSequence(door, slot int, steps []config.Port) {
	si := t.doorSeqs[door][slot]
	t.seqs[si].steps = steps
	t.indexPorts(door)
	for s := t.head; s != 0; {
		next := t.sources[s].next
		t.clear(s, si)
		if t.sources[s].active == 0 {
			t.remove(s)
		}
		s = next
	}
}

// Len returns how many sources are being tracked.
func (t *Tracker) Len() int { return t.n }

// Observe feeds one logged packet at time now and returns the events it
// caused.
func (t *Tracker) Observe(now time.Time, p *Packet) []Event {
	t.events = t.events[:0]
	at := now.Sub(t.base).Nanoseconds()
	port := config.Port{Num: p.DstPort, Proto: p.Proto}
	k := keyOf(p.Src)
	h := t.hash(k)
	s := t.lookup(k, h)
	if p.Door >= 0 && p.Door < len(t.doors) && t.counts(p.Door, p) {
		for _, si := range t.doorSeqs[p.Door] {
			s = t.step(at, s, k, h, si, port)
		}
	}
	if s == 0 {
		return t.events
	}
	// A source part-way through another door's sequence has broken it off:
	// it tried a port that is no step of that door.
	if t.sources[s].active > 0 && (p.Proto == config.TCP || p.Proto == config.UDP) {
		for si := range t.seqs {
			d := t.seqs[si].door
			if t.prog(s, si).step == 0 || d == p.Door || t.ports[d][port] || !t.counts(d, p) {
				continue
			}
			if t.expired(at, s, si) {
				continue
			}
			t.emitReset(s, si, ResetOtherPort, port)
		}
	}
	if t.sources[s].active == 0 {
		t.remove(s)
	} else {
		t.touch(s)
	}
	return t.events
}

// counts reports whether p is a connection attempt in door's terms: for
// TCP, its flags must match the door's tcp_flags. Other packets are
// ignored, neither a step nor a reason to reset.
func (t *Tracker) counts(door int, p *Packet) bool {
	return p.Proto != config.TCP || t.doors[door].TCPFlags.Match(p.TCPFlags)
}

func (t *Tracker) prog(s int32, si int) *progress {
	return &t.progress[int(s)*len(t.seqs)+si]
}

// expired forgets progress older than its door's seq_timeout, reporting it.
func (t *Tracker) expired(at int64, s int32, si int) bool {
	pr := t.prog(s, si)
	if pr.step == 0 || at-pr.started <= t.doors[t.seqs[si].door].SeqTimeout.Nanoseconds() {
		return false
	}
	sq := &t.seqs[si]
	t.events = append(t.events, Event{Kind: EventTimeout, Door: sq.door, Close: sq.close, Slot: sq.slot,
		Src: t.sources[s].key.addr(), Step: int(pr.step), Of: len(sq.steps)})
	t.clear(s, si)
	return true
}

func (t *Tracker) emitReset(s int32, si int, why ResetReason, got config.Port) {
	sq := &t.seqs[si]
	pr := t.prog(s, si)
	e := Event{Kind: EventReset, Door: sq.door, Close: sq.close, Slot: sq.slot, Src: t.sources[s].key.addr(),
		Step: int(pr.step), Of: len(sq.steps), Reason: why, Got: got}
	if why == ResetWrongKnock {
		e.Want = sq.steps[pr.step]
	}
	t.events = append(t.events, e)
	t.clear(s, si)
}

// step applies one knock on port to sequence si for the source in slot s
// (0 when not tracked yet) and returns the source's slot, which it may
// have taken.
func (t *Tracker) step(at int64, s int32, k key, h uint64, si int, port config.Port) int32 {
	sq := &t.seqs[si]
	if len(sq.steps) == 0 {
		return s // a one-time door whose file has run out, a used rotation
	}
	src := k.addr()
	if s != 0 && !t.expired(at, s, si) && t.prog(s, si).step > 0 {
		pr := t.prog(s, si)
		switch port {
		case sq.steps[pr.step]:
			pr.step++
			if int(pr.step) == len(sq.steps) {
				t.clear(s, si)
				t.events = append(t.events, t.done(sq, src))
			} else {
				t.events = append(t.events, Event{Kind: EventStep, Door: sq.door, Close: sq.close, Slot: sq.slot, Src: src, Step: int(pr.step), Of: len(sq.steps)})
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
		t.events = append(t.events, t.done(sq, src))
		return s
	}
	if s == 0 {
		s = t.add(k, h)
	}
	*t.prog(s, si) = progress{step: 1, started: at}
	t.sources[s].active++
	t.events = append(t.events, Event{Kind: EventStep, Door: sq.door, Close: sq.close, Slot: sq.slot, Src: src, Step: 1, Of: len(sq.steps)})
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
func (t *Tracker) Sweep(now time.Time) []Event {
	t.events = t.events[:0]
	at := now.Sub(t.base).Nanoseconds()
	for s := t.head; s != 0; {
		next := t.sources[s].next
		for si := range t.seqs {
			t.expired(at, s, si)
		}
		if t.sources[s].active == 0 {
			t.remove(s)
		}
		s = next
	}
	return t.events
}

func (t *Tracker) clear(s int32, si int) {
	pr := t.prog(s, si)
	if pr.step > 0 {
		t.sources[s].active--
	}
	*pr = progress{}
}

// add starts tracking k, evicting the least recently seen source when the
// table is full.
func (t *Tracker) add(k key, h uint64) int32 {
	if t.free == 0 && int(t.fresh) == len(t.sources) {
		old := t.head
		t.events = append(t.events, Event{Kind: EventEvict, Door: -1, Src: t.sources[old].key.addr()})
		t.remove(old)
	}
	s := t.free
	if s != 0 {
		t.free = t.sources[s].next
	} else {
		s = t.fresh
		t.fresh++
	}
	t.sources[s] = source{key: k, hash: h}
	t.insert(h, s)
	t.pushTail(s)
	t.n++
	return s
}

func (t *Tracker) remove(s int32) {
	t.unlink(s)
	t.delete(s)
	clear(t.progress[int(s)*len(t.seqs) : int(s+1)*len(t.seqs)])
	t.sources[s] = source{next: t.free}
	t.free = s
	t.n--
}

func (t *Tracker) touch(s int32) {
	if t.tail != s {
		t.unlink(s)
		t.pushTail(s)
	}
}

func (t *Tracker) pushTail(s int32) {
	src := &t.sources[s]
	src.prev, src.next = t.tail, 0
	if t.tail != 0 {
		t.sources[t.tail].next = s
	} else {
		t.head = s
	}
	t.tail = s
}

func (t *Tracker) unlink(s int32) {
	src := &t.sources[s]
	if src.prev != 0 {
		t.sources[src.prev].next = src.next
	} else {
		t.head = src.next
	}
	if src.next != 0 {
		t.sources[src.next].prev = src.prev
	} else {
		t.tail = src.prev
	}
	src.prev, src.next = 0, 0
}

func (t *Tracker) hash(k key) uint64 {
	h := maphash.Bytes(t.seed, k.b[:])
	if k.v4 {
		h = ^h
	}
	return h
}

// lookup is the slot of k, whose hash is h, or 0.
func (t *Tracker) lookup(k key, h uint64) int32 {
	for i := h & t.mask; ; i = (i + 1) & t.mask {
		s := t.index[i]
		if s == 0 || t.sources[s].hash == h && t.sources[s].key == k {
			return s
		}
	}
}

// insert files slot s under hash h; its key is not in the index. The
// table is at most half full, so a free place is always found.
func (t *Tracker) insert(h uint64, s int32) {
	i := h & t.mask
	for t.index[i] != 0 {
		i = (i + 1) & t.mask
	}
	t.index[i] = s
}

// delete takes slot s out of the index, shifting back the entries after
// it that probed past its place, so no tombstone is ever left.
func (t *Tracker) delete(s int32) {
	i := t.sources[s].hash & t.mask
	for t.index[i] != s {
		if t.index[i] == 0 {
			return
		}
		i = (i + 1) & t.mask
	}
	for j := (i + 1) & t.mask; t.index[j] != 0; j = (j + 1) & t.mask {
		home := t.sources[t.index[j]].hash & t.mask
		// Move the entry at j back to i unless its home is in (i, j].
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			t.index[i] = t.index[j]
			i = j
		}
	}
	t.index[i] = 0
}
