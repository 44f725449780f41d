package nft

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/config"
)

// These tests run against the real nf_tables of a scratch network namespace.

// trimLines drops trailing whitespace of every line and of the text.
func trimLines(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " \t")
	}
	return strings.TrimRight(strings.Join(lines, "\n"), "\n")
}

var expiresRE = regexp.MustCompile(` expires [0-9hms]+`)

// stripExpires removes the ever-changing time left of elements.
func stripExpires(s string) string { return expiresRE.ReplaceAllString(s, "") }

func install(t *testing.T, f *Firewall, cfg *config.Config) {
	t.Helper()
	if err := f.Install(cfg); err != nil {
		t.Fatal(err)
	}
}

func grant(t *testing.T, f *Firewall, door, addr string, d time.Duration) {
	t.Helper()
	if err := f.Grant(door, mustAddr(addr), d); err != nil {
		t.Fatal(err)
	}
}

// grantOf returns the kernel's element for door and addr.
func grantOf(t *testing.T, f *Firewall, door, addr string) (Grant, bool) {
	t.Helper()
	gs, err := f.Grants()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range gs {
		if g.Door == door && g.Addr == mustAddr(addr) {
			return g, true
		}
	}
	return Grant{}, false
}

func mustGrantOf(t *testing.T, f *Firewall, door, addr string) Grant {
	t.Helper()
	g, ok := grantOf(t, f, door, addr)
	if !ok {
		t.Fatalf("no element %s in the sets of door %s", addr, door)
	}
	return g
}

// TestKernelInstallRuleset checks what `nft list table` shows after Install
// against testdata/<case>.nft, and that the kernel holds the same bytecode as
// when nft itself loads that file: the rules read as nft rules because they
// are nft's own.
func TestKernelInstallRuleset(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  *config.Config
		rot  [][]config.Port // the rot door's sequences, if any
	}{
		{"ruleset", defaultConfig(), nil},
		{"ruleset_shared", sharedConfig(), nil},
		{"ruleset_doors", doorsConfig(), rotSeqs},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := newNetns(t)
			f := ns.open(t, "nftknock")
			if tc.rot != nil {
				// Before Install: recorded, and put in by Install.
				if err := f.Rotate("rot", tc.rot); err != nil {
					t.Fatal(err)
				}
			}
			install(t, f, tc.cfg)
			got := ns.nft(t, "list", "table", "inet", "nftknock")

			path := filepath.Join("testdata", tc.name+".nft")
			want := golden(t, path, got)
			if trimLines(got) != trimLines(want) {
				t.Fatalf("nft list table after Install differs from %s:\n%s", path, firstDiff(trimLines(want), trimLines(got)))
			}

			ref := newNetns(t)
			ref.nftInput(t, want)
			wantCode := ref.nft(t, "--debug=netlink", "list", "table", "inet", "nftknock")
			gotCode := ns.nft(t, "--debug=netlink", "list", "table", "inet", "nftknock")
			if gotCode != wantCode {
				t.Fatalf("bytecode differs from what nft loads for %s:\n%s", path, firstDiff(wantCode, gotCode))
			}
		})
	}
}

