package knock

import (
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nftknock/nftknock/config"
)

var (
	t0    = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	srcA  = netip.MustParseAddr("192.0.2.10")
	srcB  = netip.MustParseAddr("192.0.2.11")
	srcA6 = netip.MustParseAddr("2001:db8::10")
)

// namedDoor is a door as the tests write it: a name for the events, and
// what the Tracker needs.
type namedDoor struct {
	name string
	TrackedDoor
}

func sshDoor() namedDoor {
	return namedDoor{"ssh", TrackedDoor{
		Slots:      [][]config.Port{{{Num: 7000, Proto: config.TCP}, {Num: 8000, Proto: config.UDP}, {Num: 9000, Proto: config.TCP}}},
		SeqTimeout: 10 * time.Second,
		TCPFlags:   config.DefaultTCPFlags,
	}}
}

// recorder keeps the events a Tracker returns as short strings.
type recorder struct {
	doors  []namedDoor
	events []string
	opens  []Event
}

func (r *recorder) record(events []Event) {
	for _, e := range events {
		door := "-"
		if e.Door >= 0 {
			door = r.doors[e.Door].name
		}
		if e.Close {
			door += "/close"
		}
		s := fmt.Sprintf("%s %s %s", e.Kind, door, e.Src)
		switch {
		case e.Kind == EventStep:
			s += fmt.Sprintf(" %d", e.Step)
		case e.Kind == EventReset && e.Reason == ResetWrongKnock:
			s += fmt.Sprintf(" at %d got %s want %s", e.Step, e.Got, e.Want)
		case e.Kind == EventReset:
			s += fmt.Sprintf(" at %d: %s %s", e.Step, e.Reason, e.Got)
		case e.Kind == EventOpen:
			r.opens = append(r.opens, e)
		}
		r.events = append(r.events, s)
	}
}

func (r *recorder) take() string {
	s := strings.Join(r.events, "; ")
	r.events = nil
	return s
}

// testTracker records every event its Tracker returns.
type testTracker struct {
	*Tracker
	r *recorder
}

func (t testTracker) Observe(now time.Time, p *Packet) { t.r.record(t.Tracker.Observe(now, p)) }
func (t testTracker) Sweep(now time.Time)              { t.r.record(t.Tracker.Sweep(now)) }

func trackerFor(max int, doors ...namedDoor) *Tracker {
	specs := make([]TrackedDoor, len(doors))
	for i, d := range doors {
		specs[i] = d.TrackedDoor
	}
	return NewTracker(specs, max, t0)
}

func newTestTracker(max int, doors ...namedDoor) (testTracker, *recorder) {
	r := &recorder{doors: doors}
	return testTracker{trackerFor(max, doors...), r}, r
}

// syn and udp are knocks as door 0's knock rules log them.
func syn(src netip.Addr, port uint16) *Packet {
	return &Packet{Src: src, Proto: config.TCP, DstPort: port, TCPFlags: FlagSYN}
}

func udp(src netip.Addr, port uint16) *Packet {
	return &Packet{Src: src, Proto: config.UDP, DstPort: port}
}

// forDoor is p as door's knock rule logs it.
func forDoor(door int, p *Packet) *Packet {
	q := *p
	q.Door = door
	return &q
}

// scanned is p as the scan rule logs it: a new connection from a source
// that is part-way through a sequence, to a port that is no knock port.
func scanned(p *Packet) *Packet { return forDoor(-1, p) }

