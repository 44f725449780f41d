package engine_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/integration/nstest"
	"github.com/nftknock/nftknock/knock/engine"
	"github.com/nftknock/nftknock/knock/spa"
	"github.com/nftknock/nftknock/knock/sshspa"
	"github.com/nftknock/nftknock/nft"
)

var updateGolden = os.Getenv("UPDATE_GOLDEN") == "1"

// rulesetConfigs are the configs whose rulesets testdata/ pins: the
// default one, two doors sharing an opened port and a knock, a door of
// each other kind (an SPA door, a rotating one), and a public-key SPA door.
func rulesetConfigs(t *testing.T) map[string]string {
	dir := t.TempDir()
	key := filepath.Join(dir, "door.key")
	if err := os.WriteFile(key, []byte(spa.GenerateKey()), 0o600); err != nil {
		t.Fatal(err)
	}
	serverKey, _, err := sshspa.GenerateServerKey("")
	if err != nil {
		t.Fatal(err)
	}
	server, keys := filepath.Join(dir, "server.key"), filepath.Join(dir, "team.authorized_keys")
	for path, data := range map[string][]byte{server: serverKey, keys: nil} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ssh := string(config.DefaultTOML())
	return map[string]string{
		"ruleset_keyspa": `server_key_file = "` + server + `"
[[door]]
name = "team"
spa_port = "62203:udp"
authorized_keys = ["` + keys + `"]
open = ["22:tcp"]
open_for = "30s"
`,
		"ruleset": ssh,
		"ruleset_shared": ssh + `
[[door]]
name = "admin"
sequence = ["9000:tcp", "7001:udp"]
seq_timeout = "5s"
open = ["22:tcp", "8443:tcp"]
open_for = "1h"
`,
		"ruleset_forward":  ssh + forwardDoors,
		"ruleset_attached": "attach = \"inet filter input\"\n" + ssh + forwardDoors,
		"ruleset_doors": ssh + `
[[door]]
name = "vpn"
spa_port = "62201:udp"
key_file = "` + key + `"
open = ["1194:udp"]
open_for = "1m"

[[door]]
name = "rot"
sequence_key_file = "` + key + `"
sequence_length = 3
seq_timeout = "10s"
open = ["2222:tcp"]
open_for = "30s"
`,
	}
}

// forwardDoors are a door for a port Docker publishes and a router's door
// (port forwards on its public addresses, hosts behind it).
const forwardDoors = `
[[door]]
name = "panel"
hook = "forward"
sequence = ["7100:tcp", "8100:udp"]
seq_timeout = "5s"
open = ["8443:tcp"]
open_for = "1h"

[[door]]
name = "lan"
hook = "forward"
sequence = ["7200:tcp", "8200:udp"]
seq_timeout = "5s"
to = ["203.0.113.5"]
open = ["2222:tcp"]
forward_to = ["192.168.1.10:22", "[2001:db8:1::10]:22"]
open_for = "30s"
`

// adminRuleset is an admin's ruleset for attach mode.
const adminRuleset = `table inet filter {
	chain nftknock {}
	chain nftknock_forward {}
	chain input {
		type filter hook input priority filter; policy drop;
		jump nftknock
		ct state established,related accept
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		jump nftknock_forward
	}
}
`

// TestKernelRuleset checks what `nft list table` shows once the daemon's
// plan for each config is installed against testdata/<case>.nft (rerun
// with UPDATE_GOLDEN=1 to rewrite them, and review the diff): what a user
// reads in `nft list ruleset`.
func TestKernelRuleset(t *testing.T) {
	nstest.Require(t, "nft")
	for name, toml := range rulesetConfigs(t) {
		t.Run(name, func(t *testing.T) {
			cfg, err := config.Parse(name+".toml", []byte(toml))
			if err != nil {
				t.Fatal(err)
			}
			p, err := engine.Plan(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ns := nstest.New(t)
			table := cfg.Table
			fw, err := nft.Open(cfg.Table, nftables.WithNetNSFd(ns.FD))
			if a := cfg.Attach; a != nil {
				ns.Run(t, adminRuleset, "nft", "-f", "-")
				table = a.Table
				fw, err = nft.OpenAttached(nft.Attach{Table: a.Table, Chain: a.Chain}, cfg.Table, nftables.WithNetNSFd(ns.FD))
			}
			if err != nil {
				t.Fatal(err)
			}
			defer fw.Close()
			if _, err := fw.Install(p); err != nil {
				t.Fatal(err)
			}
			got := trimLines(ns.Run(t, "", "nft", "list", "table", "inet", table))
			path := filepath.Join("testdata", name+".nft")
			if updateGolden {
				if err := os.WriteFile(path, []byte(got+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if got != trimLines(string(want)) {
				t.Errorf("nft list table differs from %s:\n got:\n%s\nwant:\n%s", path, got, want)
			}
		})
	}
}

// TestREADMEShowsRuleset keeps the README's `nft list ruleset` excerpt
// true: leaving out counters' values and live elements, it must be the
// ruleset the daemon installs for the default config
// (testdata/ruleset.nft, which TestKernelRuleset checks against the
// kernel).
func TestREADMEShowsRuleset(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/ruleset.nft")
	if err != nil {
		t.Fatal(err)
	}
	block := regexp.MustCompile("(?s)```\n(table inet nftknock \\{\n.*?\n\\})\n```").FindSubmatch(readme)
	if block == nil {
		t.Fatal("README.md has no ``` block holding `table inet nftknock { ... }`")
	}
	if got, want := normalizeListing(string(block[1])), normalizeListing(string(want)); got != want {
		t.Errorf("README.md's ruleset excerpt is not what the daemon installs for the default config.\nREADME:\n%s\n\ntestdata/ruleset.nft:\n%s", got, want)
	}
}

var (
	counterRE  = regexp.MustCompile(`counter packets \d+ bytes \d+`)
	elementsRE = regexp.MustCompile(`(?m)^\s*elements = \{[^}]*\}\n`)
)

func normalizeListing(s string) string {
	s = elementsRE.ReplaceAllString(s, "")
	s = counterRE.ReplaceAllString(s, "counter")
	return trimLines(s)
}

// trimLines drops trailing whitespace of every line and of the text.
func trimLines(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " \t")
	}
	return strings.TrimSpace(strings.Join(lines, "\n"))
}
