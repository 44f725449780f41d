package nft

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Kernel tests of self-healing (heal.go), the tool's view of a table it did
// not install (doors.go), and the golden restore batch.

// TestKernelHealAfterFlushRuleset: `nft flush ruleset` takes the table
// away; Heal puts it back with every live grant and its time left, not a
// fresh timeout.
func TestKernelHealAfterFlushRuleset(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	cfg := sharedConfig()
	install(t, f, cfg)
	grant(t, f, "ssh", "192.0.2.1", 20*time.Second)
	grant(t, f, "ssh", "2001:db8::1", 20*time.Second)
	grant(t, f, "admin", "192.0.2.7", time.Hour)
	want := stripExpires(ns.nft(t, "list", "table", "inet", "nftknock"))
	time.Sleep(1500 * time.Millisecond)
	before := map[string]Grant{}
	for _, g := range mustGrants(t, f) {
		before[g.Door+" "+g.Addr.String()] = g
	}

	if ok, err := f.Intact(); err != nil || !ok {
		t.Fatalf("Intact() before the flush = %v, %v", ok, err)
	}
	ns.nft(t, "flush", "ruleset")
	if ok, err := f.Intact(); err != nil || ok {
		t.Fatalf("Intact() after the flush = %v, %v; want false, nil", ok, err)
	}
	healed, restored, err := f.Heal(cfg)
	if err != nil || !healed || restored != 3 {
		t.Fatalf("Heal() = %v, %d, %v; want true, 3, nil", healed, restored, err)
	}
	if got := stripExpires(ns.nft(t, "list", "table", "inet", "nftknock")); trimLines(got) != trimLines(want) {
		t.Errorf("table after Heal differs from before the flush:\n%s", firstDiff(trimLines(want), trimLines(got)))
	}
	after := mustGrants(t, f)
	if len(after) != 3 {
		t.Fatalf("after Heal: %v; want the 3 grants", after)
	}
	for _, g := range after {
		b := before[g.Door+" "+g.Addr.String()]
		if g.Timeout != b.Timeout || g.Expires > b.Expires || g.Expires <= b.Expires-time.Second {
			t.Errorf("%s %s: %v left of %v after Heal; had %v left of %v: want the same timeout and no more time left, but not much less",
				g.Door, g.Addr, g.Expires, g.Timeout, b.Expires, b.Timeout)
		}
	}

	// Intact again: a second Heal does nothing.
	if healed, _, err := f.Heal(cfg); err != nil || healed {
		t.Errorf("Heal() on an intact table = %v, %v", healed, err)
	}
	// The mirror still knows the grants: a repeat knock refreshes.
	grant(t, f, "ssh", "192.0.2.1", 20*time.Second)
	if g := mustGrantOf(t, f, "ssh", "192.0.2.1"); g.Expires <= before["ssh 192.0.2.1"].Expires {
		t.Errorf("grant after Heal did not restart the timer: %+v", g)
	}
}

