package engine_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock"
	"github.com/nftknock/nftknock/knock/daemon"
	"github.com/nftknock/nftknock/knock/door"
	"github.com/nftknock/nftknock/knock/engine"
	"github.com/nftknock/nftknock/knock/gate"
	"github.com/nftknock/nftknock/knock/knocktest"
	"github.com/nftknock/nftknock/nft"
	"github.com/nftknock/nftknock/nft/plan"
)

// These tests run the whole daemon (package daemon: engine and gate) on a
// FakeSource and a FakeFirewall: no root, no kernel, the daemon's logic
// as it runs.

var server = netip.MustParseAddr("192.0.2.1")

// harness is a running daemon and what feeds it.
type harness struct {
	t      *testing.T
	fw     *gate.FakeFirewall
	src    *engine.FakeSource
	logs   *observer.ObservedLogs
	path   string
	kinds  []config.KindSpec
	reload chan struct{}
	ready  chan string
	stop   context.CancelFunc
	done   chan error
}

func start(t *testing.T, toml string, kinds ...config.KindSpec) *harness {
	t.Helper()
	return startAt(t, nil, toml, kinds...)
}

// startAt is start on the clock now (nil: the real one).
func startAt(t *testing.T, now func() time.Time, toml string, kinds ...config.KindSpec) *harness {
	t.Helper()
	h := &harness{
		t: t, fw: gate.NewFakeFirewall(nil), src: engine.NewFakeSource(1 << 16),
		path: filepath.Join(t.TempDir(), "nftknock.toml"), kinds: append(config.Kinds[:len(config.Kinds):len(config.Kinds)], kinds...),
		reload: make(chan struct{}, 1), ready: make(chan string, 16), done: make(chan error, 1),
	}
	h.write(toml)
	core, logs := observer.New(zap.DebugLevel)
	h.logs = logs
	ctx, cancel := context.WithCancel(context.Background())
	h.stop = cancel
	go func() {
		h.done <- daemon.Run(ctx, daemon.Options{
			Log: zap.New(core), Load: h.load, Reload: h.reload, Source: h.src, Firewall: h.fw,
			Ready: func(s string) { h.ready <- s }, Now: now,
		})
	}()
	select {
	case <-h.ready:
	case err := <-h.done:
		t.Fatalf("the daemon did not start: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the daemon did not start within 5s")
	}
	t.Cleanup(func() {
		h.stop()
		if err := <-h.done; err != nil {
			t.Errorf("daemon: %v", err)
		}
		if t.Failed() {
			for _, e := range h.logs.All() {
				t.Logf("%s %s %v", e.Level, e.Message, e.ContextMap())
			}
		}
	})
	return h
}

func (h *harness) write(toml string) {
	h.t.Helper()
	if err := os.WriteFile(h.path, []byte(toml), 0o600); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) load() (*config.Config, error) {
	data, err := os.ReadFile(h.path)
	if err != nil {
		return nil, err
	}
	return config.ParseWith(h.path, data, h.kinds)
}

// doReload reloads and waits until the daemon is ready again.
func (h *harness) doReload() {
	h.t.Helper()
	h.reload <- struct{}{}
	select {
	case <-h.ready:
	case <-time.After(5 * time.Second):
		h.t.Fatal("no READY within 5s of a reload")
	}
}

// knock logs the default door's three knocks from src under prefix.
func (h *harness) knock(prefix string, src netip.Addr, ports ...string) {
	for _, p := range ports {
		k, err := config.ParseKnock(p)
		if err != nil {
			h.t.Fatal(err)
		}
		switch k.Proto {
		case config.TCP:
			h.src.Log(prefix, knocktest.TCP(src, server, k.Num, knocktest.SYN))
		case config.UDP:
			h.src.Log(prefix, knocktest.UDP(src, server, k.Num, nil))
		}
	}
}

