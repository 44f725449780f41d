package door

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock"
	"github.com/nftknock/nftknock/knock/knocktest"
	"github.com/nftknock/nftknock/knock/loglimit"
	"github.com/nftknock/nftknock/knock/rotate"
	"github.com/nftknock/nftknock/knock/spa"
	"github.com/nftknock/nftknock/nft/plan"
)

// recorder is the Actions of a door under test: what it asked for, as
// short strings.
type recorder struct {
	asked []string
	seqs  map[int][]config.Port
	ports map[string][]uint16
}

func newRecorder() *recorder {
	return &recorder{seqs: map[int][]config.Port{}, ports: map[string][]uint16{}}
}

func (r *recorder) Open(addr, source netip.Addr, by string) {
	if by != "" {
		r.asked = append(r.asked, fmt.Sprintf("open %s by %s", addr, by))
		return
	}
	r.asked = append(r.asked, fmt.Sprintf("open %s", addr))
}
func (r *recorder) OpenPorts(addr, source netip.Addr, by string, ports []config.Port, d time.Duration) {
	r.asked = append(r.asked, fmt.Sprintf("open %s %v for %v", addr, ports, d))
}
func (r *recorder) Close(addr netip.Addr) { r.asked = append(r.asked, "close "+addr.String()) }
func (r *recorder) Ports(set string, ports []uint16) {
	r.ports[set] = ports
}
func (r *recorder) SetSequence(slot int, steps []config.Port) { r.seqs[slot] = steps }
func (r *recorder) Replan()                                   { r.asked = append(r.asked, "replan") }

func (r *recorder) opens() []string {
	var out []string
	for _, a := range r.asked {
		if strings.HasPrefix(a, "open ") {
			out = append(out, a)
		}
	}
	return out
}

