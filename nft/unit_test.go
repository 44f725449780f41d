package nft

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/nftknock/nftknock/config"
)

func TestSetName(t *testing.T) {
	if got := SetName("ssh", false); got != "ssh_v4" {
		t.Errorf("SetName(ssh, v4) = %q", got)
	}
	if got := SetName("ssh", true); got != "ssh_v6" {
		t.Errorf("SetName(ssh, v6) = %q", got)
	}
}

func TestKnockComments(t *testing.T) {
	cfg := sharedConfig()
	cfg.Doors = append(cfg.Doors, config.Door{
		Name:     "again",
		Sequence: []config.Port{tcp(7000), tcp(5000), tcp(7000), tcp(9000), tcp(7000)},
		Open:     []config.Port{tcp(22)},
	})
	cfg.Doors[0].CloseSequence = []config.Port{tcp(5000), tcp(7000)}
	var got []string
	for _, k := range planKnocks(cfg) {
		line := k.step.String()
		for _, u := range k.uses {
			line += "; door " + u.door.Name + ": " + u.label()
		}
		got = append(got, line)
	}
	want := []string{
		"7000:tcp; door ssh: knock 1 of 3, close knock 2 of 2; door again: knocks 1, 3 and 5 of 5",
		"8000:udp; door ssh: knock 2 of 3",
		"9000:tcp; door ssh: knock 3 of 3; door admin: knock 1 of 2; door again: knock 4 of 5",
		"5000:tcp; door ssh: close knock 1 of 2; door again: knock 2 of 5",
		"7001:udp; door admin: knock 2 of 2",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("knock comments:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestCommentsAreClipped(t *testing.T) {
	cfg := defaultConfig()
	long := strings.Repeat("d", 200)
	cfg.Doors[0].Name = long
	for _, r := range planRules(cfg, planSets(cfg)) {
		if len(r.comment) > maxComment {
			t.Errorf("rule comment of %d bytes", len(r.comment))
		}
	}
	for _, s := range planSets(cfg) {
		if s.door == "" {
			continue // table-wide sets do not name a door
		}
		if len(s.comment) > maxComment || !strings.HasSuffix(s.comment, "...") {
			t.Errorf("set comment %q", s.comment)
		}
	}
	if got := clip("short"); got != "short" {
		t.Errorf("clip(short) = %q", got)
	}
}

// TestOpenedPortsDeduplicated: a door that lists a port twice gets one pair
// of set rules for it.
func TestOpenedPortsDeduplicated(t *testing.T) {
	cfg := defaultConfig()
	want := len(planRules(cfg, planSets(cfg)))
	cfg.Doors[0].Open = []config.Port{tcp(22), tcp(22)}
	if got := len(planRules(cfg, planSets(cfg))); got != want {
		t.Errorf("%d rules, want %d as for one 22", got, want)
	}
}

func TestPrune(t *testing.T) {
	k := &fakeKernel{table: "nftknock"}
	f, err := Open("nftknock", nftables.WithTestDial(k.dial))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	now := time.Now()
	f.mirror = map[grantKey]time.Time{
		{"ssh", mustAddr("192.0.2.1")}: now.Add(time.Minute),
		{"ssh", mustAddr("192.0.2.2")}: now.Add(-time.Minute),
		// Just expired by our clock, but within the slack the kernel may
		// still hold it.
		{"ssh", mustAddr("192.0.2.3")}: now.Add(-expirySlack / 2),
		{"ssh", mustAddr("192.0.2.4")}: {}, // no timeout
	}
	f.Prune(now)
	for _, a := range []string{"192.0.2.1", "192.0.2.3", "192.0.2.4"} {
		if _, ok := f.mirror[grantKey{"ssh", mustAddr(a)}]; !ok {
			t.Errorf("Prune dropped %s", a)
		}
	}
	if _, ok := f.mirror[grantKey{"ssh", mustAddr("192.0.2.2")}]; ok {
		t.Error("Prune kept an expired entry")
	}
	f.Prune(now.Add(time.Hour))
	if len(f.mirror) != 1 {
		t.Errorf("mirror after Prune an hour later: %v", f.mirror)
	}
}

func TestMisuse(t *testing.T) {
	if _, err := Open(""); err == nil {
		t.Error("Open with an empty table name succeeded")
	}
	k := &fakeKernel{table: "nftknock"}
	f, err := Open("nftknock", nftables.WithTestDial(k.dial))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Grant("ssh", mustAddr("192.0.2.1"), time.Minute); err == nil {
		t.Error("Grant before Install succeeded")
	}
	cfg := defaultConfig()
	cfg.Table = "other"
	if err := f.Install(cfg); err == nil || !strings.Contains(err.Error(), `install table "nftknock"`) {
		t.Errorf("Install of a config for another table: %v", err)
	}
	if err := f.Install(defaultConfig()); err != nil {
		t.Fatal(err)
	}
	if err := f.Grant("ssh", netip.Addr{}, time.Minute); err == nil {
		t.Error("Grant to the zero address succeeded")
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Grant("ssh", mustAddr("192.0.2.1"), time.Minute); err == nil {
		t.Error("Grant after Close succeeded")
	}
}