// element waits until set holds addr, and returns its element.
func (h *harness) element(set string, addr netip.Addr) nft.Element {
	h.t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range h.fw.Elements(set) {
			if string(e.Key) == string(addr.AsSlice()) {
				return e
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	h.t.Fatalf("set %s never held %s; it holds %v", set, addr, h.fw.Elements(set))
	return nft.Element{}
}

// absent checks that set does not hold addr after the daemon has had time
// to act.
func (h *harness) absent(set string, addr netip.Addr) {
	h.t.Helper()
	h.settle()
	for _, e := range h.fw.Elements(set) {
		if string(e.Key) == string(addr.AsSlice()) {
			h.t.Errorf("set %s holds %s", set, addr)
		}
	}
}

// settle waits until the daemon has handled what was fed to it: a knock
// from a sentinel address of a door, then its grant, comes last.
func (h *harness) settle() {
	h.t.Helper()
	time.Sleep(100 * time.Millisecond)
}

// logged counts the lines with message msg.
func (h *harness) logged(msg string) int { return h.logs.FilterMessage(msg).Len() }

const sshDoor = `
[[door]]
name = "ssh"
sequence = ["7000:tcp", "8000:udp", "9000:tcp"]
seq_timeout = "10s"
open = ["22:tcp"]
open_for = "30s"
`

var (
	alice = netip.MustParseAddr("198.51.100.1")
	bob   = netip.MustParseAddr("198.51.100.2")
)

// TestKnockOpens: three knocks logged under the door's prefix open it for
// the source, for open_for, and the journal says so.
func TestKnockOpens(t *testing.T) {
	h := start(t, sshDoor)
	h.knock("ssh/1", alice, "7000:tcp", "8000:udp", "9000:tcp")
	if e := h.element("ssh_v4", alice); e.Timeout != 30*time.Second || e.Expires < 29*time.Second {
		t.Errorf("grant %+v, want 30s from now", e)
	}
	h.settle()
	if n := h.logged("door opened"); n != 1 {
		t.Errorf("%d door opened lines, want 1", n)
	}
	// Wrong order: nothing.
	h.knock("ssh/1", bob, "7000:tcp", "9000:tcp", "8000:udp")
	h.absent("ssh_v4", bob)
}

// TestReloadRoutesByVersion: a packet is handled by the door whose rules
// logged it, or dropped, never by another door. Two doors are swapped in
// the file and one of them changes its sequence. A knock logged by the
// unchanged door's rules before the reload (its prefix, read after it) is
// still that door's; one logged by the changed door's old rules is
// dropped, though its port is a step of the door's new sequence.
func TestReloadRoutesByVersion(t *testing.T) {
	door := func(name, seq, open string) string {
		return fmt.Sprintf("[[door]]\nname = %q\nsequence = [%s]\nseq_timeout = \"10s\"\nopen = [%q]\nopen_for = \"30s\"\n", name, seq, open)
	}
	h := start(t, door("a", `"7000", "7001"`, "22")+door("b", `"8000", "8001"`, "23"))
	h.write(door("b", `"8000", "8001"`, "23") + door("a", `"8001:udp", "7001"`, "22"))
	h.doReload()

	// b, unchanged, keeps its prefix: its old rules' knocks are its own.
	h.knock("b/1", alice, "8000", "8001")
	h.element("b_v4", alice)
	// a's old rules logged 8001/udp under a/1: not a's new first step.
	h.src.Log("a/1", knocktest.UDP(bob, server, 8001, nil))
	h.knock("a/2", bob, "7001")
	h.absent("a_v4", bob)
	// Under its new prefix the new sequence opens a.
	h.src.Log("a/2", knocktest.UDP(bob, server, 8001, nil))
	h.knock("a/2", bob, "7001")
	h.element("a_v4", bob)
}

// TestReloadRefusedKeepsRunning: a config that does not validate, and one
// the kernel refuses, leave the running generation as it was, in the
// daemon and in the kernel.
func TestReloadRefusedKeepsRunning(t *testing.T) {
	h := start(t, sshDoor)
	installs := h.fw.Installs()
	h.write("nonsense")
	h.doReload()
	h.fw.FailNextInstall(fmt.Errorf("refused by the kernel"))
	h.write(strings.Replace(sshDoor, `"7000:tcp"`, `"7100:tcp"`, 1))
	h.doReload()
	if n := h.logged("reload refused, the running config stays"); n != 2 {
		t.Errorf("%d refusals logged, want 2", n)
	}
	if h.fw.Installs() != installs {
		t.Errorf("%d installs after two refused reloads, want %d", h.fw.Installs(), installs)
	}
	h.knock("ssh/1", alice, "7000:tcp", "8000:udp", "9000:tcp")
	h.element("ssh_v4", alice)
}

// TestHealRestoresGrants: when the table goes (`nft flush ruleset`), the
// gate installs it again and puts back every live grant of its ledger,
// its own and those someone else added, with the time each had left.
func TestHealRestoresGrants(t *testing.T) {
	h := start(t, sshDoor)
	h.knock("ssh/1", alice, "7000:tcp", "8000:udp", "9000:tcp")
	h.element("ssh_v4", alice)
	h.fw.AddElement("ssh_v4", bob.AsSlice(), time.Hour) // nftknock grant
	h.settle()
	installs := h.fw.Installs()
	h.fw.Flush()
	deadline := time.Now().Add(3 * time.Second)
	for h.fw.Installs() == installs && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if e := h.element("ssh_v4", alice); e.Timeout != 30*time.Second || e.Expires > 30*time.Second {
		t.Errorf("restored %+v: want its timeout and no more time than it had", e)
	}
	if e := h.element("ssh_v4", bob); e.Timeout != time.Hour || e.Expires < 59*time.Minute {
		t.Errorf("restored %+v: want the hour someone else granted", e)
	}
	// Someone deletes a grant: it is not restored.
	h.fw.DeleteElement("ssh_v4", bob.AsSlice())
	h.settle()
	h.fw.Flush()
	h.element("ssh_v4", alice)
	h.absent("ssh_v4", bob)
}

// TestGrantsBounded: a door holds at most max_grants grants: completed
// knocks beyond are refused and counted in one line a second, and another
// door (each door's bound is its own) still opens.
func TestGrantsBounded(t *testing.T) {
	h := start(t, "max_tracked = 64\n"+strings.Replace(sshDoor, `open_for = "30s"`, "open_for = \"30s\"\nmax_grants = 16", 1)+`
[[door]]
name = "other"
sequence = ["6000:udp"]
seq_timeout = "1s"
open = ["2222:tcp"]
open_for = "30s"
`)
	for i := range 200 {
		h.knock("ssh/1", netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), "7000:tcp", "8000:udp", "9000:tcp")
	}
	h.knock("other/1", alice, "6000:udp")
	h.element("other_v4", alice)
	time.Sleep(1500 * time.Millisecond) // a summary tick
	if n := len(h.fw.Elements("ssh_v4")); n != 16 {
		t.Errorf("ssh_v4 holds %d grants, want max_grants 16", n)
	}
	if n := h.logged("grants refused: the door holds max_grants live grants (a flood of completed knocks?)"); n == 0 {
		t.Error("refused grants not summed up in the log")
	}
	if n := h.logged("door opened"); n > 2*10+2 {
		t.Errorf("%d door opened lines for 17 grants in about a second: not bounded", n)
	}
}

// TestStopJoinsEveryGoroutine: when Run returns, every goroutine it
// started has ended.
func TestStopJoinsEveryGoroutine(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		h := start(t, sshDoor)
		h.knock("ssh/1", alice, "7000:tcp", "8000:udp", "9000:tcp")
		h.element("ssh_v4", alice)
		h.doReload()
		h.stop()
		if err := <-h.done; err != nil {
			t.Fatal(err)
		}
		h.done <- nil // for the cleanup
	}()
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after the daemon stopped, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

// bell is a door kind of this test only: one UDP datagram to its port
// opens it. Adding it takes a KindSpec (config) and a NewDoor method
// (door): nothing else in the daemon.
type bell struct{ port config.Port }

func (*bell) KindName() string { return "bell" }
func (b *bell) Claims() []config.Claim {
	return []config.Claim{{Port: b.port, Field: "bell", What: "door %q's bell", Own: "a bell must be a port of its own"}}
}

var bellKind = config.KindSpec{
	Name:      "a bell door (one with bell)",
	Selectors: []string{"bell"},
	Keys:      []string{"bell"},
	Parse: func(p *config.DoorParser) config.Kind {
		s, _ := p.String("bell")
		port, err := config.ParseKnock(s)
		if err != nil {
			p.Errorf("bell", "%v", err)
		}
		return &bell{port: port}
	},
}

// TestNewDoorKind runs a door of the test's own kind through the whole
// daemon: its rules in the plan, its packets routed to it, its grant.
func TestNewDoorKind(t *testing.T) {
	h := start(t, "[[door]]\nname = \"ring\"\nbell = \"4000:udp\"\nopen = [\"22\"]\nopen_for = \"5s\"\n", bellKind)
	found := false
	for _, r := range h.fw.Plan().Chains[0].Rules {
		found = found || r.Comment == "door ring: single-packet authorization"
	}
	if !found {
		t.Error("the bell door's capture rule is not in the plan")
	}
	h.src.Log("ring/1", knocktest.UDP(alice, server, 4000, []byte("ding")))
	if e := h.element("ring_v4", alice); e.Timeout != 5*time.Second {
		t.Errorf("grant %+v", e)
	}
}

func (b *bell) NewDoor(file string, d *config.Door, deps door.Deps, prev door.Door) (door.Door, error) {
	return &bellDoor{cfg: d, port: b.port}, nil
}

type bellDoor struct {
	cfg  *config.Door
	port config.Port
}

func (b *bellDoor) Config() *config.Door         { return b.cfg }
func (b *bellDoor) Plan(p *plan.Builder)         { p.Datagram(b.cfg.Name, b.port, nil) }
func (b *bellDoor) Tick(time.Time, door.Actions) {}
func (b *bellDoor) Packet(now time.Time, lg *knock.Logged, a door.Actions) {
	var p knock.Packet
	if knock.ParseIP(lg.Payload, &p) == nil {
		a.Open(p.Src, p.Src, "")
	}
}

// TestCheckRefusesAnUninstallableConfig: a config that validates but whose
// ruleset does not fit in one batch is refused by -check (engine.Check),
// with its size and what to do, so that a config that passes -check
// installs.
func TestCheckRefusesAnUninstallableConfig(t *testing.T) {
	var b strings.Builder
	for i := range 30 {
		fmt.Fprintf(&b, "[[door]]\nname = \"d%d\"\nseq_timeout = \"5s\"\nopen_for = \"1m\"\nsequence = [", i)
		for j := range 32 {
			if j > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "\"%d:udp\"", 20000+32*i+j)
		}
		b.WriteString("]\nopen = [")
		for j := range 64 {
			if j > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "\"%d\"", 1+64*i+j)
		}
		b.WriteString("]\n")
	}
	cfg, err := config.Parse("big.toml", []byte(b.String()))
	if err != nil {
		t.Fatalf("the config does not even validate: %v", err)
	}
	err = engine.Check(cfg)
	if err == nil || !strings.Contains(err.Error(), "big.toml: the ruleset of this configuration takes") ||
		!strings.Contains(err.Error(), "configure fewer doors, opened ports or knocks") {
		t.Fatalf("Check = %v, want the batch size refused", err)
	}
	t.Log(err)
	cfg.Doors = cfg.Doors[:4]
	if err := engine.Check(cfg); err != nil {
		t.Errorf("four of those doors: %v", err)
	}
}
