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
		{"udp dport 62203 udp length 699", MatchPortAndLength(config.Port{Num: 62203, Proto: config.UDP}, 699)},
		{"icmp echo of 64 bytes (IPv4)", MatchStep(config.Port{Num: 64, Proto: config.ICMP}, false)},
		{"icmpv6 echo of 64 bytes", MatchStep(config.Port{Num: 64, Proto: config.ICMP}, true)},
		{`iifname "eth0" tcp flags syn / syn,ack`, DoorMatch("eth0", config.DefaultTCPFlags, config.TCP)},
		{"udp: no flags", DoorMatch("", config.DefaultTCPFlags, config.UDP)},
		{"ip saddr @ssh_v4", MatchSaddrInSet("ssh_v4", 1, false)},
		{"ip6 saddr @ssh_v6", MatchSaddrInSet("ssh_v6", 2, true)},
		{"ct state established,related", ctEstablished()},
		{"add @knock_rate_v4 { ip saddr limit rate over 10/second burst 20 packets } counter drop", overRate(nil, false, ids)},
		{"tcp dport @rot_first", matchPortInSet(config.TCP, "rot_first", 3)},
		{"ip saddr . meta l4proto . th dport @fw_v4", MatchSaddrPortInSet("fw_v4", 4, false)},
		{"ip6 saddr . meta l4proto . th dport @fw_v6", MatchSaddrPortInSet("fw_v6", 5, true)},
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

// TestPerPortDoor: a door that grants per port has concatenated grant
// sets, one accept rule a family that looks the address, protocol and
// port up together, and the drop of each of its ports; its elements'
// keys are laid out as the kernel's, and Grantee reads them back.
func TestPerPortDoor(t *testing.T) {
	fw := Door{Name: "fw", Open: []config.Port{tcp(22), tcp(2222)}, MaxGrants: 16, PerPort: true}
	b := NewBuilder("nftknock", 7113, func(d string) string { return d + "/1" })
	b.Door(fw)
	p := b.Build()
	var keys []string
	for _, s := range p.Sets {
		if s.Door == "fw" {
			keys = append(keys, s.Name+" "+s.Key.Name)
		}
	}
	if want := "fw_v4 ipv4_addr . inet_proto . inet_service|fw_v6 ipv6_addr . inet_proto . inet_service"; strings.Join(keys, "|") != want {
		t.Errorf("sets %q, want %q", keys, want)
	}
	var comments []string
	for _, r := range p.Chains[0].Rules {
		comments = append(comments, r.Comment)
	}
	if want := []string{
		"loopback is never gated",
		"door fw: connections already let in stay up", "door fw: connections already let in stay up",
		"door fw: each source to the ports it was granted", "door fw: each source to the ports it was granted",
		"closed to everyone else", "closed to everyone else",
	}; strings.Join(comments, "|") != strings.Join(want, "|") {
		t.Errorf("rules:\n%s\nwant:\n%s", strings.Join(comments, "\n"), strings.Join(want, "\n"))
	}

	for _, c := range []struct {
		addr string
		key  string
	}{
		{"192.0.2.2", "c0000202" + "06000000" + "00160000"},
		{"2001:db8::2", "20010db8000000000000000000000002" + "06000000" + "00160000"},
	} {
		a := netip.MustParseAddr(c.addr)
		set, key := fw.GrantSet(a, config.TCP, 22)
		if set != SetName("fw", a.Is6()) || hex.EncodeToString(key) != c.key {
			t.Errorf("GrantSet(%s, tcp, 22) = %s %x, want %s %s", a, set, key, SetName("fw", a.Is6()), c.key)
		}
		if got, proto, port, ok := fw.Grantee(key); !ok || got != a || proto != config.TCP || port != 22 {
			t.Errorf("Grantee(%x) = %s %v %d %v", key, got, proto, port, ok)
		}
	}
	if _, _, _, ok := fw.Grantee([]byte{1, 2, 3, 4}); ok {
		t.Error("Grantee took a plain address key for a per-port door's")
	}
	ssh := Door{Name: "ssh"}
	if _, key := ssh.GrantSet(netip.MustParseAddr("192.0.2.2"), config.TCP, 22); hex.EncodeToString(key) != "c0000202" {
		t.Errorf("a door of all its ports keys on the address alone: %x", key)
	}
}

// TestSharedDatagramLoggedOnce: doors that share a datagram port get one
// rate limit, one log rule (under the first door's prefix) and one drop,
// whose comments name them all.
func TestSharedDatagramLoggedOnce(t *testing.T) {
	b := NewBuilder("nftknock", 7113, func(d string) string { return d + "/1" })
	port := config.Port{Num: 62201, Proto: config.UDP}
	for _, name := range []string{"fw", "fw_2"} {
		b.Door(Door{Name: name, Open: []config.Port{tcp(22)}, MaxGrants: 16, PerPort: true})
		b.SharedDatagram(name, port, nil)
	}
	var logs, spa []string
	for _, r := range b.Build().Chains[0].Rules {
		for _, e := range r.Exprs {
			if l, ok := e.(*expr.Log); ok {
				logs = append(logs, string(l.Data))
			}
		}
		if strings.Contains(r.Comment, "62201") || strings.Contains(r.Comment, "single-packet") {
			spa = append(spa, r.Comment)
		}
	}
	if strings.Join(logs, "|") != "fw/1" {
		t.Errorf("logged under %q, want once under fw/1", logs)
	}
	if len(spa) != 4 || !strings.HasPrefix(spa[2], "doors fw, fw_2: ") {
		t.Errorf("rules of the shared port: %q", spa)
	}
	defer func() {
		if recover() == nil {
			t.Error("a door that matches the shared port's packets otherwise was taken")
		}
	}()
	b.Door(Door{Name: "fw_3", Open: []config.Port{tcp(23)}, MaxGrants: 16, PerPort: true})
	b.SharedDatagram("fw_3", port, DoorMatch("eth0", config.TCPFlags{}, config.UDP))
}
