package gate

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock/ledger"
	"github.com/nftknock/nftknock/nft"
	"github.com/nftknock/nftknock/nft/plan"
)

// clock is a time the test moves.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type testGate struct {
	*Gate
	t     *testing.T
	fw    *FakeFirewall
	clock *clock
	logs  *observer.ObservedLogs
	doors []*config.Door
}

func door(name string, open time.Duration) *config.Door {
	return &config.Door{Name: name, Open: []config.Port{{Num: 22, Proto: config.TCP}}, OpenFor: open, MaxGrants: 1024, HookTimeout: time.Second}
}

func planFor(doors ...*config.Door) *plan.Plan {
	b := plan.NewBuilder("nftknock", 7113, func(d string) string { return d + "/1" })
	for _, d := range doors {
		_, perPort := d.Kind.(*config.Fwknop)
		b.Door(plan.Door{Name: d.Name, Open: d.Open, Anyone: d.OpenToAnyone, MaxGrants: d.MaxGrants, PerPort: perPort})
	}
	return b.Build()
}

func startGate(t *testing.T, doors ...*config.Door) *testGate {
	t.Helper()
	c := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	return startGateOn(t, NewFakeFirewall(c.now), c, doors...)
}

// startGateOn starts a gate on fw, whose clock is c.
func startGateOn(t *testing.T, fw *FakeFirewall, c *clock, doors ...*config.Door) *testGate {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	g := &testGate{Gate: New(fw, Options{Log: zap.New(core), Now: c.now}), t: t, fw: fw, clock: c, logs: logs, doors: doors}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	g.install(doors...)
	return g
}

func (g *testGate) install(doors ...*config.Door) {
	g.t.Helper()
	g.doors = doors
	if err := g.Install(context.Background(), planFor(doors...), doors); err != nil {
		g.t.Fatal(err)
	}
}

