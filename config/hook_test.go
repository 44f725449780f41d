package config

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

const knockKeys = `
sequence = ["7000", "8000:udp", "9000"]
seq_timeout = "5s"
open_for = "30s"
`

// TestForwardDoor: hook, to and forward_to parse into the door; a router's
// door may have forward_to alone.
func TestForwardDoor(t *testing.T) {
	cfg, err := Parse("f.toml", []byte(`
[[door]]
name = "panel"
hook = "forward"
to = ["203.0.113.5", "::ffff:198.51.100.1", "2001:db8::5"]
open = ["8443:tcp"]
forward_to = ["192.168.1.10:22", "[2001:db8:1::10]:60000-61000:udp"]
`+knockKeys+`
[[door]]
name = "lan"
hook = "forward"
forward_to = ["192.168.1.11:3389"]
`+strings.ReplaceAll(knockKeys, "7000", "7001")+`
[[door]]
name = "ssh"
hook = "input"
open = ["22"]
`+strings.ReplaceAll(knockKeys, "7000", "7002")))
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.Doors[0]
	wantTo := []netip.Addr{netip.MustParseAddr("203.0.113.5"), netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("2001:db8::5")}
	wantFwd := []Dest{
		{netip.MustParseAddr("192.168.1.10"), Port{Num: 22, Proto: TCP}},
		{netip.MustParseAddr("2001:db8:1::10"), Port{Num: 60000, Last: 61000, Proto: UDP}},
	}
	if d.Hook != HookForward || !slices.Equal(d.To, wantTo) || !slices.Equal(d.ForwardTo, wantFwd) {
		t.Errorf("panel: hook %v to %v forward_to %v", d.Hook, d.To, d.ForwardTo)
	}
	if got := d.ForwardTo[1].String(); got != "[2001:db8:1::10]:60000-61000:udp" {
		t.Errorf("Dest.String() = %q", got)
	}
	if lan := cfg.Doors[1]; lan.Open != nil || len(lan.ForwardTo) != 1 {
		t.Errorf("lan: open %v forward_to %v", lan.Open, lan.ForwardTo)
	}
	if cfg.Doors[2].Hook != HookInput {
		t.Errorf("ssh: hook %v", cfg.Doors[2].Hook)
	}
}

func TestForwardDoorRefusals(t *testing.T) {
	for _, tc := range []struct{ door, want string }{
		{`hook = "prerouting"` + "\nopen = [\"22\"]", `hook: "prerouting" is neither "input"`},
		{`to = ["192.0.2.1"]` + "\nopen = [\"22\"]", `to: only a door on the forward hook has to: add hook = "forward"`},
		{`forward_to = ["192.0.2.1:22"]` + "\nopen = [\"22\"]", `forward_to: only a door on the forward hook has forward_to`},
		{`hook = "forward"` + "\nto = [\"192.0.2.0/24\"]\nopen = [\"22\"]", `to[0]: "192.0.2.0/24" is not an IPv4 or IPv6 address`},
		{`hook = "forward"` + "\nto = []\nopen = [\"22\"]", `to: empty`},
		{`hook = "forward"` + "\nforward_to = [\"2001:db8::1:22\"]", `forward_to[0]: "2001:db8::1:22": "2001" is not`},
		{`hook = "forward"` + "\nforward_to = [\"192.168.1.10\"]", `write ADDRESS:PORT`},
		{`hook = "forward"` + "\nforward_to = [\"192.168.1.10:22:icmp\"]", `icmp is a knock step`},
		{`hook = "forward"`, `open: empty`},
	} {
		_, err := Parse("f.toml", []byte("[[door]]\nname = \"d\"\n"+tc.door+knockKeys))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s:\n got %v\nwant …%s…", tc.door, err, tc.want)
		}
	}
}

func TestAttach(t *testing.T) {
	cfg, err := Parse("f.toml", []byte("attach = \"inet filter input\"\n[[door]]\nname = \"d\"\nopen = [\"22\"]"+knockKeys))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Attach == nil || *cfg.Attach != (Attach{Table: "filter", Chain: "input"}) || cfg.Attach.String() != "inet filter input" {
		t.Errorf("attach = %+v", cfg.Attach)
	}
	for _, tc := range []struct{ attach, want string }{
		{"ip filter input", `attach to an inet table ("inet filter input")`},
		{"inet filter", "write the family, table and chain"},
		{"inet fil;ter input", `"fil;ter" is not a table or chain name`},
		{"inet filter nftknock", "chain nftknock is nftknock's own chain"},
	} {
		_, err := Parse("f.toml", []byte("attach = \""+tc.attach+"\"\n[[door]]\nname = \"d\"\nopen = [\"22\"]"+knockKeys))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "attach: ") {
			t.Errorf("attach = %q:\n got %v\nwant …%s…", tc.attach, err, tc.want)
		}
	}
}

func FuzzParseDest(f *testing.F) {
	for _, s := range []string{"192.168.1.10:22", "[2001:db8::1]:22:udp", "1.2.3.4:1-2:tcp", "[::1]", ":"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDest(s)
		if err != nil {
			return
		}
		back, err := ParseDest(d.String())
		if err != nil || back != d {
			t.Errorf("%q → %v → %q: %v, %v", s, d, d.String(), back, err)
		}
	})
}
