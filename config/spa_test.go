package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func spaKeyFile(t *testing.T, mode os.FileMode, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "door.key")
	if err := os.WriteFile(p, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSPADoor(t *testing.T) {
	key := spaKeyFile(t, 0o600, "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n")
	cfg, err := Parse("f.toml", []byte(`
[[door]]
name = "ssh"
spa_port = "62201:udp"
key_file = "`+key+`"
open = ["22:tcp"]
open_for = "30s"
`))
	if err != nil {
		t.Fatal(err)
	}
	d, ok := cfg.Doors[0].Kind.(*SPA)
	if !ok || d.Port != (Port{Num: 62201, Proto: UDP}) || d.KeyFile != key ||
		d.MaxAge != 30*time.Second || d.AllowRequested {
		t.Errorf("door %+v", cfg.Doors[0].Kind)
	}
}

func TestSPADoorRejects(t *testing.T) {
	good := spaKeyFile(t, 0o600, "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n")
	door := func(extra string) string {
		return "[[door]]\nname = \"ssh\"\nopen = [\"22:tcp\"]\nopen_for = \"30s\"\n" + extra
	}
	tests := []rejectCase{
		{"both", door(`spa_port = "62201:udp"` + "\nkey_file = \"" + good + "\"\nsequence = [\"7000\"]\n"), []string{`door "ssh": sequence: a door has either spa_port or sequence`}},
		{"tcp port", door(`spa_port = "62201:tcp"` + "\nkey_file = \"" + good + "\"\n"), []string{`door "ssh": spa_port:`, `UDP port`}},
		{"no proto", door(`spa_port = "62201"` + "\nkey_file = \"" + good + "\"\n"), []string{`spa_port:`, `UDP port`}},
		{"no key", door(`spa_port = "62201:udp"` + "\n"), []string{`door "ssh": key_file: missing`}},
		{"relative key", door(`spa_port = "62201:udp"` + "\nkey_file = \"door.key\"\n"), []string{`key_file: "door.key" must be an absolute path`}},
		{"spa seq_timeout", door(`spa_port = "62201:udp"` + "\nkey_file = \"" + good + "\"\nseq_timeout = \"5s\"\n"), []string{`seq_timeout: an SPA door has no knock sequence to time out`}},
		{"two spa doors, one port", door(`spa_port = "62201:udp"`+"\nkey_file = \""+good+"\"\n") + strings.Replace(door(`spa_port = "62201:udp"`+"\nkey_file = \""+good+"\"\n"), `"ssh"`, `"vpn"`, 1), []string{`door "vpn": spa_port: 62201:udp overlaps 62201:udp, door "ssh"'s SPA port`}},
		{"bad age", door(`spa_port = "62201:udp"` + "\nkey_file = \"" + good + "\"\nspa_max_age = \"2h\"\n"), []string{`spa_max_age:`, `longer than`}},
		{"key on knock door", door("sequence = [\"7000\"]\nseq_timeout = \"5s\"\nkey_file = \"" + good + "\"\n"), []string{`key_file: only an SPA door`}},
		{"spa port opened", door(`spa_port = "22:udp"`+"\nkey_file = \""+good+"\"\n") + "[[door]]\nname = \"dns\"\nsequence = [\"7000\"]\nseq_timeout = \"5s\"\nopen = [\"22:udp\"]\nopen_for = \"5s\"\n", []string{`door "ssh": spa_port: 22:udp is also opened by door "dns"`}},
	}
	checkRejects(t, tests)
}

// rejectCase is a config that must be refused with an error line that
// holds every one of want.
type rejectCase struct {
	name, toml string
	want       []string
}

func checkRejects(t *testing.T, tests []rejectCase) {
	t.Helper()
	for _, tc := range tests {
		_, err := Parse("f.toml", []byte(tc.toml))
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		found := false
		for _, line := range strings.Split(err.Error(), "\n") {
			if containsEvery(line, tc.want) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: no error line with %q in:\n%v", tc.name, tc.want, err)
		}
	}
}

func containsEvery(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}
