package config

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestFwknopDoor(t *testing.T) {
	cfg, err := Parse("f.toml", []byte(`
[[door]]
name = "fw"
fwknop_port = "62201:udp"
fwknop_key_file = "/etc/nftknock/fw.key"
fwknop_hmac_key_file = "/etc/nftknock/fw.hmac"
open = ["22:tcp", "2222:tcp"]
open_for = "30s"

[[door]]
name = "fw_2"
fwknop_port = "62201:udp"
fwknop_key_file = "/etc/nftknock/fw_2.key"
fwknop_hmac_key_file = "/etc/nftknock/fw_2.hmac"
fwknop_max_age = "60s"
fwknop_max_open_for = "10m"
fwknop_source = ["192.0.2.0/24", "2001:db8::/32"]
fwknop_require_source = true
open = ["1194:udp"]
open_for = "1m"
`))
	if err != nil {
		t.Fatal(err)
	}
	a, ok := cfg.Doors[0].Kind.(*Fwknop)
	any := []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	if !ok || a.Port != (Port{Num: 62201, Proto: UDP}) || a.KeyFile != "/etc/nftknock/fw.key" || a.HMACKeyFile != "/etc/nftknock/fw.hmac" ||
		a.MaxAge != DefaultFwknopMaxAge || a.MaxOpenFor != DefaultFwknopMaxOpenFor || !slices.Equal(a.Sources, any) || a.RequireSource {
		t.Errorf("door fw, with fwknopd's defaults: %+v", cfg.Doors[0].Kind)
	}
	b := cfg.Doors[1].Kind.(*Fwknop)
	if b.MaxAge != time.Minute || b.MaxOpenFor != 10*time.Minute || !b.RequireSource ||
		!slices.Equal(b.Sources, []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/32")}) {
		t.Errorf("door fw_2: %+v", b)
	}
	if !a.GrantsPerPort() {
		t.Error("an fwknop door does not grant per port")
	}
}

func TestFwknopDoorRejects(t *testing.T) {
	door := func(name, extra string) string {
		return "[[door]]\nname = \"" + name + "\"\nopen_for = \"30s\"\nfwknop_key_file = \"/k\"\n" + extra
	}
	// fw is a valid fwknop door with extra.
	fw := func(extra string) string {
		return door("fw", "fwknop_port = \"62201:udp\"\nfwknop_hmac_key_file = \"/h\"\nopen = [\"22:tcp\"]\n"+extra)
	}
	checkRejects(t, []rejectCase{
		{"no hmac key", door("fw", "fwknop_port = \"62201:udp\"\nopen = [\"22:tcp\"]\n"),
			[]string{`door "fw": fwknop_hmac_key_file: missing: an fwknop door needs the stanza's HMAC key`, "decrypted before anything proved it authentic"}},
		{"no key", "[[door]]\nname = \"fw\"\nopen = [\"22:tcp\"]\nopen_for = \"30s\"\nfwknop_port = \"62201:udp\"\nfwknop_hmac_key_file = \"/h\"\n",
			[]string{`fwknop_key_file: missing`}},
		{"relative hmac key", door("fw", "fwknop_port = \"62201:udp\"\nfwknop_hmac_key_file = \"fw.hmac\"\nopen = [\"22:tcp\"]\n"),
			[]string{`fwknop_hmac_key_file: "fw.hmac" must be an absolute path`}},
		{"tcp port", door("fw", "fwknop_port = \"62201:tcp\"\nfwknop_hmac_key_file = \"/h\"\nopen = [\"22:tcp\"]\n"),
			[]string{`fwknop_port: "62201:tcp": an fwknop port is a UDP port`}},
		{"range opened", door("fw", "fwknop_port = \"62201:udp\"\nfwknop_hmac_key_file = \"/h\"\nopen = [\"22:tcp\", \"60000-61000:udp\"]\n"),
			[]string{`door "fw": open[1]: "60000-61000:udp": an fwknop door opens single ports`}},
		{"spa key name", fw("key_file = \"/k\"\n"), []string{`key_file: an fwknop door's keys are fwknop_key_file`}},
		{"seq_timeout", fw("seq_timeout = \"5s\"\n"), []string{`seq_timeout: an fwknop door has no knock sequence`}},
		{"sequence too", fw("sequence = [\"7000\"]\n"), []string{`a door has either fwknop_port or sequence`}},
		{"spa_port too", fw("spa_port = \"62202:udp\"\n"), []string{`a door has either spa_port or fwknop_port`}},
		{"anyone", fw("open_to = \"anyone\"\n"), []string{`open_to: an fwknop door opens to the address a request names`}},
		{"forward hook", fw("hook = \"forward\"\n"), []string{`hook: an fwknop door grants per port on the input hook only`}},
		{"empty source", fw("fwknop_source = []\n"), []string{`fwknop_source: empty`}},
		{"bad source", fw("fwknop_source = [\"192.0.2.1/24\"]\n"), []string{`fwknop_source[0]: "192.0.2.1/24" has host bits set`}},
		{"age too long", fw("fwknop_max_age = \"2h\"\n"), []string{`fwknop_max_age:`, `longer than`}},
		{"require not a bool", fw("fwknop_require_source = \"Y\"\n"), []string{`fwknop_require_source: want true or false`}},
		{"port of a knock", fw("") + "[[door]]\nname = \"k\"\nsequence = [\"62201:udp\"]\nseq_timeout = \"5s\"\nopen = [\"23\"]\nopen_for = \"5s\"\n",
			[]string{`62201:udp overlaps 62201:udp, door "fw"'s fwknop port`}},
		{"port of an SPA door", fw("") + "[[door]]\nname = \"s\"\nspa_port = \"62201:udp\"\nkey_file = \"/k\"\nopen = [\"23\"]\nopen_for = \"5s\"\n",
			[]string{`door "s": spa_port: 62201:udp overlaps 62201:udp, door "fw"'s fwknop port`}},
		{"port opened", fw("") + "[[door]]\nname = \"dns\"\nsequence = [\"7000\"]\nseq_timeout = \"5s\"\nopen = [\"62201:udp\"]\nopen_for = \"5s\"\n",
			[]string{`door "fw": fwknop_port: 62201:udp is also opened by door "dns"`}},
	})
	// Two fwknop doors share a port.
	if _, err := Parse("f.toml", []byte(fw("")+strings.Replace(fw(""), `"fw"`, `"fw_2"`, 1))); err != nil {
		t.Errorf("two fwknop doors on one port: %v", err)
	}
}