func TestTracker(t *testing.T) {
	type knock struct {
		after time.Duration // since t0
		pkt   *Packet
	}
	tests := []struct {
		name   string
		knocks []knock
		want   string
	}{
		{"in order opens", []knock{{0, syn(srcA, 7000)}, {1, udp(srcA, 8000)}, {2, syn(srcA, 9000)}},
			"step ssh 192.0.2.10 1; step ssh 192.0.2.10 2; open ssh 192.0.2.10"},
		{"ipv6 opens", []knock{{0, syn(srcA6, 7000)}, {1, udp(srcA6, 8000)}, {2, syn(srcA6, 9000)}},
			"step ssh 2001:db8::10 1; step ssh 2001:db8::10 2; open ssh 2001:db8::10"},
		{"wrong order resets", []knock{{0, syn(srcA, 7000)}, {1, syn(srcA, 9000)}, {2, udp(srcA, 8000)}},
			"step ssh 192.0.2.10 1; reset ssh 192.0.2.10 at 1 got 9000:tcp want 8000:udp"},
		{"wrong protocol is another port", []knock{{0, syn(srcA, 7000)}, {1, scanned(&Packet{Src: srcA, Proto: config.TCP, DstPort: 8000, TCPFlags: FlagSYN})}},
			"step ssh 192.0.2.10 1; reset ssh 192.0.2.10 at 1: connection to another port 8000:tcp"},
		{"reset on the first step starts again", []knock{{0, syn(srcA, 7000)}, {1, udp(srcA, 8000)}, {2, syn(srcA, 7000)}, {3, udp(srcA, 8000)}, {4, syn(srcA, 9000)}},
			"step ssh 192.0.2.10 1; step ssh 192.0.2.10 2; reset ssh 192.0.2.10 at 2 got 7000:tcp want 9000:tcp; step ssh 192.0.2.10 1; step ssh 192.0.2.10 2; open ssh 192.0.2.10"},
		{"repeated step is no reset", []knock{{0, syn(srcA, 7000)}, {1, syn(srcA, 7000)}, {2, udp(srcA, 8000)}, {3, udp(srcA, 8000)}, {4, syn(srcA, 9000)}},
			"step ssh 192.0.2.10 1; step ssh 192.0.2.10 2; open ssh 192.0.2.10"},
		{"too slow times out", []knock{{0, syn(srcA, 7000)}, {5 * time.Second, udp(srcA, 8000)}, {10*time.Second + 1, syn(srcA, 9000)}},
			"step ssh 192.0.2.10 1; step ssh 192.0.2.10 2; timeout ssh 192.0.2.10"},
		{"exactly seq_timeout still counts", []knock{{0, syn(srcA, 7000)}, {1, udp(srcA, 8000)}, {10 * time.Second, syn(srcA, 9000)}},
			"step ssh 192.0.2.10 1; step ssh 192.0.2.10 2; open ssh 192.0.2.10"},
		{"SYN-ACK is not a knock", []knock{{0, &Packet{Src: srcA, Proto: config.TCP, DstPort: 7000, TCPFlags: FlagSYN | FlagACK}}},
			""},
		{"ACK is ignored, not a reset", []knock{{0, syn(srcA, 7000)}, {1, &Packet{Src: srcA, Proto: config.TCP, DstPort: 9000, TCPFlags: FlagACK}}, {2, udp(srcA, 8000)}},
			"step ssh 192.0.2.10 1; step ssh 192.0.2.10 2"},
		{"ACK scan of another port is ignored", []knock{{0, syn(srcA, 7000)}, {1, scanned(&Packet{Src: srcA, Proto: config.TCP, DstPort: 7500, TCPFlags: FlagACK})}, {2, udp(srcA, 8000)}},
			"step ssh 192.0.2.10 1; step ssh 192.0.2.10 2"},
		{"ordered scan resets", []knock{{0, syn(srcA, 7000)}, {1, scanned(syn(srcA, 7001))}, {2, udp(srcA, 8000)}, {3, syn(srcA, 9000)}},
			"step ssh 192.0.2.10 1; reset ssh 192.0.2.10 at 1: connection to another port 7001:tcp"},
		{"udp to another port resets", []knock{{0, syn(srcA, 7000)}, {1, udp(srcA, 8000)}, {2, scanned(udp(srcA, 53))}, {3, syn(srcA, 9000)}},
			"step ssh 192.0.2.10 1; step ssh 192.0.2.10 2; reset ssh 192.0.2.10 at 2: connection to another port 53:udp"},
		{"scan of a source not knocking is ignored", []knock{{0, scanned(syn(srcA, 7001))}},
			""},
		{"scan after seq_timeout is a timeout", []knock{{0, syn(srcA, 7000)}, {11 * time.Second, scanned(syn(srcA, 7001))}},
			"step ssh 192.0.2.10 1; timeout ssh 192.0.2.10"},
		{"SYN with other flags still counts", []knock{{0, &Packet{Src: srcA, Proto: config.TCP, DstPort: 7000, TCPFlags: FlagSYN | 0xC0}}},
			"step ssh 192.0.2.10 1"},
		{"ICMP from a knocking source is no scan", []knock{{0, syn(srcA, 7000)}, {1, scanned(&Packet{Src: srcA, Proto: config.ICMP, DstPort: 56})}, {2, udp(srcA, 8000)}},
			"step ssh 192.0.2.10 1; step ssh 192.0.2.10 2"},
		{"starting mid-sequence does nothing", []knock{{0, udp(srcA, 8000)}, {1, syn(srcA, 9000)}},
			""},
		{"one source does not disturb another", []knock{
			{0, syn(srcA, 7000)}, {1, syn(srcB, 7000)}, {2, syn(srcB, 9000)}, {3, udp(srcA, 8000)}, {4, syn(srcA, 9000)}},
			"step ssh 192.0.2.10 1; step ssh 192.0.2.11 1; reset ssh 192.0.2.11 at 1 got 9000:tcp want 8000:udp; step ssh 192.0.2.10 2; open ssh 192.0.2.10"},
		{"opening again needs the whole sequence", []knock{
			{0, syn(srcA, 7000)}, {1, udp(srcA, 8000)}, {2, syn(srcA, 9000)}, {3, syn(srcA, 9000)}},
			"step ssh 192.0.2.10 1; step ssh 192.0.2.10 2; open ssh 192.0.2.10"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr, rec := newTestTracker(16, sshDoor())
			for _, k := range tt.knocks {
				tr.Observe(t0.Add(k.after), k.pkt)
			}
			if got := rec.take(); got != tt.want {
				t.Errorf("events:\n got: %s\nwant: %s", got, tt.want)
			}
		})
	}
}