func sortedLines(s string) string {
	lines := strings.Split(trimLines(s), "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func mustGrants(t *testing.T, f *Firewall) []Grant {
	t.Helper()
	gs, err := f.Grants()
	if err != nil {
		t.Fatal(err)
	}
	return gs
}

// TestKernelHealPartial: a deleted table, a flushed chain, a rule added by
// hand, and grants that expired while the table was gone.
func TestKernelHealPartial(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	cfg := defaultConfig()
	install(t, f, cfg)
	want := ns.nft(t, "list", "table", "inet", "nftknock")

	for _, tc := range []struct {
		name   string
		break_ string
	}{
		{"delete table", "delete table inet nftknock"},
		{"flush chain", "flush chain inet nftknock input"},
		{"rule added", "insert rule inet nftknock input tcp dport 22 accept"},
		{"chain and set deleted", "flush chain inet nftknock input\ndelete chain inet nftknock input\ndelete set inet nftknock ssh_v6"},
	} {
		ns.nftInput(t, tc.break_+"\n")
		if ok, err := f.Intact(); err != nil || ok {
			t.Errorf("%s: Intact() = %v, %v; want false", tc.name, ok, err)
			continue
		}
		if healed, _, err := f.Heal(cfg); err != nil || !healed {
			t.Errorf("%s: Heal() = %v, %v", tc.name, healed, err)
		}
		// A set made anew comes after the others: compare the lines.
		if got := ns.nft(t, "list", "table", "inet", "nftknock"); sortedLines(got) != sortedLines(want) {
			t.Errorf("%s: table after Heal:\n%s", tc.name, firstDiff(sortedLines(want), sortedLines(got)))
		}
		if ok, err := f.Intact(); err != nil || !ok {
			t.Errorf("%s: Intact() after Heal = %v, %v", tc.name, ok, err)
		}
	}

	// A grant that ran out while the table was away is not restored; an
	// element without timeout (added by hand) comes back as it was.
	grant(t, f, "ssh", "192.0.2.1", 300*time.Millisecond)
	grant(t, f, "ssh", "192.0.2.2", time.Minute)
	ns.nft(t, "add", "element", "inet", "nftknock", "ssh_v4", "{ 192.0.2.3 }")
	if err := f.Resync(); err != nil {
		t.Fatal(err)
	}
	ns.nft(t, "delete", "table", "inet", "nftknock")
	time.Sleep(400 * time.Millisecond)
	if healed, restored, err := f.Heal(cfg); err != nil || !healed || restored != 2 {
		t.Fatalf("Heal() = %v, %d, %v; want true, 2 restored", healed, restored, err)
	}
	set := ns.nft(t, "list", "set", "inet", "nftknock", "ssh_v4")
	if strings.Contains(set, "192.0.2.1") {
		t.Errorf("an expired grant came back:\n%s", set)
	}
	if !strings.Contains(set, "192.0.2.2 timeout 1m expires") || !regexpMatch(`192\.0\.2\.3[ ,\n}]`, set) || strings.Contains(set, "192.0.2.3 timeout") {
		t.Errorf("want 192.0.2.2 with its timeout and 192.0.2.3 without:\n%s", set)
	}
}

// TestKernelResync: elements someone else adds or deletes reach the
// mirror, so a knock refreshes them and a heal restores them.
func TestKernelResync(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	cfg := defaultConfig()
	install(t, f, cfg)
	grant(t, f, "ssh", "192.0.2.1", time.Minute)

	// As `nftknock grant` would: another Firewall, never installed.
	tool := ns.open(t, "nftknock")
	if err := tool.Grant("ssh", mustAddr("192.0.2.9"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := tool.Revoke("ssh", mustAddr("192.0.2.1")); err != nil {
		t.Fatal(err)
	}
	if err := f.Resync(); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.mirror[grantKey{"ssh", mustAddr("192.0.2.1")}]; ok {
		t.Error("mirror still holds a revoked grant after Resync")
	}
	if f.timeouts[grantKey{"ssh", mustAddr("192.0.2.9")}] != time.Hour {
		t.Errorf("mirror lacks the tool's grant: %v / %v", f.mirror, f.timeouts)
	}

	// A knock of a shorter open_for leaves the longer grant alone.
	grant(t, f, "ssh", "192.0.2.9", time.Minute)
	if g := mustGrantOf(t, f, "ssh", "192.0.2.9"); g.Timeout != time.Hour || g.Expires < 59*time.Minute {
		t.Errorf("a knock shortened the tool's 1h grant: %+v", g)
	}

	ns.nft(t, "flush", "ruleset")
	if healed, restored, err := f.Heal(cfg); err != nil || !healed || restored != 1 {
		t.Fatalf("Heal() = %v, %d, %v; want the tool's grant restored", healed, restored, err)
	}
	if g := mustGrantOf(t, f, "ssh", "192.0.2.9"); g.Timeout != time.Hour || g.Expires < 59*time.Minute {
		t.Errorf("tool's grant after Heal: %+v", g)
	}
}

// TestKernelToolFirewall: a Firewall that never ran Install finds the
// doors in the kernel, grants, refreshes, revokes, lists, and refuses a
// door the table has no sets for.
func TestKernelToolFirewall(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	tool := ns.open(t, "nftknock")
	if ok, err := tool.Installed(); err != nil || ok {
		t.Fatalf("Installed() before Install = %v, %v", ok, err)
	}
	if _, err := tool.Doors(); !errors.Is(err, ErrNotInstalled) {
		t.Errorf("Doors() without the table: %v; want ErrNotInstalled", err)
	}
	if _, err := tool.Grants(); !errors.Is(err, ErrNotInstalled) {
		t.Errorf("Grants() without the table: %v; want ErrNotInstalled", err)
	}
	if err := tool.Grant("ssh", mustAddr("192.0.2.1"), time.Minute); !errors.Is(err, ErrNotInstalled) {
		t.Errorf("Grant() without the table: %v; want ErrNotInstalled", err)
	}

	daemon := ns.open(t, "nftknock")
	install(t, daemon, sharedConfig())
	// Sets that are not door sets: another name pattern, a lone _v4 set,
	// a _v4/_v6 pair of the wrong shape.
	ns.nftInput(t, `
add set inet nftknock lone_v4 { type ipv4_addr; flags timeout; }
add set inet nftknock odd_v4 { type ipv4_addr; }
add set inet nftknock odd_v6 { type ipv6_addr; }
add set inet nftknock other { type ipv4_addr; flags timeout; }
`)
	if doors, err := tool.Doors(); err != nil || !slices.Equal(doors, []string{"ssh", "admin"}) {
		t.Fatalf("Doors() = %v, %v; want [ssh admin]", doors, err)
	}

	if err := tool.Grant("ssh", mustAddr("::ffff:192.0.2.1"), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := tool.Grant("admin", mustAddr("2001:db8::1"), time.Minute); err != nil {
		t.Fatal(err)
	}
	// Again with a longer time: the tool has no mirror, yet it must
	// refresh the element, not leave it.
	if err := tool.Grant("ssh", mustAddr("192.0.2.1"), time.Hour); err != nil {
		t.Fatal(err)
	}
	gs := mustGrants(t, tool)
	if len(gs) != 2 || gs[0].Door != "ssh" || gs[0].Addr != mustAddr("192.0.2.1") || gs[0].Timeout != time.Hour || gs[0].Expires < 59*time.Minute ||
		gs[1].Door != "admin" || gs[1].Addr != mustAddr("2001:db8::1") || gs[1].Timeout != time.Minute {
		t.Errorf("Grants() = %+v", gs)
	}

	err := tool.Grant("lone", mustAddr("192.0.2.1"), time.Minute)
	if err == nil || !strings.Contains(err.Error(), `door "lone" has no sets in table inet nftknock; doors that do: ssh, admin`) {
		t.Errorf("Grant to a door without sets: %v", err)
	}
	if err := tool.Revoke("odd", mustAddr("192.0.2.1")); err == nil {
		t.Error("Revoke from a misshapen door succeeded")
	}

	if err := tool.Revoke("ssh", mustAddr("192.0.2.1")); err != nil {
		t.Fatal(err)
	}
	if err := tool.Revoke("ssh", mustAddr("192.0.2.1")); err != nil {
		t.Errorf("second Revoke: %v", err)
	}
	if gs := mustGrants(t, tool); len(gs) != 1 || gs[0].Door != "admin" {
		t.Errorf("Grants() after Revoke = %+v", gs)
	}
}

// TestGoldenRestore pins the batch of an Install that restores grants: the
// ruleset as v0.3.0 builds it, then one NEWSETELEM per set with each
// element's timeout and expiration, all in one batch.
func TestGoldenRestore(t *testing.T) {
	k := &fakeKernel{table: "nftknock"}
	f, err := Open("nftknock", nftables.WithTestDial(k.dial))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Install(defaultConfig()); err != nil {
		t.Fatal(err)
	}
	frozen := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	f.now = func() time.Time { return frozen }
	for _, a := range []string{"192.0.2.2", "192.0.2.1", "2001:db8::1"} {
		if err := f.Grant("ssh", mustAddr(a), 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	// 12.3456 s later the fake kernel, which holds no sets, stands for a
	// table that someone deleted.
	frozen = frozen.Add(12345600 * time.Microsecond)
	k.sent = nil
	if err := f.Install(defaultConfig()); err != nil {
		t.Fatal(err)
	}
	if f.restored != 3 {
		t.Errorf("restored %d grants, want 3", f.restored)
	}
	var batch []netlink.Message
	for _, m := range k.sent {
		if m.Header.Type&0xff00 == unix.NFNL_SUBSYS_NFTABLES<<8 && m.Header.Type&0xff <= unix.NFT_MSG_GETGEN &&
			(m.Header.Type&0xff)%3 == 1 { // GET*: the queries before the batch
			continue
		}
		batch = append(batch, m)
	}
	// The golden file holds the messages this package writes itself;
	// the ruleset between is TestGoldenInstall's.
	var own []netlink.Message
	for _, m := range batch {
		if m.Header.Type == nftMsg(unix.NFT_MSG_NEWSETELEM) || m.Header.Type>>8 == 0 {
			own = append(own, m)
		}
	}
	got := renderMessages(own)
	path := filepath.Join("testdata", "restore.golden")
	if want := golden(t, path, got); got != want {
		t.Errorf("restoring Install sent other messages than %s:\n%s", path, firstDiff(want, got))
	}
	// One batch: begin, the ruleset, then the elements, then end.
	if len(batch) < 3 || batch[0].Header.Type != netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN) ||
		batch[len(batch)-1].Header.Type != netlink.HeaderType(unix.NFNL_MSG_BATCH_END) {
		t.Fatalf("not one batch:\n%s", renderMessages(batch))
	}
	var exps []uint64
	for _, m := range batch[:len(batch)-1] {
		if m.Header.Type != nftMsg(unix.NFT_MSG_NEWSETELEM) {
			if exps != nil {
				t.Errorf("%s after the elements", msgName(m.Header.Type))
			}
			continue
		}
		exps = append(exps, elemAttrs(t, m, unix.NFTA_SET_ELEM_EXPIRATION)...)
	}
	// 30 s - 12.3456 s, rounded down to the millisecond, for all three.
	if !slices.Equal(exps, []uint64{17654, 17654, 17654}) {
		t.Errorf("expirations sent: %v; want 17654 ms for each of 3 elements", exps)
	}
}

// elemAttrs collects the u64 attribute typ of every element of a
// NEWSETELEM message.
func elemAttrs(t *testing.T, m netlink.Message, typ uint16) []uint64 {
	t.Helper()
	var out []uint64
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		t.Fatal(err)
	}
	for ad.Next() {
		if ad.Type() != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			continue
		}
		ad.Nested(func(list *netlink.AttributeDecoder) error {
			for list.Next() {
				list.Nested(func(el *netlink.AttributeDecoder) error {
					el.ByteOrder = binary.BigEndian
					for el.Next() {
						if el.Type() == typ {
							out = append(out, el.Uint64())
						}
					}
					return nil
				})
			}
			return nil
		})
	}
	if err := ad.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func regexpMatch(re, s string) bool {
	return regexp.MustCompile(re).MatchString(s)
}

func TestRestoreElementNeverExtends(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		exp          time.Duration // from now
		timeout      time.Duration
		ok           bool
		wantT, wantE uint64
	}{
		{10*time.Second + 999*time.Microsecond, 30 * time.Second, true, 30000, 10000},
		{30 * time.Second, 30 * time.Second, true, 30000, 30000},
		{40 * time.Second, 30 * time.Second, true, 40000, 40000}, // timeout unknown or short: the time left is the timeout
		{5 * time.Second, 0, true, 5000, 5000},
		{999 * time.Microsecond, 30 * time.Second, false, 0, 0},
		{-time.Second, 30 * time.Second, false, 0, 0},
	} {
		item, ok, err := restoreElement(netip.MustParseAddr("192.0.2.1").AsSlice(), now.Add(tc.exp), tc.timeout, now)
		if err != nil || ok != tc.ok {
			t.Errorf("%v of %v: ok = %v, %v; want %v", tc.exp, tc.timeout, ok, err, tc.ok)
			continue
		}
		if !ok {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(item)
		if err != nil {
			t.Fatal(err)
		}
		ad.ByteOrder = binary.BigEndian
		var gotT, gotE uint64
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_SET_ELEM_TIMEOUT:
				gotT = ad.Uint64()
			case unix.NFTA_SET_ELEM_EXPIRATION:
				gotE = ad.Uint64()
			}
		}
		if gotT != tc.wantT || gotE != tc.wantE {
			t.Errorf("%v of %v: timeout %d ms, expiration %d ms; want %d, %d", tc.exp, tc.timeout, gotT, gotE, tc.wantT, tc.wantE)
		}
	}
}

// TestKernelHealAnyone: the grant of an open_to = "anyone" door (the
// family as the element) comes back too.
func TestKernelHealAnyone(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	cfg := defaultConfig()
	cfg.Doors[0].OpenToAnyone = true
	install(t, f, cfg)
	// Two sources knock: one element (the family), one mirror entry.
	grant(t, f, "ssh", "192.0.2.1", 30*time.Second)
	grant(t, f, "ssh", "192.0.2.2", 30*time.Second)
	if len(f.mirror) != 1 {
		t.Errorf("mirror %v: want the one family entry", f.mirror)
	}
	ns.nft(t, "flush", "ruleset")
	if healed, restored, err := f.Heal(cfg); err != nil || !healed || restored != 1 {
		t.Fatalf("Heal() = %v, %d, %v; want the anyone grant restored", healed, restored, err)
	}
	set := ns.nft(t, "list", "set", "inet", "nftknock", AnyoneSetName("ssh"))
	if !regexp.MustCompile(`elements = \{ ipv4 timeout 30s expires (29s\d+ms|30s) \}`).MatchString(set) {
		t.Errorf("anyone set after Heal:\n%s", set)
	}
	if gs := mustGrants(t, f); len(gs) != 1 || gs[0].Addr != netip.IPv4Unspecified() || gs[0].Timeout != 30*time.Second {
		t.Errorf("Grants() = %+v", gs)
	}
}

// TestKernelReloadToAnyone: a reload that turns a door from open_to
// "source" into "anyone" must not turn one source's grant into everyone's.
func TestKernelReloadToAnyone(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	install(t, f, defaultConfig())
	grant(t, f, "ssh", "192.0.2.1", time.Minute)
	cfg := defaultConfig()
	cfg.Doors[0].OpenToAnyone = true
	install(t, f, cfg)
	if f.restored != 0 {
		t.Errorf("restored %d grants into the anyone set", f.restored)
	}
	if set := ns.nft(t, "list", "set", "inet", "nftknock", AnyoneSetName("ssh")); strings.Contains(set, "elements") {
		t.Errorf("a source's grant opened the door to everyone:\n%s", set)
	}
}
