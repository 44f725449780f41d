package nft

import (
	"strings"
	"testing"
	"time"
)

func TestOwnerSupported(t *testing.T) {
	for release, want := range map[string]bool{"6.1.0-28-amd64": false, "6.8.12": false, "6.9.0": true, "6.18.44-fc-v1045": true, "7.0": true, "junk": false} {
		if got := ownerSupported(release); got != want {
			t.Errorf("ownerSupported(%q) = %v, want %v", release, got, want)
		}
	}
}

// TestKernelOwnedTable: a table the daemon owns is passed by `nft flush
// ruleset` with its grants, cannot be changed or deleted by anyone else,
// stays when its owner's socket closes (a killed daemon) and is claimed
// again by the next Firewall, and after a socket dropped on an error.
func TestKernelOwnedTable(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	if !ownerSupported(kernelRelease()) {
		t.Fatalf("kernel %s has no NFT_TABLE_F_PERSIST: the test needs 6.9 or later", kernelRelease())
	}
	ns.nftInput(t, "add table inet other\n")
	f := ns.open(t, "nftknock")
	if !f.Own() {
		t.Fatal("Own refused on this kernel")
	}
	install(t, f, defaultPlan("nftknock"))
	grant(t, f, "ssh", "192.0.2.1", time.Minute)
	if got := ns.nft(t, "list", "table", "inet", "nftknock"); !strings.Contains(got, "flags owner") {
		t.Fatalf("table not owned:\n%s", got)
	}

	ns.nft(t, "flush", "ruleset")
	if got := ns.nft(t, "list", "tables"); strings.TrimSpace(got) != "table inet nftknock" {
		t.Errorf("tables after nft flush ruleset:\n%s", got)
	}
	if ok, err := f.Intact(defaultPlan("nftknock")); err != nil || !ok {
		t.Errorf("Intact after flush ruleset: %v, %v", ok, err)
	}
	mustGrantOf(t, f, "ssh", "192.0.2.1")

	for _, edit := range [][]string{
		{"delete", "table", "inet", "nftknock"},
		{"flush", "table", "inet", "nftknock"},
		{"add", "element", "inet", "nftknock", "ssh_v4", "{ 192.0.2.9 }"},
		{"flush", "set", "inet", "nftknock", "ssh_v4"},
		{"add", "rule", "inet", "nftknock", "input", "accept"},
	} {
		if out, err := ns.tryNft(edit...); err == nil || !strings.Contains(out+err.Error(), "Operation not permitted") {
			t.Errorf("nft %s by another process: %v\n%s", strings.Join(edit, " "), err, out)
		}
	}
	// Another Firewall (the tool's) may read, not write.
	tool := ns.open(t, "nftknock")
	if _, ok := grantOf(t, tool, "ssh", "192.0.2.1"); !ok {
		t.Error("the tool cannot read the owned table's grant")
	}
	err := tool.Grant("ssh", mustAddr("192.0.2.2"), time.Minute)
	if err == nil || !strings.Contains(err.Error(), "owned by a running nftknockd") {
		t.Errorf("tool Grant on an owned table: %v", err)
	}
	if err := tool.Remove(); err == nil || !strings.Contains(err.Error(), "stop it first") {
		t.Errorf("tool Remove of an owned table: %v", err)
	}

	// A socket dropped after an error: the table is claimed on a new one
	// at once (the failed batch is a grant to a set that does not exist).
	if refused, _, err := f.Put("nope_v4", []Element{{Key: mustAddr("192.0.2.3").AsSlice(), Timeout: time.Minute}}); err == nil && len(refused) == 0 {
		t.Fatal("Put to a set that does not exist succeeded")
	}
	if got := ns.nft(t, "list", "table", "inet", "nftknock"); !strings.Contains(got, "flags owner") {
		t.Errorf("table not owned after the socket was dropped:\n%s", got)
	}
	ns.nft(t, "flush", "ruleset")
	mustGrantOf(t, f, "ssh", "192.0.2.1")

	// The owner goes (a killed daemon): the table stays, unowned; the
	// next daemon's Install claims it with the grants kept.
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := ns.nft(t, "list", "table", "inet", "nftknock"); strings.Contains(got, "flags owner") || !strings.Contains(got, "192.0.2.1") {
		t.Errorf("after the owner closed, want the table unowned with its grant:\n%s", got)
	}
	f2 := ns.open(t, "nftknock")
	f2.Own()
	if kept := install(t, f2, defaultPlan("nftknock")); !kept["ssh_v4"] {
		t.Errorf("kept %v, want the grant set", kept)
	}
	if got := ns.nft(t, "list", "table", "inet", "nftknock"); !strings.Contains(got, "flags owner") {
		t.Errorf("not claimed by the next Install:\n%s", got)
	}
	mustGrantOf(t, f2, "ssh", "192.0.2.1")
	// Its owner removes it.
	if err := f2.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := ns.tryNft("list", "table", "inet", "nftknock"); err == nil {
		t.Error("table still there after its owner's Remove")
	}
}

// TestKernelTakeOver: a table made without the persist flag (by an older
// nftknockd, or one that did not own it), which the kernel lets no one
// claim, is replaced by an owned one in one batch, its grants carried
// over with the time they had left; one an owner made keeps its persist
// flag through a Firewall that does not own it, and is claimed in place.
func TestKernelTakeOver(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	ns.nftInput(t, "add table inet nftknock\nadd set inet nftknock ssh_v4 { type ipv4_addr; flags timeout; }\nadd element inet nftknock ssh_v4 { 192.0.2.1 timeout 1m comment \"nftknock grant\" }\n")
	f := ns.open(t, "nftknock")
	f.Own()
	install(t, f, defaultPlan("nftknock"))
	if got := ns.nft(t, "list", "table", "inet", "nftknock"); !strings.Contains(got, "flags owner") {
		t.Fatalf("not owned after the take-over:\n%s", got)
	}
	g := mustGrantOf(t, f, "ssh", "192.0.2.1")
	if g.Timeout != time.Minute || g.Expires > time.Minute || g.Expires < 50*time.Second || g.Comment != "nftknock grant" {
		t.Errorf("grant carried over: %+v", g)
	}
	ns.nft(t, "flush", "ruleset")
	mustGrantOf(t, f, "ssh", "192.0.2.1")
	if err := f.Remove(); err != nil {
		t.Fatal(err)
	}

	// Made by an owner, then installed by a Firewall that does not own
	// it (own_table = false after a restart): it keeps the persist flag,
	// and an owner claims it in place again.
	first := ns.open(t, "nftknock")
	first.Own()
	install(t, first, defaultPlan("nftknock"))
	first.Close()
	plain := ns.open(t, "nftknock")
	install(t, plain, defaultPlan("nftknock"))
	grant(t, plain, "ssh", "192.0.2.2", time.Minute)
	c, err := plain.c()
	if err != nil {
		t.Fatal(err)
	}
	if _, flags, err := plain.tableFlagsNow(c); err != nil || flags != tableFlagPersist {
		t.Errorf("the table a Firewall that does not own it installed over an owner's has flags %#x (%v), want persist alone", flags, err)
	}
	plain.Close()
	owner := ns.open(t, "nftknock")
	owner.Own()
	install(t, owner, defaultPlan("nftknock"))
	if got := ns.nft(t, "list", "table", "inet", "nftknock"); !strings.Contains(got, "flags owner") || !strings.Contains(got, "192.0.2.2") {
		t.Errorf("after claiming the table again:\n%s", got)
	}
}