func TestTrackerForgetsFinishedSources(t *testing.T) {
	tr, rec := newTestTracker(16, sshDoor())
	tr.Observe(t0, syn(srcA, 7000))
	tr.Observe(t0, syn(srcB, 7000))
	tr.Observe(t0, udp(srcA, 8000))
	tr.Observe(t0, syn(srcA, 9000))
	if tr.Len() != 1 {
		t.Errorf("after one source opened and one is midway, Len = %d, want 1", tr.Len())
	}
	tr.Observe(t0, syn(srcB, 9000)) // wrong: resets B
	if tr.Len() != 0 {
		t.Errorf("after a reset, Len = %d, want 0 (%s)", tr.Len(), rec.take())
	}
}

func TestTrackerSweep(t *testing.T) {
	tr, rec := newTestTracker(16, sshDoor())
	tr.Observe(t0, syn(srcA, 7000))
	tr.Observe(t0.Add(5*time.Second), syn(srcB, 7000))
	rec.take()
	tr.Sweep(t0.Add(10 * time.Second))
	if got := rec.take(); got != "" || tr.Len() != 2 {
		t.Errorf("sweep before any timeout: events %q, Len %d", got, tr.Len())
	}
	tr.Sweep(t0.Add(11 * time.Second))
	if got, want := rec.take(), "timeout ssh 192.0.2.10"; got != want || tr.Len() != 1 {
		t.Errorf("sweep: events %q want %q, Len %d want 1", got, want, tr.Len())
	}
	tr.Sweep(t0.Add(16 * time.Second))
	if got, want := rec.take(), "timeout ssh 192.0.2.11"; got != want || tr.Len() != 0 {
		t.Errorf("sweep: events %q want %q, Len %d want 0", got, want, tr.Len())
	}
}