// wait waits until cond holds, or fails after a few seconds.
func (g *testGate) wait(what string, cond func() bool) {
	g.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			g.t.Fatalf("not within 5s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (g *testGate) element(set string, a netip.Addr) (nft.Element, bool) {
	for _, e := range g.fw.Elements(set) {
		if string(e.Key) == string(a.AsSlice()) || (len(e.Key) == 1 && a.IsUnspecified()) {
			return e, true
		}
	}
	return nft.Element{}, false
}

func (g *testGate) open(doorName string, a netip.Addr) {
	g.Open(Grant{Door: doorName, Addr: a, Source: a})
	set, _ := plan.Door{Name: doorName}.GrantSet(a, 0, 0)
	g.wait("the grant of "+a.String(), func() bool { _, ok := g.element(set, a); return ok })
}

var (
	alice = netip.MustParseAddr("198.51.100.1")
	bob   = netip.MustParseAddr("198.51.100.2")
	carol = netip.MustParseAddr("198.51.100.3")
	dave  = netip.MustParseAddr("198.51.100.4")
)

// TestHealRestoresWithTimeLeft: after a flush, the gate installs the table
// again and puts every live grant back with its timeout and the time it
// had left, never more; grants that ran out meanwhile stay out.
func TestHealRestoresWithTimeLeft(t *testing.T) {
	g := startGate(t, door("ssh", 30*time.Second))
	g.open("ssh", alice)
	g.clock.add(10 * time.Second)
	g.Open(Grant{Door: "ssh", Addr: bob, Source: bob})
	g.wait("bob's grant", func() bool { _, ok := g.element("ssh_v4", bob); return ok })
	g.clock.add(25 * time.Second) // alice's has run out, bob's has 5s left
	g.fw.Flush()
	g.wait("the heal", func() bool {
		return g.logs.FilterMessage("table gone: re-installed with 1 live grants restored").Len() == 1
	})
	e, ok := g.element("ssh_v4", bob)
	if !ok || e.Timeout != 30*time.Second || e.Expires != 5*time.Second {
		t.Errorf("bob's restored grant %+v (%v): want timeout 30s, 5s left", e, ok)
	}
	if _, ok := g.element("ssh_v4", alice); ok {
		t.Error("a grant that ran out was restored")
	}
}

// TestHealActs: what the gate does for each kind of change someone else
// makes: elements go into the ledger without a look at the rules; a
// damaged table is installed again; a table that is still whole is left.
func TestHealActs(t *testing.T) {
	g := startGate(t, door("ssh", 30*time.Second))
	installs := g.fw.Installs()
	g.fw.AddElement("ssh_v4", bob.AsSlice(), time.Hour)
	g.wait("bob in the ledger", func() bool { _, ok := g.ledgerGet("ssh", bob); return ok })
	if g.fw.Installs() != installs {
		t.Error("an element someone added made the gate install")
	}
	g.watch.Again(nft.ChangedRuleset) // a change elsewhere in the ruleset: intact
	time.Sleep(50 * time.Millisecond)
	if g.fw.Installs() != installs {
		t.Error("an intact table was installed again")
	}
	g.fw.Flush()
	g.wait("the heal", func() bool { return g.fw.Installs() == installs+1 })
	if e, ok := g.element("ssh_v4", bob); !ok || e.Timeout != time.Hour {
		t.Errorf("someone's grant after the heal: %+v %v", e, ok)
	}
	g.fw.DeleteElement("ssh_v4", bob.AsSlice())
	g.wait("bob out of the ledger", func() bool { _, ok := g.ledgerGet("ssh", bob); return !ok })
}

// ledgerGet asks the gate's goroutine for a grant of the ledger.
func (g *testGate) ledgerGet(door string, a netip.Addr) (ledger.Grant, bool) {
	got := make(chan struct {
		g  ledger.Grant
		ok bool
	}, 1)
	g.reqs <- request{inspect: func() {
		gr, ok := g.ledger.Get(door, ledger.Key{Addr: a}, g.now())
		got <- struct {
			g  ledger.Grant
			ok bool
		}{gr, ok}
	}}
	r := <-got
	return r.g, r.ok
}

// TestReadOfKeptGrantsBlocksNothing: a restart reads the grants the table
// kept on a reader of its own (a dump of a big set takes minutes); while it
// reads, knocks are granted and changes someone else makes are followed,
// and once it is done the record is what the kernel holds: a grant deleted
// during the read does not come back from what the read saw earlier, and
// none made meanwhile is lost. A heal then restores exactly that.
func TestReadOfKeptGrantsBlocksNothing(t *testing.T) {
	c := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	fw := NewFakeFirewall(c.now)
	ssh := door("ssh", time.Hour)
	if _, err := fw.Install(planFor(ssh)); err != nil {
		t.Fatal(err)
	}
	fw.AddElement("ssh_v4", alice.AsSlice(), time.Hour)
	fw.AddElement("ssh_v4", carol.AsSlice(), time.Hour)
	hold := make(chan struct{})
	fw.HoldRead = hold
	g := startGateOn(t, fw, c, ssh)

	g.open("ssh", bob) // the gate serves while the read is held
	fw.DeleteElement("ssh_v4", carol.AsSlice())
	fw.AddElement("ssh_v4", dave.AsSlice(), time.Hour)
	// dave's notification came after carol's: once dave is in the
	// record, carol's deletion was seen.
	g.wait("dave in the ledger", func() bool { _, ok := g.ledgerGet("ssh", dave); return ok })
	if g.logs.FilterMessage("grants the table kept read into the record").Len() != 0 {
		t.Fatal("the read ended while held")
	}
	close(hold)
	g.wait("the read", func() bool { return g.logs.FilterMessage("grants the table kept read into the record").Len() == 1 })
	want := map[netip.Addr]bool{alice: true, bob: true, carol: false, dave: true}
	for a, in := range want {
		if _, ok := g.ledgerGet("ssh", a); ok != in {
			t.Errorf("%v in the ledger: %v, want %v", a, ok, in)
		}
	}
	g.fw.Flush()
	g.wait("the heal", func() bool {
		return g.logs.FilterMessage("table gone: re-installed with 3 live grants restored").Len() == 1
	})
	for a, in := range want {
		if _, ok := g.element("ssh_v4", a); ok != in {
			t.Errorf("%v in the set after the heal: %v, want %v", a, ok, in)
		}
	}
}

// TestResyncKeepsGrantsMadeMeanwhile: after lost notifications the gate
// reads every grant set anew, replacing its record; a knock granted while
// that read runs is kept, though the read began before it.
func TestResyncKeepsGrantsMadeMeanwhile(t *testing.T) {
	g := startGate(t, door("ssh", time.Hour))
	g.open("ssh", alice)
	hold := make(chan struct{})
	g.fw.mu.Lock()
	g.fw.HoldRead = hold
	g.fw.mu.Unlock()
	g.watch.Again(nft.Overrun)
	// The read starts on the next tick; bob knocks once it holds.
	time.Sleep(1500 * time.Millisecond)
	g.open("ssh", bob)
	close(hold)
	g.wait("the resync", func() bool { return g.logs.FilterMessageSnippet("grants read anew from the kernel").Len() == 1 })
	for _, a := range []netip.Addr{alice, bob} {
		if _, ok := g.ledgerGet("ssh", a); !ok {
			t.Errorf("%v not in the ledger after the resync", a)
		}
	}
}

// TestHealRetries: a heal that fails is tried again later, and works then.
func TestHealRetries(t *testing.T) {
	g := startGate(t, door("ssh", time.Hour))
	g.open("ssh", alice)
	g.fw.FailNextInstall(errors.New("kernel says no"))
	g.fw.Flush()
	g.wait("the failure logged", func() bool {
		return g.logs.FilterMessageSnippet("re-installing it failed").Len() == 1
	})
	g.wait("the retry", func() bool { _, ok := g.element("ssh_v4", alice); return ok })
}

// TestKindSwitchDropsGrants: a reload that turns a door from open_to
// "source" to "anyone" (or back) drops its grants: a single source's grant
// must never become everyone's, nor the reverse.
func TestKindSwitchDropsGrants(t *testing.T) {
	d := door("ssh", time.Hour)
	g := startGate(t, d)
	g.open("ssh", alice)
	anyone := *d
	anyone.OpenToAnyone = true
	g.install(&anyone)
	g.fw.Flush()
	g.wait("the heal", func() bool { return g.logs.FilterMessageSnippet("re-installed with 0 live grants restored").Len() == 1 })
	if els := g.fw.Elements("ssh_anyone"); len(els) != 0 {
		t.Errorf("ssh_anyone after the switch: %v", els)
	}
}

// TestFailedWriteIsLogged: a grant the kernel did not take is logged as
// not opened and forgotten by the ledger.
func TestFailedWriteIsLogged(t *testing.T) {
	g := startGate(t, door("ssh", time.Hour))
	g.fw.FailNextPut(errors.New("netlink: boom"))
	g.Open(Grant{Door: "ssh", Addr: alice, Source: alice})
	g.wait("the failure logged", func() bool { return g.logs.FilterMessageSnippet("NOT opened").Len() == 1 })
	if g.logs.FilterMessage("door opened").Len() != 0 {
		t.Error("logged the door as opened although the grant failed")
	}
	if _, ok := g.ledgerGet("ssh", alice); ok {
		t.Error("the ledger kept a grant the kernel did not take")
	}
}

// TestOnCloseHookAtExpiry: a door's on_close hook runs once its grant has
// run out, with the source; on_open when it opens.
func TestOnCloseHookAtExpiry(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "hook")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"$NFTKNOCK_EVENT $1\" >> "+dir+"/events\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	d := door("ssh", 2*time.Second)
	d.OnOpen, d.OnClose = []string{script, "{src}"}, []string{script, "{src}"}
	g := startGate(t, d)
	g.open("ssh", alice)
	events := func() string { b, _ := os.ReadFile(filepath.Join(dir, "events")); return string(b) }
	g.wait("on_open", func() bool { return strings.Contains(events(), "on_open 198.51.100.1") })
	if strings.Contains(events(), "on_close") {
		t.Fatal("on_close before expiry")
	}
	g.clock.add(3 * time.Second)
	g.wait("on_close", func() bool { return strings.Contains(events(), "on_close 198.51.100.1") })
}

