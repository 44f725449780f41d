package nft

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func mustGrants(t *testing.T, f *Firewall) []Grant {
	t.Helper()
	gs, err := f.Grants()
	if err != nil {
		t.Fatal(err)
	}
	return gs
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
	install(t, daemon, sharedPlan("nftknock"))
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

// TestKernelToolAnyoneDoor: an open_to = "anyone" door's set holds the
// family, which the tool reads back as the family's unspecified address.
func TestKernelToolAnyoneDoor(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	d := sshDoor()
	d.gate.Anyone = true
	install(t, ns.open(t, "nftknock"), planOf("nftknock", d))
	tool := ns.open(t, "nftknock")
	grant(t, tool, "ssh", "192.0.2.7", time.Minute)
	if !tool.AnyoneDoor("ssh") {
		t.Error("AnyoneDoor(ssh) = false")
	}
	gs := mustGrants(t, tool)
	if len(gs) != 1 || gs[0].Addr != mustAddr("0.0.0.0") {
		t.Errorf("Grants() = %+v, want the IPv4 family", gs)
	}
	if got := ns.nft(t, "list", "set", "inet", "nftknock", "ssh_anyone"); !strings.Contains(got, "elements = { ipv4 timeout 1m") {
		t.Errorf("ssh_anyone:\n%s", got)
	}
}