func TestTrackerEvictsLeastRecentlySeen(t *testing.T) {
	tr, rec := newTestTracker(3, sshDoor())
	a := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}) }
	for i := 1; i <= 3; i++ {
		tr.Observe(t0, syn(a(i), 7000))
	}
	tr.Observe(t0, udp(a(1), 8000)) // 1 is now the most recently seen
	rec.take()
	tr.Observe(t0, syn(a(4), 7000))
	if got, want := rec.take(), "evict - 198.51.100.2; step ssh 198.51.100.4 1"; got != want {
		t.Errorf("events %q, want %q", got, want)
	}
	if tr.Len() != 3 {
		t.Errorf("Len = %d, want 3", tr.Len())
	}
	// The evicted source starts from scratch; the others keep their progress.
	tr.Observe(t0, udp(a(2), 8000))
	tr.Observe(t0, syn(a(1), 9000))
	if got, want := rec.take(), "open ssh 198.51.100.1"; got != want {
		t.Errorf("events %q, want %q", got, want)
	}
}

func TestTrackerSharedKnockPort(t *testing.T) {
	vpn := namedDoor{"vpn", TrackedDoor{
		Slots:      [][]config.Port{{{Num: 9000, Proto: config.TCP}, {Num: 7000, Proto: config.TCP}}},
		SeqTimeout: time.Second,
		TCPFlags:   config.DefaultTCPFlags,
	}}
	tr, rec := newTestTracker(16, sshDoor(), vpn)
	// The kernel logs a packet on a shared port once per door's rule.
	tr.Observe(t0, forDoor(0, syn(srcA, 9000)))
	tr.Observe(t0, forDoor(1, syn(srcA, 9000)))
	tr.Observe(t0, forDoor(0, syn(srcA, 7000)))
	tr.Observe(t0, forDoor(1, syn(srcA, 7000)))
	if got, want := rec.take(), "step vpn 192.0.2.10 1; step ssh 192.0.2.10 1; open vpn 192.0.2.10"; got != want {
		t.Errorf("events %q, want %q", got, want)
	}
	if tr.Len() != 1 {
		t.Errorf("Len = %d, want 1 (ssh still in progress)", tr.Len())
	}
}

func TestTrackerSingleKnockDoor(t *testing.T) {
	d := sshDoor()
	d.Slots[0] = d.Slots[0][:1]
	tr, rec := newTestTracker(16, d)
	tr.Observe(t0, syn(srcA, 7000))
	if got, want := rec.take(), "open ssh 192.0.2.10"; got != want || tr.Len() != 0 {
		t.Errorf("events %q want %q, Len %d", got, want, tr.Len())
	}
}

// TestTrackerMemoryBounded floods the tracker with far more sources than
// max_tracked and checks that it never tracks more, and that it takes no
// memory beyond what it took when it was made.
func TestTrackerMemoryBounded(t *testing.T) {
	const max = 4096
	tr := trackerFor(max, sshDoor())
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range 10 * max {
		src := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		tr.Observe(t0, syn(src, 7000))
		if tr.Len() > max {
			t.Fatalf("Len = %d after %d sources, above max_tracked %d", tr.Len(), i+1, max)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 64<<10 {
		t.Errorf("the heap grew by %d bytes during a flood of %d sources: the tracker allocates after it is made", grew, 10*max)
	}
	runtime.KeepAlive(tr)
}

func TestTrackerSteadyPathAllocatesNothing(t *testing.T) {
	tr := trackerFor(1024, sshDoor())
	pkts := []*Packet{syn(srcA, 7000), udp(srcA, 8000), syn(srcA, 9000)}
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		tr.Observe(t0, pkts[i%3])
		i++
	})
	if allocs != 0 {
		t.Errorf("Observe allocates %.1f times per packet on the steady path, want 0", allocs)
	}
}

func BenchmarkTrackerKnock(b *testing.B) {
	tr := trackerFor(65536, sshDoor())
	pkts := []*Packet{syn(srcA, 7000), udp(srcA, 8000), syn(srcA, 9000)}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		tr.Observe(t0, pkts[i%3])
	}
}

// BenchmarkTrackerFlood is the cost per packet of a flood of first knocks
// from ever new sources with the table full: each one evicts another.
func BenchmarkTrackerFlood(b *testing.B) {
	tr := trackerFor(65536, sshDoor())
	p := syn(srcA, 7000)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		p.Src = netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		tr.Observe(t0, p)
	}
}