func TestKernelGrant(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	install(t, f, sharedConfig())

	grant(t, f, "ssh", "192.0.2.1", 30*time.Second)
	grant(t, f, "ssh", "::ffff:198.51.100.7", 30*time.Second) // 4in6: an IPv4 source
	grant(t, f, "ssh", "2001:db8::1", 30*time.Second)
	grant(t, f, "admin", "192.0.2.1", time.Hour)

	v4 := ns.nft(t, "list", "set", "inet", "nftknock", "ssh_v4")
	for _, want := range []string{"192.0.2.1 timeout 30s", "198.51.100.7 timeout 30s"} {
		if !strings.Contains(v4, want) {
			t.Errorf("ssh_v4 lacks %q:\n%s", want, v4)
		}
	}
	if v6 := ns.nft(t, "list", "set", "inet", "nftknock", "ssh_v6"); !strings.Contains(v6, "2001:db8::1 timeout 30s") {
		t.Errorf("ssh_v6 lacks 2001:db8::1:\n%s", v6)
	}
	if v4 := ns.nft(t, "list", "set", "inet", "nftknock", "admin_v4"); !strings.Contains(v4, "192.0.2.1 timeout 1h") {
		t.Errorf("admin_v4 lacks 192.0.2.1:\n%s", v4)
	}

	gs, err := f.Grants()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, g := range gs {
		got = append(got, fmt.Sprintf("%s %s %v", g.Door, g.Addr, g.Timeout))
		if g.Expires <= 0 || g.Expires > g.Timeout || g.Expires < g.Timeout-5*time.Second {
			t.Errorf("%s %s: expires in %v of %v", g.Door, g.Addr, g.Expires, g.Timeout)
		}
	}
	want := []string{
		"ssh 192.0.2.1 30s",
		"ssh 198.51.100.7 30s",
		"ssh 2001:db8::1 30s",
		"admin 192.0.2.1 1h0m0s",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Grants() =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	if err := f.Grant("nope", mustAddr("192.0.2.1"), time.Second); err == nil || !strings.Contains(err.Error(), "grant nope to 192.0.2.1") {
		t.Errorf("Grant to an unknown door: %v", err)
	}
	if err := f.Grant("ssh", mustAddr("192.0.2.1"), 0); err == nil {
		t.Error("Grant with a zero timeout succeeded")
	}
}

// TestKernelGrantRefresh: a repeat knock restarts the timer.
func TestKernelGrantRefresh(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	install(t, f, defaultConfig())

	grant(t, f, "ssh", "192.0.2.1", 5*time.Second)
	grant(t, f, "ssh", "2001:db8::1", 5*time.Second)
	time.Sleep(1500 * time.Millisecond)
	for _, a := range []string{"192.0.2.1", "2001:db8::1"} {
		if g := mustGrantOf(t, f, "ssh", a); g.Expires > 4*time.Second {
			t.Fatalf("%s: before the refresh, expires in %v; want under 4s", a, g.Expires)
		}
		grant(t, f, "ssh", a, 5*time.Second)
		if g := mustGrantOf(t, f, "ssh", a); g.Expires <= 4*time.Second {
			t.Errorf("%s: after the refresh, expires in %v; want over 4s", a, g.Expires)
		}
	}
}

// TestKernelGrantExpiredFallback: in the legacy mode, the mirror believes
// an element live that the kernel has already expired; the {delete, add}
// batch fails with ENOENT and Grant falls back to {add}.
func TestKernelGrantExpiredFallback(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	f.mode = grantLegacy // what kernels before 6.3 get
	install(t, f, defaultConfig())

	frozen := time.Now()
	f.now = func() time.Time { return frozen }
	grant(t, f, "ssh", "192.0.2.1", time.Second)
	time.Sleep(1200 * time.Millisecond)
	if _, ok := grantOf(t, f, "ssh", "192.0.2.1"); ok {
		t.Fatal("element still live after its timeout")
	}
	if !f.live(f.mirror[grantKey{"ssh", mustAddr("192.0.2.1")}], f.now()) {
		t.Fatal("the frozen clock should make the mirror think the element live")
	}
	grant(t, f, "ssh", "192.0.2.1", 5*time.Second)
	if g := mustGrantOf(t, f, "ssh", "192.0.2.1"); g.Timeout != 5*time.Second || g.Expires <= 4*time.Second {
		t.Errorf("after the fallback: %+v", g)
	}
}

// TestKernelRestartKeepsGrants: a new daemon (new Firewall) installing the
// same config neither revokes nor extends a live grant.
func TestKernelRestartKeepsGrants(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f1 := ns.open(t, "nftknock")
	install(t, f1, defaultConfig())
	grant(t, f1, "ssh", "192.0.2.1", 30*time.Second)
	grant(t, f1, "ssh", "2001:db8::1", 30*time.Second)
	time.Sleep(1100 * time.Millisecond)
	before := mustGrantOf(t, f1, "ssh", "192.0.2.1")
	if err := f1.Close(); err != nil {
		t.Fatal(err)
	}

	f2 := ns.open(t, "nftknock")
	install(t, f2, defaultConfig())
	for _, a := range []string{"192.0.2.1", "2001:db8::1"} {
		after := mustGrantOf(t, f2, "ssh", a)
		if after.Expires > before.Expires || after.Timeout != 30*time.Second {
			t.Errorf("%s after restart: %+v; before: %+v", a, after, before)
		}
		if !f2.live(f2.mirror[grantKey{"ssh", mustAddr(a)}], time.Now()) {
			t.Errorf("%s: Install did not seed the mirror", a)
		}
	}
	if got, want := stripExpires(ns.nft(t, "list", "table", "inet", "nftknock")), "elements = { 192.0.2.1 timeout 30s }"; !strings.Contains(got, want) {
		t.Errorf("listing lacks %q:\n%s", want, got)
	}

	// The seeded mirror makes the next knock a refresh.
	grant(t, f2, "ssh", "192.0.2.1", 30*time.Second)
	if g := mustGrantOf(t, f2, "ssh", "192.0.2.1"); g.Expires <= before.Expires {
		t.Errorf("refresh after restart: %+v", g)
	}
}

// TestKernelReload: Install with a changed config drops the sets of removed
// doors, adds those of new doors, keeps the elements of kept doors, and
// clears out anything else in the table, but no other table.
func TestKernelReload(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	cfg1 := sharedConfig()
	install(t, f, cfg1)
	grant(t, f, "ssh", "192.0.2.1", time.Hour)
	grant(t, f, "admin", "192.0.2.2", time.Hour)
	time.Sleep(1100 * time.Millisecond)
	before := mustGrantOf(t, f, "ssh", "192.0.2.1")

	// Hand edits: a chain and a set of the table that are not ours, and
	// another table that must survive.
	ns.nftInput(t, `
add chain inet nftknock extra
add set inet nftknock stray { type ipv4_addr; }
add rule inet nftknock extra ip saddr @stray drop
add table inet other
add chain inet other keep { type filter hook input priority 0; }
add rule inet other keep tcp dport 80 accept
`)
	otherBefore := ns.nft(t, "list", "table", "inet", "other")

	cfg2 := defaultConfig()
	cfg2.Doors = append(cfg2.Doors, config.Door{
		Name: "web", Sequence: []config.Port{udp(6000)}, Open: []config.Port{tcp(443)}, OpenFor: time.Minute,
	})
	install(t, f, cfg2)

	sets := ns.nft(t, "list", "sets", "table", "inet", "nftknock")
	for _, want := range []string{"set ssh_v4", "set ssh_v6", "set web_v4", "set web_v6"} {
		if !strings.Contains(sets, want) {
			t.Errorf("sets lack %q:\n%s", want, sets)
		}
	}
	for _, gone := range []string{"admin_v4", "admin_v6", "stray"} {
		if strings.Contains(sets, gone) {
			t.Errorf("set %s survived the reload:\n%s", gone, sets)
		}
	}
	chains := ns.nft(t, "list", "chains", "inet")
	if strings.Contains(chains, "extra") || !strings.Contains(chains, "chain keep") {
		t.Errorf("chains after reload:\n%s", chains)
	}
	if got := ns.nft(t, "list", "table", "inet", "other"); got != otherBefore {
		t.Errorf("table inet other changed:\n%s\nwas:\n%s", got, otherBefore)
	}
	after := mustGrantOf(t, f, "ssh", "192.0.2.1")
	if after.Expires > before.Expires {
		t.Errorf("kept grant was extended: %v, was %v", after.Expires, before.Expires)
	}
	if _, ok := f.mirror[grantKey{"admin", mustAddr("192.0.2.2")}]; ok {
		t.Error("mirror still holds a grant of a removed door")
	}
	if err := f.Grant("admin", mustAddr("192.0.2.2"), time.Minute); err == nil {
		t.Error("Grant to a removed door succeeded")
	}
	grant(t, f, "web", "192.0.2.3", time.Minute)

	// Going back is a reload too; and a reload with the same config leaves
	// the ruleset exactly as a fresh Install writes it.
	install(t, f, defaultConfig())
	want, err := os.ReadFile(filepath.Join("testdata", "ruleset.nft"))
	if err != nil {
		t.Fatal(err)
	}
	got := stripExpires(ns.nft(t, "list", "table", "inet", "nftknock"))
	got = strings.Replace(got, "\t\telements = { 192.0.2.1 timeout 1h }\n", "", 1)
	if trimLines(got) != trimLines(string(want)) {
		t.Errorf("after reloads:\n%s", firstDiff(trimLines(string(want)), trimLines(got)))
	}
}

// TestKernelInstallReplacesMisshapenSets: a set with a door set's name but
// not its shape (hand-made, no timeout flag) is replaced, as is a chain of
// the same name as ours.
func TestKernelInstallReplacesMisshapenSets(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	ns.nftInput(t, `
table inet nftknock {
	set ssh_v4 { type ipv4_addr; elements = { 10.0.0.1 } }
	set ssh_v6 { type ipv4_addr; }
	chain input { type filter hook input priority 0; policy drop; ip saddr @ssh_v4 accept; }
}
`)
	f := ns.open(t, "nftknock")
	install(t, f, defaultConfig())
	want, err := os.ReadFile(filepath.Join("testdata", "ruleset.nft"))
	if err != nil {
		t.Fatal(err)
	}
	if got := ns.nft(t, "list", "table", "inet", "nftknock"); trimLines(got) != trimLines(string(want)) {
		t.Errorf("after Install over a hand-made table:\n%s", firstDiff(trimLines(string(want)), trimLines(got)))
	}
}

func TestKernelRevoke(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	install(t, f, defaultConfig())

	grant(t, f, "ssh", "192.0.2.1", time.Minute)
	grant(t, f, "ssh", "2001:db8::1", time.Minute)
	for _, a := range []string{"192.0.2.1", "::ffff:192.0.2.1", "2001:db8::1", "2001:db8::1"} {
		if err := f.Revoke("ssh", mustAddr(a)); err != nil {
			t.Errorf("Revoke %s: %v", a, err)
		}
	}
	if gs, err := f.Grants(); err != nil || len(gs) != 0 {
		t.Errorf("Grants() after revoking all = %v, %v", gs, err)
	}
	if len(f.mirror) != 0 {
		t.Errorf("mirror after revoking all: %v", f.mirror)
	}

	// Expired but possibly not yet collected: still nil.
	grant(t, f, "ssh", "192.0.2.9", 10*time.Millisecond)
	time.Sleep(50 * time.Millisecond)
	if err := f.Revoke("ssh", mustAddr("192.0.2.9")); err != nil {
		t.Errorf("Revoke of an expired element: %v", err)
	}
	if err := f.Revoke("nope", mustAddr("192.0.2.1")); err == nil || !strings.Contains(err.Error(), "revoke nope from 192.0.2.1") {
		t.Errorf("Revoke from an unknown door: %v", err)
	}
}

func TestKernelRemove(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	ns.nftInput(t, "add table inet other\n")
	f := ns.open(t, "nftknock")
	install(t, f, defaultConfig())
	grant(t, f, "ssh", "192.0.2.1", time.Minute)

	if err := f.Remove(); err != nil {
		t.Fatal(err)
	}
	if got := ns.nft(t, "list", "tables"); strings.TrimSpace(got) != "table inet other" {
		t.Errorf("tables after Remove:\n%s", got)
	}
	if err := f.Remove(); err != nil {
		t.Errorf("second Remove: %v", err)
	}
	if err := f.Grant("ssh", mustAddr("192.0.2.1"), time.Minute); err == nil {
		t.Error("Grant after Remove succeeded")
	}
	// A fresh Install after Remove works.
	install(t, f, defaultConfig())
	grant(t, f, "ssh", "192.0.2.1", time.Minute)
}

// TestKernelFailedInstall: when the kernel rejects any part of the batch,
// the ruleset and the grants stay exactly as they were, and the Firewall
// goes on working.
func TestKernelFailedInstall(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	install(t, f, defaultConfig())
	grant(t, f, "ssh", "192.0.2.1", time.Hour)
	before := stripExpires(ns.nft(t, "list", "ruleset"))

	// Config validation would refuse this name; the kernel refuses set
	// names over 255 bytes.
	bad := sharedConfig()
	bad.Doors = append(bad.Doors, config.Door{
		Name: strings.Repeat("x", 300), Sequence: []config.Port{tcp(1234)}, Open: []config.Port{tcp(80)}, OpenFor: time.Minute,
	})
	err := f.Install(bad)
	if err == nil {
		t.Fatal("Install with a 303-byte set name succeeded")
	}
	if !strings.Contains(err.Error(), `install table "nftknock"`) {
		t.Errorf("error lacks context: %v", err)
	}
	t.Logf("rejected as expected: %v", err)
	if after := stripExpires(ns.nft(t, "list", "ruleset")); after != before {
		t.Fatalf("ruleset changed by a failed Install:\n%s\nwas:\n%s", after, before)
	}

	// The Firewall still serves the old config.
	if err := f.Grant("admin", mustAddr("192.0.2.2"), time.Minute); err == nil {
		t.Error("Grant to a door of the failed config succeeded")
	}
	grant(t, f, "ssh", "192.0.2.2", time.Minute)
	grant(t, f, "ssh", "192.0.2.1", time.Hour)
	if gs, err := f.Grants(); err != nil || len(gs) != 2 {
		t.Errorf("Grants() = %v, %v; want 2", gs, err)
	}
	install(t, f, sharedConfig())
	mustGrantOf(t, f, "ssh", "192.0.2.1")
}

// TestKernelLargeConfig: hundreds of rules in one batch. v0.3.0 sends the
// batch as one datagram, reads no reply until it is all sent, and asks an
// echo of every rule: with default socket buffers, 20 doors overflow the
// receive buffer (ENOBUFS, although the batch commits) and 100 doors do not
// fit the send buffer (EMSGSIZE). See socketBuffer.
func TestKernelLargeConfig(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	cfg := defaultConfig()
	cfg.Doors = nil
	for i := range 100 {
		cfg.Doors = append(cfg.Doors, config.Door{
			Name:     fmt.Sprintf("door%d", i),
			Sequence: []config.Port{tcp(uint16(10000 + 3*i)), udp(uint16(10001 + 3*i)), tcp(uint16(10002 + 3*i))},
			Open:     []config.Port{tcp(uint16(2000 + i))},
			OpenFor:  time.Minute,
		})
	}
	// Fresh: loopback, 4 scan rules, and per door 20: 1 established, 2
	// accepts, 1 drop; per knock 2 rate limits, 1 log, 1 drop, and 2
	// knocking-set updates on all but the last step. 200 door sets.
	install(t, f, cfg)
	grant(t, f, "door42", "192.0.2.1", time.Minute)
	install(t, f, cfg) // replace: the deletions too
	if got := strings.Count(ns.nft(t, "list", "chain", "inet", "nftknock", "input"), "comment"); got != 2005 {
		t.Errorf("%d rules, want 2005", got)
	}
	mustGrantOf(t, f, "door42", "192.0.2.1")
}

// The tests below pin the kernel facts the package is built on, with the
// library alone, so that a kernel that behaves differently shows here
// first.

// kernelSet installs the default config as table inet t in a scratch
// namespace; the tests use the Firewall's lasting connection directly.
func kernelSet(t *testing.T) (*Firewall, *config.Config) {
	t.Helper()
	ns := newNetns(t)
	f := ns.open(t, "t")
	cfg := defaultConfig()
	cfg.Table = "t"
	install(t, f, cfg)
	return f, cfg
}

// TestKernelReaddDoesNotRefresh: adding an element that is already there,
// with the same timeout, succeeds and leaves its expiry alone.
//
// (Since Linux 6.11 or so a re-add with a different timeout, or with an
// explicit expiration, does update it; v0.3.0 cannot send the expiration
// attribute, and Grant must work with a fixed timeout anyway.)
func TestKernelReaddDoesNotRefresh(t *testing.T) {
	t.Parallel()
	f, _ := kernelSet(t)
	c, err := f.c()
	if err != nil {
		t.Fatal(err)
	}
	set, _ := f.doorSet("ssh", mustAddr("192.0.2.1"))
	add := func() {
		t.Helper()
		if err := c.SetAddElements(set, elem("192.0.2.1", 5*time.Second)); err != nil {
			t.Fatal(err)
		}
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	add()
	time.Sleep(1500 * time.Millisecond)
	add()
	if g := mustGrantOf(t, f, "ssh", "192.0.2.1"); g.Expires > 4*time.Second {
		t.Fatalf("a plain re-add refreshed the element: expires in %v", g.Expires)
	}
}

// TestKernelDeleteExpiredRollsBack: deleting an element whose timeout has
// run out fails with ENOENT (whether or not garbage collection has removed
// it yet) and aborts the whole batch, so an add in the same batch is lost.
// It also checks that v0.3.0 keeps the errno, so errors.Is finds it.
func TestKernelDeleteExpiredRollsBack(t *testing.T) {
	t.Parallel()
	f, _ := kernelSet(t)
	c, err := f.c()
	if err != nil {
		t.Fatal(err)
	}
	set, _ := f.doorSet("ssh", mustAddr("192.0.2.1"))
	if err := c.SetAddElements(set, elem("192.0.2.1", time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	if err := c.SetDeleteElements(set, elem("192.0.2.1", 0)); err != nil {
		t.Fatal(err)
	}
	if err := c.SetAddElements(set, elem("192.0.2.2", time.Minute)); err != nil {
		t.Fatal(err)
	}
	err = c.Flush()
	if !errors.Is(err, unix.ENOENT) {
		t.Fatalf("delete of an expired element: %v, want ENOENT", err)
	}
	if _, ok := grantOf(t, f, "ssh", "192.0.2.2"); ok {
		t.Fatal("the add of a failed batch was applied")
	}
}

// TestKernelLastingConnAfterFailedBatch: v0.3.0 does not drain the socket
// after a failed batch. On this kernel the abort path still acks every
// message of the batch, one ack per message as Flush reads them, so a
// lasting connection stays in step: every query after a failed batch gets
// its own reply. (Firewall drops its connection after any error anyway.)
func TestKernelLastingConnAfterFailedBatch(t *testing.T) {
	t.Parallel()
	f, _ := kernelSet(t)
	c, err := f.c()
	if err != nil {
		t.Fatal(err)
	}
	set, _ := f.doorSet("ssh", mustAddr("192.0.2.1"))
	for i := range 5 {
		// A batch of many messages whose failing one sits in the middle.
		for j := range 20 {
			if err := c.SetAddElements(set, elem(fmt.Sprintf("198.51.100.%d", j), time.Minute)); err != nil {
				t.Fatal(err)
			}
			if j == 10 {
				if err := c.SetDeleteElements(set, elem("203.0.113.1", 0)); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := c.Flush(); !errors.Is(err, unix.ENOENT) {
			t.Fatalf("round %d: failing batch returned %v", i, err)
		}
		elems, err := c.GetSetElements(set)
		if err != nil || len(elems) != i {
			t.Fatalf("round %d: after the failed batch, GetSetElements = %d elements, %v; want %d", i, len(elems), err, i)
		}
		if err := c.SetAddElements(set, elem(fmt.Sprintf("192.0.2.%d", i+1), time.Minute)); err != nil {
			t.Fatal(err)
		}
		if err := c.Flush(); err != nil {
			t.Fatalf("round %d: add after the failed batch: %v", i, err)
		}
		sets, err := c.GetSets(f.table)
		if want := len(planSets(defaultConfig())); err != nil || len(sets) != want {
			t.Fatalf("round %d: GetSets = %d, %v; want %d", i, len(sets), err, want)
		}
	}
}

// TestKernelRotate: Rotate replaces a rotating door's port sets in one
// batch, an Install (a reload or a heal) keeps what it last set, and a
// rotation the kernel refuses changes nothing.
func TestKernelRotate(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	// A fresh start: no table, no record of what is unused.
	if v, err := f.StillValid("rot", rotSeqs); err != nil || v[0] || v[1] {
		t.Fatalf("StillValid without a table = %v, %v; want all used, no error", v, err)
	}
	install(t, f, doorsConfig())
	sets := func() string {
		t.Helper()
		return ns.nft(t, "list", "set", "inet", "nftknock", "rot_first") + ns.nft(t, "list", "set", "inet", "nftknock", "rot_next")
	}
	elements := regexp.MustCompile(`elements = \{ ([0-9, ]+) \}`)
	got := func() []string {
		t.Helper()
		var out []string
		for _, m := range elements.FindAllStringSubmatch(sets(), -1) {
			out = append(out, m[1])
		}
		return out
	}
	if g := got(); len(g) != 0 {
		t.Fatalf("before any rotation the sets hold %q", g)
	}
	if err := f.Rotate("rot", rotSeqs); err != nil {
		t.Fatal(err)
	}
	if g := strings.Join(got(), " / "); g != "25000, 31000 / 21111, 22222, 36000" {
		t.Fatalf("after the rotation: %q", g)
	}
	// The next window: the older sequence goes, a new one comes.
	next := [][]config.Port{rotSeqs[1], {tcp(33000), tcp(34000), tcp(35000)}}
	if err := f.Rotate("rot", next); err != nil {
		t.Fatal(err)
	}
	if g := strings.Join(got(), " / "); g != "25000, 33000 / 21111, 34000, 35000, 36000" {
		t.Fatalf("after the second rotation: %q", g)
	}
	// What a restarted daemon reads back: the older sequence is gone, the
	// newer held whole, and a sequence with one port missing is not.
	partial := []config.Port{tcp(33000), tcp(34000), tcp(39999)}
	if v, err := f.StillValid("rot", [][]config.Port{rotSeqs[0], next[1], rotSeqs[1], partial}); err != nil ||
		v[0] || !v[1] || !v[2] || v[3] {
		t.Fatalf("StillValid = %v, %v; want [false true true false]", v, err)
	}
	install(t, f, doorsConfig())
	if g := strings.Join(got(), " / "); g != "25000, 33000 / 21111, 34000, 35000, 36000" {
		t.Fatalf("after a reinstall: %q", g)
	}
	// Both used up: the sets are empty, so no knock reaches the daemon.
	if err := f.Rotate("rot", nil); err != nil {
		t.Fatal(err)
	}
	if g := got(); len(g) != 0 {
		t.Fatalf("all used up, the sets still hold %q", g)
	}
	// With the table deleted behind its back, a rotation fails (and says
	// so); the heal's Install then puts in what it was asked for last.
	ns.nft(t, "delete", "table", "inet", "nftknock")
	if err := f.Rotate("rot", [][]config.Port{{tcp(30001), tcp(30002)}}); err == nil {
		t.Fatal("a rotation into a deleted table reported success")
	}
	install(t, f, doorsConfig())
	if g := strings.Join(got(), " / "); g != "30001 / 30002" {
		t.Fatalf("after the heal: %q", g)
	}
}