func keyFile(t *testing.T) (string, []byte) {
	t.Helper()
	text := spa.GenerateKey()
	raw, err := spa.ParseKey([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "door.key")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, raw
}

func testDeps(t testing.TB, now func() time.Time, portSet func(string) ([]uint16, bool, error)) (Deps, *observer.ObservedLogs) {
	core, logs := observer.New(zap.DebugLevel)
	log := zap.New(core)
	if portSet == nil {
		portSet = func(string) ([]uint16, bool, error) { return nil, false, nil }
	}
	return Deps{Log: log, Lines: loglimit.New(log), Replay: spa.NewReplay(0, now()), PortSet: portSet, Now: now}, logs
}

func parseDoor(t *testing.T, toml string) *config.Door {
	t.Helper()
	cfg, err := config.Parse("f.toml", []byte(toml))
	if err != nil {
		t.Fatal(err)
	}
	return &cfg.Doors[0]
}

// tracked runs a sequenced door's knocks through a tracker of its own, as
// the engine would, and hands it the events.
type tracked struct {
	d  Sequenced
	tr *knock.Tracker
	a  *recorder
}

func track(d Sequenced, a *recorder, now time.Time) *tracked {
	return &tracked{d: d, tr: knock.NewTracker([]knock.TrackedDoor{d.Tracked()}, 64, now), a: a}
}

func (k *tracked) knock(now time.Time, from string, seq []config.Port) {
	for _, p := range seq {
		pkt := &knock.Packet{Src: netip.MustParseAddr(from), Proto: p.Proto, DstPort: p.Num, TCPFlags: knock.FlagSYN}
		for _, e := range k.tr.Observe(now, pkt) {
			k.d.Event(now, e, k.a)
		}
		// What the door asked the tracker to change, as the engine
		// applies it.
		for slot, s := range k.a.seqs {
			k.tr.SetSequence(0, slot, s)
		}
		clear(k.a.seqs)
	}
}

// rotDoor is a rotating door on a clock the test moves; it starts 10 s
// into window w. valid says what the kernel's sets vouch for at the start.
func rotDoor(t *testing.T, valid bool) (r *rotating, d *rotate.Deriver, w uint64, clock *time.Time) {
	t.Helper()
	key, raw := keyFile(t)
	w = 60_000_000
	now := rotate.Start(w, 30*time.Second).Add(10 * time.Second)
	clock = &now
	cfg := parseDoor(t, `
[[door]]
name = "rot"
sequence_key_file = "`+key+`"
seq_timeout = "10s"
open = ["22:tcp"]
open_for = "30s"
`)
	k := cfg.Kind.(*config.Rotating)
	d = rotate.NewDeriver(raw, "rot", k.Length, k.Ports)
	// A clean stop leaves both windows' sequences in the sets.
	sets := map[string][]uint16{}
	if valid {
		first, next := splitKnocks([][]config.Port{d.Sequence(w - 1), d.Sequence(w)})
		sets[plan.FirstSetName("rot")], sets[plan.NextSetName("rot")] = first, next
	}
	deps, _ := testDeps(t, func() time.Time { return *clock }, func(set string) ([]uint16, bool, error) {
		ports, ok := sets[set]
		return ports, ok, nil
	})
	dd, err := New("f.toml", cfg, deps, nil)
	if err != nil {
		t.Fatal(err)
	}
	return dd.(*rotating), d, w, clock
}

// portsOf is what a port set holds for seqs.
func portsOf(seqs ...[]config.Port) (first, next []uint16) { return splitKnocks(seqs) }

func TestRotatingDoor(t *testing.T) {
	r, d, w, clock := rotDoor(t, true)
	a := newRecorder()
	prev, cur := d.Sequence(w-1), d.Sequence(w)
	if got := r.live(); len(got) != 2 || !slices.Equal(got[0], prev) || !slices.Equal(got[1], cur) {
		t.Fatalf("at start the door takes %v, want the last and this window's", got)
	}
	k := track(r, a, *clock)
	k.knock(*clock, "192.0.2.10", cur)
	if got := a.opens(); len(got) != 1 || got[0] != "open 192.0.2.10" {
		t.Fatalf("this window's sequence: %v", got)
	}
	// Used up: the kernel drops its ports, the tracker its steps.
	if f, n := portsOf(prev); !slices.Equal(a.ports["rot_first"], f) || !slices.Equal(a.ports["rot_next"], n) {
		t.Fatalf("after the open the kernel holds %v %v, want only the last window's", a.ports["rot_first"], a.ports["rot_next"])
	}
	k.knock(*clock, "192.0.2.11", cur) // a replay from elsewhere
	if len(a.opens()) != 1 {
		t.Fatalf("a replay in the same window opened: %v", a.opens())
	}
	k.knock(*clock, "192.0.2.12", prev) // the last window's is still good, once
	k.knock(*clock, "192.0.2.13", prev)
	if got := a.opens(); len(got) != 2 || got[1] != "open 192.0.2.12" {
		t.Fatalf("the previous window's sequence: %v", got)
	}

	// The window turns.
	*clock = rotate.Start(w+1, 30*time.Second)
	if !r.Next(clock.Add(-time.Millisecond)).Equal(*clock) {
		t.Errorf("Next = %v, want the turn at %v", r.Next(clock.Add(-time.Millisecond)), *clock)
	}
	r.Tick(*clock, a)
	next := d.Sequence(w + 1)
	if f, n := portsOf(next); !slices.Equal(a.ports["rot_first"], f) || !slices.Equal(a.ports["rot_next"], n) {
		t.Fatalf("after the turn the kernel holds %v %v, want the new window's only (w used, w-1 gone)", a.ports["rot_first"], a.ports["rot_next"])
	}
	for slot, s := range a.seqs {
		k.tr.SetSequence(0, slot, s)
	}
	clear(a.seqs)
	a.ports = map[string][]uint16{}
	r.Tick(clock.Add(time.Second), a) // nothing turned: nothing sent
	if len(a.ports) != 0 {
		t.Fatalf("a tick without a turn sent %v", a.ports)
	}
	k.knock(*clock, "192.0.2.14", next)
	if len(a.opens()) != 3 {
		t.Fatalf("the new window's sequence did not open: %v", a.opens())
	}

	// Two windows on, nothing captured earlier opens.
	*clock = rotate.Start(w+3, 30*time.Second)
	r.Tick(*clock, a)
	for i, seq := range [][]config.Port{prev, cur, next} {
		k.knock(*clock, fmt.Sprintf("192.0.2.%d", 20+i), seq)
	}
	if len(a.opens()) != 3 {
		t.Fatalf("old sequences opened: %v", a.opens())
	}

	// The wall clock steps back a window: the windows seen already count
	// as used, whatever the tracker was told before.
	*clock = rotate.Start(w+1, 30*time.Second).Add(time.Second)
	r.Tick(*clock, a)
	k.knock(*clock, "192.0.2.30", next)
	if len(a.opens()) != 3 {
		t.Fatalf("after the clock stepped back, a window's sequence opened again: %v", a.opens())
	}
}

// TestRotatingDoorRestart: a door that cannot tell from the kernel which
// sequences are unused takes them all as used, and opens from the next
// window on.
func TestRotatingDoorRestart(t *testing.T) {
	r, d, w, clock := rotDoor(t, false)
	a := newRecorder()
	if len(r.live()) != 0 {
		t.Fatalf("at start the door takes %v, want none", r.live())
	}
	k := track(r, a, *clock)
	k.knock(*clock, "192.0.2.10", d.Sequence(w))
	k.knock(*clock, "192.0.2.11", d.Sequence(w-1))
	if len(a.opens()) != 0 {
		t.Fatalf("a sequence from before the start opened: %v", a.opens())
	}
	*clock = rotate.Start(w+1, 30*time.Second)
	r.Tick(*clock, a)
	for slot, s := range a.seqs {
		k.tr.SetSequence(0, slot, s)
	}
	clear(a.seqs)
	k.knock(*clock, "192.0.2.12", d.Sequence(w+1))
	if len(a.opens()) != 1 {
		t.Fatalf("the first window after the start did not open: %v", a.opens())
	}
}

func TestClientCommand(t *testing.T) {
	k := config.Rotating{Length: 4, Ports: config.Port{Num: 20000, Last: 40000, Proto: config.TCP}, Every: 30 * time.Second}
	if got, want := clientCommand(&k, "rot"), "nftknock knock -door rot -key-file KEYFILE HOST"; got != want {
		t.Errorf("defaults: %q, want %q", got, want)
	}
	k.Length, k.Ports, k.Every = 6, config.Port{Num: 1000, Last: 2000, Proto: config.UDP}, 2*time.Second
	if got, want := clientCommand(&k, "rot"), "nftknock knock -door rot -key-file KEYFILE -length 6 -ports 1000-2000:udp -every 2s HOST"; got != want {
		t.Errorf("%q, want %q", got, want)
	}
}

var (
	client = netip.MustParseAddr("192.0.2.2")
	srv    = netip.MustParseAddr("192.0.2.1")
)

func spaDoorFor(t *testing.T, extra string) (*spaDoor, *spa.Key, *observer.ObservedLogs, func() time.Time) {
	t.Helper()
	path, raw := keyFile(t)
	cfg := parseDoor(t, "[[door]]\nname = \"vpn\"\nspa_port = \"62201:udp\"\nkey_file = \""+path+"\"\nopen = [\"22:tcp\"]\nopen_for = \"30s\"\n"+extra)
	start := time.Now()
	now := func() time.Time { return start.Add(2 * time.Second) }
	deps, logs := testDeps(t, func() time.Time { return start }, nil)
	dd, err := New("f.toml", cfg, deps, nil)
	if err != nil {
		t.Fatal(err)
	}
	k, err := spa.NewKey(raw)
	if err != nil {
		t.Fatal(err)
	}
	return dd.(*spaDoor), k, logs, now
}

func datagram(t *testing.T, k *spa.Key, requested netip.Addr, sealed time.Time) *knock.Logged {
	t.Helper()
	d, err := spa.Seal(k, "vpn", requested, sealed)
	if err != nil {
		t.Fatal(err)
	}
	return &knock.Logged{Payload: knocktest.UDP(client, srv, 62201, d), Prefix: []byte("vpn/1")}
}

// TestSPARefusesRequestsSealedBeforeStart: a restarted daemon's replay
// cache is empty, so a datagram sealed before the start (which the daemon
// that ran then may have taken) is refused; one sealed after is granted.
func TestSPARefusesRequestsSealedBeforeStart(t *testing.T) {
	s, k, logs, now := spaDoorFor(t, "")
	a := newRecorder()
	start := now().Add(-2 * time.Second)
	s.Packet(now(), datagram(t, k, netip.Addr{}, start.Add(-time.Second)), a) // within spa_max_age, before the start
	if len(a.opens()) != 0 {
		t.Errorf("a datagram sealed before the start opened: %v", a.opens())
	}
	s.Packet(now(), datagram(t, k, netip.Addr{}, start.Add(time.Second)), a)
	if got := a.opens(); len(got) != 1 || got[0] != "open 192.0.2.2" {
		t.Errorf("a datagram sealed after the start: %v", got)
	}
	if n := logs.FilterMessageSnippet("sealed before the daemon started").Len(); n != 1 {
		t.Errorf("%d log lines of the refusal, want 1", n)
	}
}

// TestSPARequestedAddress: a datagram that asks for its own source opens
// without spa_allow_requested (a client seals the address it sends from);
// one that asks for another opens only with it.
func TestSPARequestedAddress(t *testing.T) {
	other := netip.MustParseAddr("203.0.113.7")
	for _, tc := range []struct {
		allow     bool
		requested netip.Addr
		want      string
	}{
		{false, client, "open 192.0.2.2"},
		{false, other, ""},
		{true, other, "open 203.0.113.7"},
		{true, netip.Addr{}, "open 192.0.2.2"},
	} {
		s, k, logs, now := spaDoorFor(t, fmt.Sprintf("spa_allow_requested = %v\n", tc.allow))
		a := newRecorder()
		s.Packet(now(), datagram(t, k, tc.requested, now()), a)
		if got := strings.Join(a.opens(), ","); got != tc.want {
			t.Errorf("allow %v, requested %v: %q, want %q", tc.allow, tc.requested, got, tc.want)
		}
		if tc.want == "" && logs.FilterMessageSnippet("requested address not allowed").Len() != 1 {
			t.Errorf("refusal not logged: %v", logs.All())
		}
	}
}

// TestSPARejectLinesBounded: a flood of forged datagrams gives at most
// loglimit.PerSecond lines per reason a second, then one summary line with
// the count, and every rejection is still counted.
func TestSPARejectLinesBounded(t *testing.T) {
	s, _, logs, now := spaDoorFor(t, "")
	var counted int
	s.deps.Rejected = func(SPAReason) { counted++ }
	a := newRecorder()
	forged := datagram(t, func() *spa.Key { k, _ := spa.NewKey(make([]byte, 32)); return k }(), netip.Addr{}, now())
	for range 25 {
		s.Packet(now(), forged, a)
	}
	rejections := func() int {
		n := 0
		for _, e := range logs.All() {
			if strings.HasPrefix(e.Message, "SPA datagram rejected") {
				n++
			}
		}
		return n
	}
	if n := rejections(); n != loglimit.PerSecond || counted != 25 {
		t.Errorf("%d rejection lines, %d counted; want %d and 25", n, counted, loglimit.PerSecond)
	}
	s.deps.Lines.Flush()
	sum := logs.FilterMessageSnippet("more lines than are logged one by one").All()
	if len(sum) != 1 || sum[0].ContextMap()["not_logged"] != uint64(15) {
		t.Fatalf("summary lines %v, want one with not_logged 15", sum)
	}
	// A new second: lines again, and no summary while under the bound.
	s.Packet(now(), forged, a)
	s.deps.Lines.Flush()
	if n := rejections(); n != loglimit.PerSecond+1 {
		t.Errorf("after a new second: %d rejection lines, want %d", n, loglimit.PerSecond+1)
	}
	if n := logs.FilterMessageSnippet("more lines than are logged").Len(); n != 1 {
		t.Errorf("%d summaries, want still 1", n)
	}
}

// TestKnockLabels: the comments of a door's knock rules say which steps
// each knock is, and which knocking set each puts a source in.
func TestKnockLabels(t *testing.T) {
	p := func(n uint16) config.Port { return config.Port{Num: n, Proto: config.TCP} }
	open := []config.Port{p(7000), p(5000), p(7000), p(9000), p(7000)}
	close := []config.Port{p(5000), p(9100)}
	var got []string
	for _, u := range knockUses(open, close) {
		got = append(got, fmt.Sprintf("%s: %s, watch %d", u.step, u.label(len(open), len(close)), u.watch(len(open), len(close))))
	}
	want := []string{
		"7000:tcp: knocks 1, 3 and 5 of 5, watch 1",
		"5000:tcp: knock 2 of 5, close knock 1 of 2, watch 1",
		"9000:tcp: knock 4 of 5, watch 2",
		"9100:tcp: close knock 2 of 2, watch 0",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("labels:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestOneTimeDoor: a knock with the sequence due now opens the door, marks
// the line used in the file, and moves the door to the next sequence (in
// the tracker and in a new plan); a file that cannot be marked disables
// the door and opens nothing.
func TestOneTimeDoor(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "once.seq")
	if err := os.WriteFile(file, []byte("7100:udp,7200\n7300 7400:udp\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := parseDoor(t, "[[door]]\nname = \"once\"\none_time_sequences = \""+file+"\"\nseq_timeout = \"5s\"\nopen = [\"22\"]\nopen_for = \"10s\"\n")
	deps, _ := testDeps(t, time.Now, nil)
	dd, err := New("f.toml", cfg, deps, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := dd.(*sequence)
	a := newRecorder()
	k := track(s, a, time.Now())
	first := []config.Port{{Num: 7100, Proto: config.UDP}, {Num: 7200, Proto: config.TCP}}
	k.knock(time.Now(), "192.0.2.10", first)
	if got := strings.Join(a.asked, ","); got != "replan,open 192.0.2.10" {
		t.Fatalf("asked %q, want a new plan, then the open", got)
	}
	data, _ := os.ReadFile(file)
	if string(data) != "#7100:udp,7200\n7300 7400:udp\n" {
		t.Errorf("file after the use:\n%s", data)
	}
	if want := []config.Port{{Num: 7300, Proto: config.TCP}, {Num: 7400, Proto: config.UDP}}; !slices.Equal(s.Tracked().Slots[0], want) {
		t.Errorf("next sequence %v, want %v", s.Tracked().Slots[0], want)
	}
	k.knock(time.Now(), "192.0.2.11", first)
	if len(a.opens()) != 1 {
		t.Errorf("the used sequence opened again: %v", a.asked)
	}
	// The directory turns read-only: the use cannot be marked.
	if err := os.Chmod(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(dir, 0o700)
	if os.Geteuid() == 0 {
		// Root writes anyway; the file's removal makes the mark fail.
		os.Chmod(dir, 0o700)
		os.Remove(file)
	}
	k.knock(time.Now(), "192.0.2.12", []config.Port{{Num: 7300, Proto: config.TCP}, {Num: 7400, Proto: config.UDP}})
	if len(a.opens()) != 1 || s.Tracked().Slots[0] != nil {
		t.Errorf("an unmarkable use opened (%v) or left the door enabled (%v)", a.opens(), s.Tracked().Slots[0])
	}
}

// TestLoadErrorsNameTheField: the files a door names are read when its
// door is made (at start, reload and -check), and what is wrong with them
// is an error that names the file, the door and the field.
func TestLoadErrorsNameTheField(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	loose := write("loose.key", spa.GenerateKey(), 0o640)
	short := write("short.key", "AAAA\n", 0o600)
	bad := write("bad.seq", "7100:udp,99999\n", 0o600)
	for _, tc := range []struct{ toml, want string }{
		{"spa_port = \"62201:udp\"\nkey_file = \"" + loose + "\"\n", `f.toml: door "d": key_file: ` + loose + `: readable by group or others`},
		{"spa_port = \"62201:udp\"\nkey_file = \"" + short + "\"\n", `door "d": key_file: ` + short + `: holds 3 bytes, want 32`},
		{"sequence_key_file = \"" + loose + "\"\nseq_timeout = \"5s\"\n", `door "d": sequence_key_file: `},
		{"one_time_sequences = \"" + filepath.Join(dir, "absent") + "\"\nseq_timeout = \"5s\"\n", `door "d": one_time_sequences: `},
		{"one_time_sequences = \"" + bad + "\"\nseq_timeout = \"5s\"\n", `door "d": one_time_sequences: ` + bad + `:1: not a knock sequence`},
	} {
		cfg := parseDoor(t, "[[door]]\nname = \"d\"\nopen = [\"22\"]\nopen_for = \"1s\"\n"+tc.toml)
		deps, _ := testDeps(t, time.Now, nil)
		_, err := New("f.toml", cfg, deps, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("got %v, want an error containing %q", err, tc.want)
		}
	}
}
