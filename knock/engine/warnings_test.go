package engine_test

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock/engine"
	"github.com/nftknock/nftknock/nft"
)

const warnDoors = `
[[door]]
name = "panel"
sequence = ["7100:tcp", "8100:udp"]
seq_timeout = "5s"
open = ["8443:tcp", "22:tcp"]
open_for = "1h"

[[door]]
name = "fwd"
hook = "forward"
sequence = ["7200:tcp", "8200:udp"]
seq_timeout = "5s"
open = ["9443:tcp"]
open_for = "1h"
`

// TestWarningsNameDNAT: a rule that DNATs an input door's port elsewhere
// (Docker's, as iptables-nft writes it, and nft's own) is named with the
// fix; forward doors' ports are not looked up; a search that cannot read
// the ruleset says so, and why.
func TestWarningsNameDNAT(t *testing.T) {
	cfg, err := config.Parse("w.toml", []byte(warnDoors))
	if err != nil {
		t.Fatal(err)
	}
	var asked []config.Port
	docker := nft.DNAT{Family: "ip", Table: "nat", Chain: "DOCKER", Handle: 9, Port: config.Port{Num: 8443, Proto: config.TCP},
		Match: "tcp dport 8443", To: nft.NATTarget{Addr: netip.MustParseAddr("172.17.0.2"), Port: 8080}, XT: true}
	native := nft.DNAT{Family: "inet", Table: "router", Chain: "prerouting", Handle: 4, Port: config.Port{Num: 8443, Proto: config.TCP},
		Match: "tcp dport { 8443, 9000 }", To: nft.NATTarget{Addr: netip.MustParseAddr("192.168.1.10"), Port: 443}}
	ws := engine.Warnings(cfg, func(ports []config.Port) ([]nft.DNAT, error) {
		asked = ports
		return []nft.DNAT{docker, native}, nil
	})
	if want := []config.Port{{Num: 8443, Proto: config.TCP}, {Num: 22, Proto: config.TCP}}; !slices.Equal(asked, want) {
		t.Errorf("asked for %v, want %v (the input door's ports only)", asked, want)
	}
	if len(ws) != 2 {
		t.Fatalf("warnings: %q", ws)
	}
	for i, want := range []string{
		`w.toml: door "panel": open 8443:tcp: table ip nat chain DOCKER handle 9: tcp dport 8443 dnat to 172.17.0.2:8080 (an iptables DNAT rule): connections to 8443:tcp are DNAT'd and forwarded, never reaching the input hook this door gates, so it gates nothing for them: set hook = "forward" on the door`,
		`w.toml: door "panel": open 8443:tcp: table inet router chain prerouting handle 4: tcp dport { 8443, 9000 } dnat to 192.168.1.10:443: connections`,
	} {
		if !strings.HasPrefix(ws[i], want) {
			t.Errorf("warning %d:\n got %s\nwant %s…", i, ws[i], want)
		}
	}

	ws = engine.Warnings(cfg, func([]config.Port) ([]nft.DNAT, error) {
		return nil, errors.Join(errors.New("list chains for the DNAT search"), syscall.EPERM)
	})
	if len(ws) != 1 || !strings.Contains(ws[0], "could not look for rules that DNAT the doors' ports elsewhere") ||
		!strings.Contains(ws[0], "run as root to look") {
		t.Errorf("without the privilege: %q", ws)
	}
	if ws := engine.Warnings(cfg, nil); len(ws) != 0 {
		t.Errorf("without a finder: %q", ws)
	}
}
