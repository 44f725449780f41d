package nft

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/nft/plan"
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

var ruleHandleRE = regexp.MustCompile(`(?m)^(inet \S+ \S+) \d+( \d+)?$`)

var expiresRE = regexp.MustCompile(` expires [0-9hms]+`)

// stripExpires removes the ever-changing time left of elements.
func stripExpires(s string) string { return expiresRE.ReplaceAllString(s, "") }

func install(t *testing.T, f *Firewall, p *plan.Plan) map[string]bool {
	t.Helper()
	kept, err := f.Install(p)
	if err != nil {
		t.Fatal(err)
	}
	return kept
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

// freshListing is what `nft list table` shows for p installed in an empty
// namespace: what any Install of p must leave.
func freshListing(t *testing.T, p *plan.Plan) string {
	t.Helper()
	ns := newNetns(t)
	install(t, ns.open(t, p.Table), p)
	return trimLines(ns.nft(t, "list", "table", "inet", p.Table))
}

// TestKernelInstallLoadsLikeNft: what Install writes is what nft itself
// writes for the text it lists: the same bytecode, so that `nft list`
// folds it back into nft's own rules ("tcp dport 22 ip saddr @ssh_v4"),
// not raw payload expressions.
func TestKernelInstallLoadsLikeNft(t *testing.T) {
	t.Parallel()
	for name, p := range map[string]*plan.Plan{
		"default":  defaultPlan("nftknock"),
		"shared":   sharedPlan("nftknock"),
		"doors":    planOf("nftknock", sshDoor(), vpnDoor(), rotDoor()),
		"keyspa":   planOf("nftknock", teamDoor()),
		"fwknop":   planOf("nftknock", sshDoor(), fwDoor(), fw2Door()),
		"forward":  forwardPlan("nftknock"),
		"attached": attachedPlan("nftknock"),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ns := newNetns(t)
			table := "nftknock"
			if p.Attached {
				table = "filter"
				ns.nftInput(t, adminRuleset)
				f, err := OpenAttached(Attach{Table: "filter", Chain: "input"}, "nftknock", nftables.WithNetNSFd(ns.FD))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { f.Close() })
				install(t, f, p)
			} else {
				install(t, ns.open(t, "nftknock"), p)
			}
			listing := ns.nft(t, "list", "table", "inet", table)
			ref := newNetns(t)
			ref.nftInput(t, listing)
			// Rule handles follow the order rules were added in, which in
			// the admin's table is not the listing's.
			want := ruleHandleRE.ReplaceAllString(ref.nft(t, "--debug=netlink", "list", "table", "inet", table), "$1")
			if got := ruleHandleRE.ReplaceAllString(ns.nft(t, "--debug=netlink", "list", "table", "inet", table), "$1"); got != want {
				t.Fatalf("bytecode differs from what nft loads for its own listing:\n%s", firstDiff(want, got))
			}
		})
	}
}