func TestTrackerCloseSequence(t *testing.T) {
	d := sshDoor()
	d.Close = []config.Port{{Num: 9100, Proto: config.TCP}, {Num: 9200, Proto: config.UDP}}
	tr, rec := newTestTracker(16, d)
	tr.Observe(t0, syn(srcA, 9100))
	tr.Observe(t0, udp(srcA, 9200))
	if got, want := rec.take(), "step ssh/close 192.0.2.10 1; close ssh/close 192.0.2.10"; got != want {
		t.Errorf("events %q, want %q", got, want)
	}
	// A close knock in the middle of the open sequence breaks it off.
	tr.Observe(t0, syn(srcA, 7000))
	tr.Observe(t0, syn(srcA, 9100))
	if got, want := rec.take(), "step ssh 192.0.2.10 1; reset ssh 192.0.2.10 at 1 got 9100:tcp want 8000:udp; step ssh/close 192.0.2.10 1"; got != want {
		t.Errorf("events %q, want %q", got, want)
	}
}

func TestTrackerTCPFlags(t *testing.T) {
	d := sshDoor()
	d.TCPFlags = config.TCPFlags{Mask: FlagFIN | FlagACK, Want: FlagFIN} // "fin,!ack"
	d.Slots[0] = []config.Port{{Num: 7000, Proto: config.TCP}, {Num: 8000, Proto: config.TCP}}
	tr, rec := newTestTracker(16, d)
	fin := func(port uint16) *Packet {
		return &Packet{Src: srcA, Proto: config.TCP, DstPort: port, TCPFlags: FlagFIN}
	}
	tr.Observe(t0, fin(7000))
	tr.Observe(t0, syn(srcA, 9999)) // another flag set: not a knock, not a reset
	tr.Observe(t0, scanned(syn(srcA, 1234)))
	tr.Observe(t0, fin(8000))
	if got, want := rec.take(), "step ssh 192.0.2.10 1; open ssh 192.0.2.10"; got != want {
		t.Errorf("events %q, want %q", got, want)
	}
}

func TestTrackerKnockOnAnotherDoorResets(t *testing.T) {
	vpn := sshDoor()
	vpn.name = "vpn"
	vpn.Slots = [][]config.Port{{{Num: 6000, Proto: config.UDP}, {Num: 6001, Proto: config.UDP}}}
	tr, rec := newTestTracker(16, sshDoor(), vpn)
	tr.Observe(t0, syn(srcA, 7000))
	tr.Observe(t0, forDoor(1, udp(srcA, 6000)))
	if got, want := rec.take(), "step ssh 192.0.2.10 1; step vpn 192.0.2.10 1; reset ssh 192.0.2.10 at 1: connection to another port 6000:udp"; got != want {
		t.Errorf("events %q, want %q", got, want)
	}
}

func TestTrackerSetSequence(t *testing.T) {
	tr, rec := newTestTracker(16, sshDoor())
	tr.Observe(t0, syn(srcA, 7000))
	tr.Observe(t0, syn(srcB, 7000))
	next := []config.Port{{Num: 7100, Proto: config.UDP}, {Num: 7200, Proto: config.TCP}}
	tr.SetSequence(0, 0, next)
	if tr.Len() != 0 {
		t.Errorf("progress through the used-up sequence kept: Len %d", tr.Len())
	}
	rec.take()
	tr.Observe(t0, udp(srcA, 8000))
	tr.Observe(t0, udp(srcA, 7100))
	tr.Observe(t0, syn(srcA, 7200))
	if got, want := rec.take(), "step ssh 192.0.2.10 1; open ssh 192.0.2.10"; got != want {
		t.Errorf("events %q, want %q", got, want)
	}
	tr.SetSequence(0, 0, nil) // the file ran out: the door opens nothing
	tr.Observe(t0, udp(srcA, 7100))
	tr.Observe(t0, syn(srcA, 7200))
	if got := rec.take(); got != "" || tr.Len() != 0 {
		t.Errorf("disabled door: events %q, Len %d", got, tr.Len())
	}
}

