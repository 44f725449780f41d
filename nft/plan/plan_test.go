package plan

import (
	"encoding/hex"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables/expr"

	"github.com/nftknock/nftknock/config"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func tcp(n uint16) config.Port { return config.Port{Num: n, Proto: config.TCP} }

// TestBuildersGolden pins the bytecode of each expression builder, byte
// for byte (the netlink form of each expression), as Tailscale's
// util/linuxfw does per rule builder: the builders emit exactly what nft
// emits for the same rule text, so that `nft list ruleset` folds it back
// into nft's own syntax, and a change to any of them shows here.
func TestBuildersGolden(t *testing.T) {
	ids := map[string]uint32{rateV4: 7, rateV6: 8}
	var got strings.Builder
	for _, b := range []struct {
		name  string
		exprs []expr.Any
	}{
		{"tcp dport 22", MatchPort(tcp(22))},
		{"udp dport 60000-61000", MatchPort(config.Port{Num: 60000, Last: 61000, Proto: config.UDP})},
		{"icmp echo of 64 bytes (IPv4)", MatchStep(config.Port{Num: 64, Proto: config.ICMP}, false)},
		{"icmpv6 echo of 64 bytes", MatchStep(config.Port{Num: 64, Proto: config.ICMP}, true)},
		{`iifname "eth0" tcp flags syn / syn,ack`, DoorMatch("eth0", config.DefaultTCPFlags, config.TCP)},
		{"udp: no flags", DoorMatch("", config.DefaultTCPFlags, config.UDP)},
		{"ip saddr @ssh_v4", MatchSaddrInSet("ssh_v4", 1, false)},
		{"ip6 saddr @ssh_v6", MatchSaddrInSet("ssh_v6", 2, true)},
		{"ct state established,related", ctEstablished()},
		{"add @knock_rate_v4 { ip saddr limit rate over 10/second burst 20 packets } counter drop", overRate(nil, false, ids)},
		{"tcp dport @rot_first", matchPortInSet(config.TCP, "rot_first", 3)},
		{"meta l4proto tcp ct status dnat ct original proto-dst 8443", target{kind: targetDNAT, port: tcp(8443)}.match()},
		{"meta l4proto udp ct status dnat ct original proto-dst 60000-61000", target{kind: targetDNAT, port: config.Port{Num: 60000, Last: 61000, Proto: config.UDP}}.match()},
		{"ct original ip daddr 203.0.113.5 meta l4proto tcp ct original proto-dst 2222", target{kind: targetOriginal, port: tcp(2222), addr: netip.MustParseAddr("203.0.113.5")}.match()},
		{"ct original ip6 daddr 2001:db8::5", CtOriginalDaddr(netip.MustParseAddr("2001:db8::5"))},
		{"ip daddr 192.168.1.10 tcp dport 22", target{kind: targetPacket, port: tcp(22), addr: netip.MustParseAddr("192.168.1.10")}.match()},
		{"ip6 daddr 2001:db8:1::10 tcp dport 22", target{kind: targetPacket, port: tcp(22), addr: netip.MustParseAddr("2001:db8:1::10")}.match()},
		{"(after ip daddr) ip saddr", target{kind: targetPacket, port: tcp(22), addr: netip.MustParseAddr("192.168.1.10")}.saddr(false)},
	} {
		fmt.Fprintf(&got, "# %s\n", b.name)
		for _, e := range b.exprs {
			data, err := MarshalExpr(byte(0), e)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&got, "%T %s\n", e, hex.EncodeToString(data))
		}
		got.WriteString("\n")
	}
	const path = "testdata/builders.golden"
	if *update {
		if err := os.WriteFile(path, []byte(got.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./nft/plan -update to create it)", err)
	}
	if got.String() != string(want) {
		t.Errorf("the builders' bytecode changed (if intended, rerun with -update and review the diff):\n got:\n%s\nwant:\n%s", got.String(), want)
	}
}

func sshKnocks() []Knock {
	return []Knock{
		{Step: tcp(7000), Label: "knock 1 of 3", Watch: WatchFirst, SeqTimeout: 10 * time.Second},
		{Step: config.Port{Num: 8000, Proto: config.UDP}, Label: "knock 2 of 3", Watch: WatchNext, SeqTimeout: 10 * time.Second},
		{Step: tcp(9000), Label: "knock 3 of 3", Watch: WatchNone, SeqTimeout: 10 * time.Second},
	}
}

func build(doors ...Door) *Plan {
	b := NewBuilder("nftknock", 7113, func(d string) string { return d + "/1" })
	for _, d := range doors {
		b.Door(d)
		for _, k := range sshKnocks() {
			b.Knock(d.Name, k)
		}
	}
	return b.Build()
}

func TestCommentsAreClipped(t *testing.T) {
	p := build(Door{Name: strings.Repeat("d", 200), Open: []config.Port{tcp(22)}, MaxGrants: 16})
	for _, r := range p.Chains[0].Rules {
		if len(r.Comment) > maxComment {
			t.Errorf("rule comment of %d bytes", len(r.Comment))
		}
	}
	for _, s := range p.Sets {
		if s.Door == "" {
			continue // table-wide sets do not name a door
		}
		if len(s.Comment) > maxComment || !strings.HasSuffix(s.Comment, "...") {
			t.Errorf("set comment %q", s.Comment)
		}
	}
	if got := clip("short"); got != "short" {
		t.Errorf("clip(short) = %q", got)
	}
}

// TestOpenedPortsDeduplicated: a door that lists a port twice gets one pair
// of set rules for it.
func TestOpenedPortsDeduplicated(t *testing.T) {
	want := len(build(Door{Name: "ssh", Open: []config.Port{tcp(22)}, MaxGrants: 16}).Chains[0].Rules)
	if got := len(build(Door{Name: "ssh", Open: []config.Port{tcp(22), tcp(22)}, MaxGrants: 16}).Chains[0].Rules); got != want {
		t.Errorf("%d rules, want %d as for one 22", got, want)
	}
}

// TestSharedKnockStepsOnce: two doors with the same knock step share its
// rate limit and its drop; each logs it under its own prefix.
func TestSharedKnockStepsOnce(t *testing.T) {
	p := build(Door{Name: "a", Open: []config.Port{tcp(22)}, MaxGrants: 16}, Door{Name: "b", Open: []config.Port{tcp(23)}, MaxGrants: 16})
	var drops, logs []string
	for _, r := range p.Chains[0].Rules {
		switch {
		case r.Comment == "knock 7000:tcp: filtered, like any closed port":
			drops = append(drops, r.Comment)
		case strings.HasSuffix(r.Comment, ": knock 1 of 3"):
			logs = append(logs, r.Comment)
		}
	}
	if len(drops) != 1 || strings.Join(logs, "|") != "door a: knock 1 of 3|door b: knock 1 of 3" {
		t.Errorf("drops %v, logs %v", drops, logs)
	}
	// The grant sets carry max_grants as their size.
	for _, s := range p.Sets {
		if s.Role == RoleGrant && s.Size != 16 {
			t.Errorf("set %s of size %d", s.Name, s.Size)
		}
	}
}