// TestKernelPerPortGrant: a door that grants per port holds address .
// protocol . port elements, which `nft list` shows as nft's own, which
// let that port alone through, and which Grants reads back with the port.
func TestKernelPerPortGrant(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	install(t, f, planOf("nftknock", fwDoor(), fw2Door()))
	for _, g := range []struct {
		door, addr string
		port       config.Port
	}{{"fw", "192.0.2.2", tcp(22)}, {"fw", "192.0.2.2", tcp(2222)}, {"fw", "2001:db8::2", tcp(22)}, {"fw_2", "192.0.2.3", udp(1194)}} {
		if err := f.GrantPort(g.door, mustAddr(g.addr), g.port, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	listing := stripExpires(ns.nft(t, "list", "table", "inet", "nftknock"))
	for _, want := range []string{
		"type ipv4_addr . inet_proto . inet_service",
		"elements = { 192.0.2.2 . tcp . 22 timeout 30s,\n\t\t\t     192.0.2.2 . tcp . 2222 timeout 30s }",
		"elements = { 2001:db8::2 . tcp . 22 timeout 30s }",
		"elements = { 192.0.2.3 . udp . 1194 timeout 30s }",
		"ip saddr . meta l4proto . th dport @fw_v4 counter packets 0 bytes 0 accept",
		"ip6 saddr . meta l4proto . th dport @fw_v6 counter packets 0 bytes 0 accept",
	} {
		if !strings.Contains(listing, want) {
			t.Errorf("nft list lacks %q:\n%s", want, listing)
		}
	}
	// nft loads that listing back, elements and all.
	newNetns(t).nftInput(t, listing)

	gs, err := f.Grants()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, g := range gs {
		got = append(got, fmt.Sprintf("%s %s %s", g.Door, g.Addr, g.Port))
	}
	if want := "fw 192.0.2.2 22:tcp|fw 192.0.2.2 2222:tcp|fw 2001:db8::2 22:tcp|fw_2 192.0.2.3 1194:udp"; strings.Join(got, "|") != want {
		t.Errorf("Grants() = %q, want %q", got, want)
	}
	if !f.PerPortDoor("fw") || f.PerPortDoor("nope") {
		t.Error("PerPortDoor does not tell the per-port door")
	}
	if err := f.Grant("fw", mustAddr("192.0.2.9"), time.Minute); err == nil || !strings.Contains(err.Error(), "grants per port") {
		t.Errorf("a grant of a per-port door without a port: %v", err)
	}
	if err := f.RevokePort("fw", mustAddr("192.0.2.2"), tcp(22)); err != nil {
		t.Fatal(err)
	}
	if l := ns.nft(t, "list", "set", "inet", "nftknock", "fw_v4"); strings.Contains(l, ". 22 ") || !strings.Contains(l, "192.0.2.2 . tcp . 2222") {
		t.Errorf("RevokePort took the wrong element:\n%s", l)
	}
}

func TestKernelGrant(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	install(t, f, sharedPlan("nftknock"))

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

// TestKernelGrantRefresh: a grant again restarts the timer.
func TestKernelGrantRefresh(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	install(t, f, defaultPlan("nftknock"))

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

// TestKernelPutLegacyFallback: in the legacy mode (kernels before 6.3), an
// element marked live that the kernel has already expired makes {delete,
// add} fail with ENOENT; Put sends {add} alone then.
func TestKernelPutLegacyFallback(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	f.mode = grantLegacy
	install(t, f, defaultPlan("nftknock"))
	key := mustAddr("192.0.2.1").AsSlice()
	if _, first, err := f.Put("ssh_v4", []Element{{Key: key, Timeout: time.Second}}); err != nil || first != nil {
		t.Fatal(err, first)
	}
	time.Sleep(1200 * time.Millisecond)
	before := f.Stats()
	if _, first, err := f.Put("ssh_v4", []Element{{Key: key, Timeout: 5 * time.Second, Live: true}}); err != nil || first != nil {
		t.Fatal(err, first)
	}
	if d := f.Stats(); d.Batches-before.Batches != 2 || d.Refused-before.Refused != 1 {
		t.Errorf("stats %+v before %+v: want the {delete, add} refused, then {add}", d, before)
	}
	if g := mustGrantOf(t, f, "ssh", "192.0.2.1"); g.Timeout != 5*time.Second || g.Expires <= 4*time.Second {
		t.Errorf("after the fallback: %+v", g)
	}
}

// TestKernelPutFallsBackPerElement: a chunk the kernel refuses is written
// again one element at a time: the elements of a full set are refused and
// named, the others written.
func TestKernelPutFallsBackPerElement(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	d := sshDoor()
	d.gate.MaxGrants = 8
	install(t, f, planOf("nftknock", d))
	var els []Element
	for i := range 10 {
		els = append(els, Element{Key: []byte{192, 0, 2, byte(i + 1)}, Timeout: time.Minute})
	}
	refused, first, err := f.Put("ssh_v4", els)
	if err != nil {
		t.Fatal(err)
	}
	if len(refused) != 2 || first == nil {
		t.Fatalf("refused %d elements (%v), want the 2 beyond the set's size", len(refused), first)
	}
	t.Logf("refused as expected: %v", first)
	if gs, _ := f.Grants(); len(gs) != 8 {
		t.Errorf("%d grants in the set, want 8", len(gs))
	}
}

// TestKernelRestartKeepsGrants: a new daemon (new Firewall) installing the
// same plan neither revokes nor extends a live grant, and says the set
// stayed.
func TestKernelRestartKeepsGrants(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f1 := ns.open(t, "nftknock")
	install(t, f1, defaultPlan("nftknock"))
	grant(t, f1, "ssh", "192.0.2.1", 30*time.Second)
	grant(t, f1, "ssh", "2001:db8::1", 30*time.Second)
	time.Sleep(1100 * time.Millisecond)
	before := mustGrantOf(t, f1, "ssh", "192.0.2.1")
	if err := f1.Close(); err != nil {
		t.Fatal(err)
	}

	f2 := ns.open(t, "nftknock")
	kept := install(t, f2, defaultPlan("nftknock"))
	if !kept["ssh_v4"] || !kept["ssh_v6"] || kept["ssh_allow_v4"] {
		t.Errorf("kept %v, want the grant sets", kept)
	}
	for _, a := range []string{"192.0.2.1", "2001:db8::1"} {
		after := mustGrantOf(t, f2, "ssh", a)
		if after.Expires > before.Expires || after.Timeout != 30*time.Second {
			t.Errorf("%s after restart: %+v; before: %+v", a, after, before)
		}
	}
	if got, want := stripExpires(ns.nft(t, "list", "table", "inet", "nftknock")), "elements = { 192.0.2.1 timeout 30s }"; !strings.Contains(got, want) {
		t.Errorf("listing lacks %q:\n%s", want, got)
	}
}

// TestKernelReload: Install with a changed plan drops the sets of removed
// doors, adds those of new doors, keeps the elements of kept doors, and
// clears out anything else in the table, but no other table.
func TestKernelReload(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	install(t, f, sharedPlan("nftknock"))
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

	web := testDoor{
		gate:   plan.Door{Name: "web", Open: []config.Port{tcp(443)}, MaxGrants: 1024},
		knocks: []plan.Knock{knockOf(udp(6000), "knock 1 of 1", plan.WatchFirst, time.Second)},
	}
	install(t, f, planOf("nftknock", sshDoor(), web))

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
	if err := f.Grant("admin", mustAddr("192.0.2.2"), time.Minute); err == nil {
		t.Error("Grant to a removed door succeeded")
	}
	grant(t, f, "web", "192.0.2.3", time.Minute)

	// Going back is a reload too; and a reload with the same plan leaves
	// the ruleset exactly as a fresh Install writes it.
	install(t, f, defaultPlan("nftknock"))
	got := stripExpires(ns.nft(t, "list", "table", "inet", "nftknock"))
	got = strings.Replace(got, "\t\telements = { 192.0.2.1 timeout 1h }\n", "", 1)
	if want := freshListing(t, defaultPlan("nftknock")); trimLines(got) != want {
		t.Errorf("after reloads:\n%s", firstDiff(want, trimLines(got)))
	}
}

// TestKernelInstallReplacesMisshapenSets: a set with a door set's name but
// not its shape (hand-made, no timeout flag; another size) is replaced, as
// is a chain of the same name as ours.
func TestKernelInstallReplacesMisshapenSets(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	ns.nftInput(t, `
table inet nftknock {
	set ssh_v4 { type ipv4_addr; elements = { 10.0.0.1 } }
	set ssh_v6 { type ipv6_addr; size 10; flags timeout; }
	chain input { type filter hook input priority 0; policy drop; ip saddr @ssh_v4 accept; }
}
`)
	f := ns.open(t, "nftknock")
	if kept := install(t, f, defaultPlan("nftknock")); len(kept) != 0 {
		t.Errorf("kept %v, want none", kept)
	}
	want := freshListing(t, defaultPlan("nftknock"))
	if got := ns.nft(t, "list", "table", "inet", "nftknock"); trimLines(got) != want {
		t.Errorf("after Install over a hand-made table:\n%s", firstDiff(want, trimLines(got)))
	}
}

// TestKernelIntact: Intact holds a table to the plan rule by rule: an
// edited rule, a flushed chain, a rule added, a set deleted or reshaped,
// a deleted table all make it false; counters counting and elements
// coming and going do not.
func TestKernelIntact(t *testing.T) {
	t.Parallel()
	p := planOf("nftknock", sshDoor(), vpnDoor(), rotDoor())
	for _, tc := range []struct {
		name   string
		damage string // nft input; "" for none
		intact bool
	}{
		{"untouched", "", true},
		{"elements", "add element inet nftknock ssh_v4 { 192.0.2.9 timeout 1m }\nflush set inet nftknock rot_first\n", true},
		{"replaced rule", "replace rule inet nftknock input handle HANDLE tcp dport 22 counter accept comment \"closed to everyone else\"\n", false},
		{"flushed chain", "flush chain inet nftknock input\n", false},
		{"rule added", "add rule inet nftknock input tcp dport 23 accept\n", false},
		{"table deleted", "delete table inet nftknock\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns := newNetns(t)
			f := ns.open(t, "nftknock")
			install(t, f, p)
			if strings.Contains(tc.damage, "HANDLE") {
				// The drop rule of port 22, made an accept.
				listing := ns.nft(t, "-a", "list", "chain", "inet", "nftknock", "input")
				m := regexp.MustCompile(`tcp dport 22 counter packets \d+ bytes \d+ drop comment "closed to everyone else" # handle (\d+)`).FindStringSubmatch(listing)
				if m == nil {
					t.Fatalf("no drop rule for 22 in:\n%s", listing)
				}
				tc.damage = strings.Replace(tc.damage, "HANDLE", m[1], 1)
			}
			if tc.damage != "" {
				ns.nftInput(t, tc.damage)
			}
			ok, err := f.Intact(p)
			if err != nil || ok != tc.intact {
				t.Errorf("Intact = %v, %v; want %v", ok, err, tc.intact)
			}
		})
	}
}

// TestKernelReplace: Replace makes a port set hold exactly the ports it is
// given, in one batch.
func TestKernelReplace(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	install(t, f, planOf("nftknock", sshDoor(), rotDoor()))
	if err := f.Replace("rot_first", [][]byte{{0x75, 0x30}, {0x9c, 0x40}}); err != nil {
		t.Fatal(err)
	}
	if err := f.Replace("rot_next", nil); err != nil {
		t.Fatal(err)
	}
	first := ns.nft(t, "list", "set", "inet", "nftknock", "rot_first")
	if !strings.Contains(first, "elements = { 30000, 40000 }") {
		t.Errorf("rot_first:\n%s", first)
	}
	if next := ns.nft(t, "list", "set", "inet", "nftknock", "rot_next"); strings.Contains(next, "elements") {
		t.Errorf("rot_next not emptied:\n%s", next)
	}
	els, err := f.Read("rot_first")
	if err != nil || len(els) != 2 {
		t.Errorf("Read = %v, %v", els, err)
	}
	if err := f.Replace("nope", nil); err == nil {
		t.Error("Replace of a set that does not exist succeeded")
	}
}

func TestKernelRevoke(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	install(t, f, defaultPlan("nftknock"))

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
	install(t, f, defaultPlan("nftknock"))
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
	install(t, f, defaultPlan("nftknock"))
	grant(t, f, "ssh", "192.0.2.1", time.Minute)
}

// TestKernelFailedInstall: when the kernel rejects any part of the batch,
// the ruleset and the grants stay exactly as they were, and the Firewall
// goes on working.
func TestKernelFailedInstall(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	install(t, f, defaultPlan("nftknock"))
	grant(t, f, "ssh", "192.0.2.1", time.Hour)
	before := stripExpires(ns.nft(t, "list", "ruleset"))

	// Config validation would refuse this name; the kernel refuses set
	// names over 255 bytes.
	long := testDoor{
		gate:   plan.Door{Name: strings.Repeat("x", 300), Open: []config.Port{tcp(80)}, MaxGrants: 16},
		knocks: []plan.Knock{knockOf(tcp(1234), "knock 1 of 1", plan.WatchNone, time.Second)},
	}
	_, err := f.Install(planOf("nftknock", sshDoor(), adminDoor(), long))
	if err == nil {
		t.Fatal("Install with a 303-byte set name succeeded")
	}
	if !strings.Contains(err.Error(), `install table inet nftknock`) {
		t.Errorf("error lacks context: %v", err)
	}
	t.Logf("rejected as expected: %v", err)
	if after := stripExpires(ns.nft(t, "list", "ruleset")); after != before {
		t.Fatalf("ruleset changed by a failed Install:\n%s\nwas:\n%s", after, before)
	}
	// The Firewall still works.
	if err := f.Grant("admin", mustAddr("192.0.2.2"), time.Minute); err == nil {
		t.Error("Grant to a door of the failed plan succeeded")
	}
	grant(t, f, "ssh", "192.0.2.2", time.Minute)
	if gs, err := f.Grants(); err != nil || len(gs) != 2 {
		t.Errorf("Grants() = %v, %v; want 2", gs, err)
	}
	install(t, f, sharedPlan("nftknock"))
	mustGrantOf(t, f, "ssh", "192.0.2.1")
}

// TestKernelLargePlan: a hundred doors, two thousand rules, in one batch:
// the send buffer (socketBuffer) holds it, and BatchBytes says what it
// takes.
func TestKernelLargePlan(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	var doors []testDoor
	for i := range 100 {
		doors = append(doors, testDoor{
			gate: plan.Door{Name: fmt.Sprintf("door%d", i), Open: []config.Port{tcp(uint16(2000 + i))}, MaxGrants: 1024},
			knocks: []plan.Knock{
				knockOf(tcp(uint16(10000+3*i)), "knock 1 of 3", plan.WatchFirst, time.Minute),
				knockOf(udp(uint16(10001+3*i)), "knock 2 of 3", plan.WatchNext, time.Minute),
				knockOf(tcp(uint16(10002+3*i)), "knock 3 of 3", plan.WatchNone, time.Minute),
			},
		})
	}
	p := planOf("nftknock", doors...)
	n, err := BatchBytes(p)
	if err != nil || n <= 0 || n > MaxBatch {
		t.Fatalf("BatchBytes = %d, %v", n, err)
	}
	t.Logf("a hundred doors' plan: %d bytes in one batch", n)
	// Fresh: loopback, 4 scan rules, and per door 20: 1 established, 2
	// accepts, 1 drop; per knock 2 rate limits, 1 log, 1 drop, and 2
	// knocking-set updates on all but the last step. 200 door sets.
	install(t, f, p)
	grant(t, f, "door42", "192.0.2.1", time.Minute)
	install(t, f, p) // replace: the deletions too
	if got := strings.Count(ns.nft(t, "list", "chain", "inet", "nftknock", "input"), "comment"); got != 2005 {
		t.Errorf("%d rules, want 2005", got)
	}
	mustGrantOf(t, f, "door42", "192.0.2.1")
}

// TestBatchBytesRefusesHuge: a plan far beyond the send buffer is refused
// before anything is sent, with its size in the message.
func TestBatchBytesRefusesHuge(t *testing.T) {
	var doors []testDoor
	for i := range 200 {
		d := testDoor{gate: plan.Door{Name: fmt.Sprintf("d%d", i), MaxGrants: 16}}
		for j := range 64 {
			d.gate.Open = append(d.gate.Open, tcp(uint16(1+64*i+j)))
		}
		for j := range 32 {
			d.knocks = append(d.knocks, knockOf(udp(uint16(20000+32*i+j)), "knock", plan.WatchNext, time.Second))
		}
		doors = append(doors, d)
	}
	p := planOf("nftknock", doors...)
	n, err := BatchBytes(p)
	if err != nil {
		t.Fatal(err)
	}
	if n <= MaxBatch {
		t.Fatalf("BatchBytes = %d, want more than MaxBatch %d", n, MaxBatch)
	}
	f := &Firewall{table: &nftables.Table{Name: "nftknock", Family: nftables.TableFamilyINet}}
	batch, err := f.installBatch(p, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.sendBatch(batch); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("sendBatch of %d bytes: %v", n, err)
	}
}

// The tests below pin the kernel facts the package is built on, with the
// library alone, so that a kernel that behaves differently shows here
// first.

// kernelSet installs the default plan as table inet t in a scratch
// namespace; the tests use the Firewall's lasting connection directly.
func kernelSet(t *testing.T) *Firewall {
	t.Helper()
	ns := newNetns(t)
	f := ns.open(t, "t")
	install(t, f, defaultPlan("t"))
	return f
}

// elem is a one-element list for the library's set calls.
func elem(addr string, timeout time.Duration) []nftables.SetElement {
	return []nftables.SetElement{{Key: mustAddr(addr).AsSlice(), Timeout: timeout}}
}

func ssh4(f *Firewall) *nftables.Set {
	return &nftables.Set{Table: f.table, Name: "ssh_v4", HasTimeout: true}
}

// TestKernelReaddDoesNotRefresh: adding an element that is already there,
// with the same timeout and no expiration, succeeds and leaves its expiry
// alone. (Since Linux 6.12 an add with an expiration does update it: the
// update mode.)
func TestKernelReaddDoesNotRefresh(t *testing.T) {
	t.Parallel()
	f := kernelSet(t)
	c, err := f.c()
	if err != nil {
		t.Fatal(err)
	}
	add := func() {
		t.Helper()
		if err := c.SetAddElements(ssh4(f), elem("192.0.2.1", 5*time.Second)); err != nil {
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
	f := kernelSet(t)
	c, err := f.c()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetAddElements(ssh4(f), elem("192.0.2.1", time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	if err := c.SetDeleteElements(ssh4(f), elem("192.0.2.1", 0)); err != nil {
		t.Fatal(err)
	}
	if err := c.SetAddElements(ssh4(f), elem("192.0.2.2", time.Minute)); err != nil {
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

// TestKernelLastingConnAfterFailedBatch: on this kernel the abort path
// acks every message of a failed batch, one ack per message as Flush
// reads them, so a lasting connection stays in step: every query after a
// failed batch gets its own reply. (Firewall drops its connection after
// any error anyway.)
func TestKernelLastingConnAfterFailedBatch(t *testing.T) {
	t.Parallel()
	f := kernelSet(t)
	c, err := f.c()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		// A batch of many messages whose failing one sits in the middle.
		for j := range 20 {
			if err := c.SetAddElements(ssh4(f), elem(fmt.Sprintf("198.51.100.%d", j), time.Minute)); err != nil {
				t.Fatal(err)
			}
			if j == 10 {
				if err := c.SetDeleteElements(ssh4(f), elem("203.0.113.1", 0)); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := c.Flush(); !errors.Is(err, unix.ENOENT) {
			t.Fatalf("batch %d: %v, want ENOENT", i, err)
		}
		tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
		if err != nil || len(tables) != 1 || tables[0].Name != "t" {
			t.Fatalf("after failed batch %d: tables %v, %v", i, tables, err)
		}
		sets, err := c.GetSets(f.table)
		if err != nil || len(sets) == 0 {
			t.Fatalf("after failed batch %d: sets %v, %v", i, sets, err)
		}
	}
}

// TestKernelGrantComment: an element's comment says who made the grant.
// `nft list set` shows it as nft writes comments, the listing loads again
// with `nft -f` (a double quote, which nft cannot escape, is written as a
// single one), Read reads it back, as it reads one added by hand, and a
// comment longer than nft allows is cut to MaxComment bytes.
func TestKernelGrantComment(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	install(t, f, defaultPlan("nftknock"))
	const by = `"alice@laptop" SHA256:d0QzrTXDc1blarwKNnyAEnUdu8bhPyYEiXiwGYkeEdY`
	long := strings.Repeat("é", MaxComment) // two bytes each
	for _, e := range []Element{
		{Key: mustAddr("192.0.2.1").AsSlice(), Timeout: time.Minute, Comment: by},
		{Key: mustAddr("192.0.2.2").AsSlice(), Timeout: time.Minute, Comment: long},
	} {
		if _, first, err := f.Put("ssh_v4", []Element{e}); err != nil || first != nil {
			t.Fatal(err, first)
		}
	}
	ns.nft(t, "add", "element", "inet", "nftknock", "ssh_v4", `{ 192.0.2.3 timeout 1m comment "by hand" }`)

	listing := ns.nft(t, "list", "set", "inet", "nftknock", "ssh_v4")
	if want := `192.0.2.1 timeout 1m expires`; !strings.Contains(listing, want) {
		t.Errorf("listing lacks %q:\n%s", want, listing)
	}
	if want := `comment "'alice@laptop' SHA256:d0QzrTXDc1blarwKNnyAEnUdu8bhPyYEiXiwGYkeEdY"`; !strings.Contains(listing, want) {
		t.Errorf("listing lacks %q:\n%s", want, listing)
	}
	newNetns(t).nftInput(t, ns.nft(t, "list", "table", "inet", "nftknock"))

	els, err := f.Read("ssh_v4")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range els {
		got[mustAddrFrom(t, e.Key).String()] = e.Comment
	}
	want := map[string]string{
		"192.0.2.1": `'alice@laptop' SHA256:d0QzrTXDc1blarwKNnyAEnUdu8bhPyYEiXiwGYkeEdY`,
		"192.0.2.2": strings.Repeat("é", MaxComment/2),
		"192.0.2.3": "by hand",
	}
	for a, c := range want {
		if got[a] != c {
			t.Errorf("%s: comment %q, want %q", a, got[a], c)
		}
	}
}

func mustAddrFrom(t *testing.T, key []byte) netip.Addr {
	t.Helper()
	a, ok := netip.AddrFromSlice(key)
	if !ok {
		t.Fatalf("key %x is no address", key)
	}
	return a
}