// TestTrackerRotatingSlots: a rotating door has two open sequences (the
// current and previous windows'); a knock completes either, the event
// names the slot, and replacing one slot leaves progress through the other.
func TestTrackerRotatingSlots(t *testing.T) {
	d := sshDoor()
	d.Slots = [][]config.Port{nil, nil}
	tr, rec := newTestTracker(16, d)
	prev := []config.Port{{Num: 21000, Proto: config.TCP}, {Num: 22000, Proto: config.TCP}, {Num: 23000, Proto: config.TCP}}
	cur := []config.Port{{Num: 31000, Proto: config.TCP}, {Num: 32000, Proto: config.TCP}, {Num: 33000, Proto: config.TCP}}
	// Before any SetSequence, nothing opens a rotating door.
	for _, p := range cur {
		tr.Observe(t0, syn(srcA, p.Num))
	}
	if got := rec.take(); got != "" {
		t.Fatalf("unset rotating door: events %q", got)
	}
	tr.SetSequence(0, 0, prev)
	tr.SetSequence(0, 1, cur)
	for _, p := range cur {
		tr.Observe(t0, syn(srcA, p.Num))
	}
	tr.Observe(t0, syn(srcB, 21000))
	tr.Observe(t0, syn(srcB, 22000))
	// The window turns: slot 0 gets the next window's sequence. srcB's
	// progress through it is gone; a knock begun on slot 1 would stay.
	tr.Observe(t0, syn(srcA, 31000))
	tr.SetSequence(0, 0, []config.Port{{Num: 25000, Proto: config.TCP}, {Num: 26000, Proto: config.TCP}})
	tr.Observe(t0, syn(srcB, 23000))
	tr.Observe(t0, syn(srcA, 32000))
	tr.Observe(t0, syn(srcA, 33000))
	want := "step ssh 192.0.2.10 1; step ssh 192.0.2.10 2; open ssh 192.0.2.10; " +
		"step ssh 192.0.2.11 1; step ssh 192.0.2.11 2; " +
		"step ssh 192.0.2.10 1; step ssh 192.0.2.10 2; open ssh 192.0.2.10"
	if got := rec.take(); got != want {
		t.Errorf("events\n %q, want\n %q", got, want)
	}
	if len(rec.opens) != 2 || rec.opens[0].Slot != 1 || rec.opens[1].Slot != 1 {
		t.Errorf("opens came from slots %+v, want 1 and 1", rec.opens)
	}
	// A used-up slot opens nothing.
	tr.SetSequence(0, 1, nil)
	for _, p := range cur {
		tr.Observe(t0, syn(srcA, p.Num))
	}
	if got := rec.take(); got != "" {
		t.Errorf("used-up sequence: events %q", got)
	}
}

// TestTrackerIndexStaysConsistent churns the tracker's address index with
// a small address space (so probes collide and wrap, and deletions shift
// entries back) and checks after every packet that each tracked source is
// found where the index says, and that the index holds nothing else.
func TestTrackerIndexStaysConsistent(t *testing.T) {
	tr := trackerFor(8, sshDoor())
	rng := uint32(1)
	for i := range 20000 {
		rng = rng*1664525 + 1013904223
		src := netip.AddrFrom4([4]byte{10, 0, byte(rng >> 28), byte(rng >> 24)})
		ports := []*Packet{syn(src, 7000), udp(src, 8000), syn(src, 9000), scanned(syn(src, 1))}
		tr.Observe(t0, ports[(rng>>8)%4])
		n := 0
		for s := tr.head; s != 0; s = tr.sources[s].next {
			n++
			if got := tr.lookup(tr.sources[s].key, tr.sources[s].hash); got != s {
				t.Fatalf("packet %d: source %s is in slot %d but the index finds %d", i, tr.sources[s].key.addr(), s, got)
			}
		}
		used := 0
		for _, s := range tr.index {
			if s != 0 {
				used++
			}
		}
		if n != tr.Len() || used != n {
			t.Fatalf("packet %d: %d sources listed, Len %d, %d index entries", i, n, tr.Len(), used)
		}
	}
}