// TestPerPortGrants: a door that grants per port writes one element per
// requested port, each keyed address . protocol . port, for the request's
// time (or open_for); a port it does not open is never written; the heal
// puts each back with its port, someone else's included.
func TestPerPortGrants(t *testing.T) {
	d := door("fw", 30*time.Second)
	d.Kind = &config.Fwknop{}
	d.Open = []config.Port{{Num: 22, Proto: config.TCP}, {Num: 2222, Proto: config.TCP}, {Num: 53, Proto: config.UDP}}
	g := startGate(t, d)
	gd := plan.Door{Name: "fw", PerPort: true}
	has := func(a netip.Addr, proto config.Proto, port uint16) (nft.Element, bool) {
		set, key := gd.GrantSet(a, proto, port)
		for _, e := range g.fw.Elements(set) {
			if string(e.Key) == string(key) {
				return e, true
			}
		}
		return nft.Element{}, false
	}
	g.Open(Grant{Door: "fw", Addr: alice, Source: bob, Ports: []config.Port{{Num: 22, Proto: config.TCP}}, For: time.Minute})
	g.wait("alice's tcp/22", func() bool { _, ok := has(alice, config.TCP, 22); return ok })
	if e, _ := has(alice, config.TCP, 22); e.Timeout != time.Minute {
		t.Errorf("alice's tcp/22 for %v, want the request's 1m", e.Timeout)
	}
	for _, p := range []uint16{2222, 53} {
		if _, ok := has(alice, config.TCP, p); ok {
			t.Errorf("alice got port %d she did not ask for", p)
		}
	}
	if l := g.logs.FilterMessage("door opened").All(); len(l) != 1 || fmt.Sprint(l[0].ContextMap()["ports"]) != "[22:tcp]" ||
		fmt.Sprint(l[0].ContextMap()["for"]) != "1m0s" {
		t.Errorf("door opened lines: %v", l)
	}

	// No ports: all of them, for open_for; a port the door does not open:
	// nothing.
	g.Open(Grant{Door: "fw", Addr: bob, Source: bob})
	g.Open(Grant{Door: "fw", Addr: alice, Source: alice, Ports: []config.Port{{Num: 23, Proto: config.TCP}}})
	g.wait("bob's three ports", func() bool { _, ok := has(bob, config.UDP, 53); return ok })
	if e, ok := has(bob, config.TCP, 2222); !ok || e.Timeout != 30*time.Second {
		t.Errorf("bob's tcp/2222: %+v %v", e, ok)
	}
	if _, ok := has(alice, config.TCP, 23); ok {
		t.Error("a port the door does not open was written")
	}

	// Someone else's element, then a flush.
	carol := netip.MustParseAddr("2001:db8::3")
	set, key := gd.GrantSet(carol, config.UDP, 53)
	g.fw.AddElement(set, key, time.Hour)
	g.wait("carol in the ledger", func() bool {
		got := make(chan bool, 1)
		g.reqs <- request{inspect: func() {
			_, ok := g.ledger.Get("fw", ledger.Key{Addr: carol, Proto: config.UDP, Port: 53}, g.now())
			got <- ok
		}}
		return <-got
	})
	g.fw.Flush()
	g.wait("the heal", func() bool { return g.logs.FilterMessageSnippet("re-installed with 5 live grants restored").Len() == 1 })
	for _, w := range []struct {
		a     netip.Addr
		proto config.Proto
		port  uint16
	}{{alice, config.TCP, 22}, {bob, config.TCP, 22}, {bob, config.TCP, 2222}, {bob, config.UDP, 53}, {carol, config.UDP, 53}} {
		if _, ok := has(w.a, w.proto, w.port); !ok {
			t.Errorf("after the heal, no %s %s/%d", w.a, w.proto, w.port)
		}
	}
}
