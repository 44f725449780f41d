package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nftknock/nftknock/config"
)

const allKindsFile = `# every kind of door
[[server]]
host = "plain.example.org"
sequence = ["7000:tcp", "8000:udp", "9000"]
delay = "100ms"

[[server]]
host = "shared.example.org"
door = "ssh"
spa_port = "62201:udp"
key_file = "~/.config/nftknock/ssh.key"
nat = true

[[server]]
host = "rotating.example.org"
door = "rot"
sequence_key_file = "/etc/rot.key"
sequence_length = 6
sequence_ports = "30000-30999:udp"
rotate_every = "1m"

[[server]]
host = "web1.example.org"
door = "team"
spa_port = "62203:udp"
server_key_file = "~/.config/nftknock/web1.pub"
identity = "agent"
allow = "203.0.113.7"

[[server]]
host = "Web2.Example.org"
door = "team"
known_hosts = true
ssh_port = 2222
identity = "~/.ssh/id_ed25519"
`

func TestClientFileKinds(t *testing.T) {
	plans, err := parseClientFile("client.toml", []byte(allKindsFile))
	if err != nil {
		t.Fatal(err)
	}
	if len(plans) != 5 {
		t.Fatalf("%d servers", len(plans))
	}
	find := func(host string) *knockPlan {
		p, err := findServer(plans, "client.toml", host)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	if p := find("plain.example.org"); p.kind != kindSequence || len(p.steps) != 3 || p.steps[1] != (config.Port{Num: 8000, Proto: config.UDP}) || p.steps[2].Proto != config.TCP || p.delay != 100*time.Millisecond {
		t.Errorf("plain: %+v", p)
	}
	if p := find("shared.example.org"); p.kind != kindSharedSPA || p.door != "ssh" || p.spaPort != 62201 || !p.nat || p.keyFile != "~/.config/nftknock/ssh.key" {
		t.Errorf("shared: %+v", p)
	}
	if p := find("rotating.example.org"); p.kind != kindRotating || p.rot.door != "rot" || p.rot.length != 6 || p.rot.ports != "30000-30999:udp" || p.rot.every != time.Minute {
		t.Errorf("rotating: %+v", p)
	}
	if p := find("web1.example.org"); p.kind != kindKeySPA || p.spaPort != 62203 || p.allow != netip.MustParseAddr("203.0.113.7") || p.identity != "agent" || p.sshPort != 22 {
		t.Errorf("web1: %+v", p)
	}
	// Host names match case-insensitively, as DNS names do.
	if p := find("web2.example.ORG"); p.kind != kindKeySPA || !p.knownHosts || p.sshPort != 2222 || p.spaPort != defaultSPAPort {
		t.Errorf("web2: %+v", p)
	}
	if _, err := findServer(plans, "client.toml", "other"); err == nil || !strings.Contains(err.Error(), `no [[server]] with host = "other"`) {
		t.Errorf("unknown host: %v", err)
	}
}

func TestClientFileErrors(t *testing.T) {
	for _, c := range []struct {
		name, text string
		want       []string // each a whole error line's start, or part
	}{
		{"syntax", "[[server]]\nhost = \n", []string{"f.toml:2: "}},
		{"wrong type", "[[server]]\nhost = \"h\"\nsequence = \"7000\"\n", []string{"f.toml:3: sequence: "}},
		{"unknown key", "[[server]]\nhost = \"h\"\nsequence = [\"7000\"]\nsequense = 1\n", []string{`f.toml:4: sequense: unknown key in [[server]]`}},
		{"top-level key", "table = \"x\"\n", []string{"f.toml: table: unknown key"}},
		{"no kind", "[[server]]\nhost = \"h\"\n", []string{`f.toml:1: server "h": no door`}},
		{"two kinds", "[[server]]\nhost = \"h\"\ndoor = \"d\"\nsequence = [\"7000\"]\nkey_file = \"k\"\n", []string{`server "h": a server's door is of one kind, this one has sequence and key_file`}},
		{"no host", "[[server]]\nsequence = [\"7000\"]\n", []string{"f.toml:1: host: missing"}},
		{"no door", "[[server]]\nhost = \"h\"\nkey_file = \"k\"\n", []string{`f.toml:1: server "h": door: missing`}},
		{"bad step", "[[server]]\nhost = \"h\"\nsequence = [\"7000\", \"x\"]\n", []string{`f.toml:3: server "h": sequence[1]: `}},
		{"tcp spa port", "[[server]]\nhost = \"h\"\ndoor = \"d\"\nkey_file = \"k\"\nspa_port = \"62201:tcp\"\n", []string{`f.toml:5: server "h": spa_port: "62201:tcp": an SPA port is one PORT:udp`}},
		{"allow and nat", "[[server]]\nhost = \"h\"\ndoor = \"d\"\nknown_hosts = true\nallow = \"192.0.2.1\"\nnat = true\n", []string{`f.toml:6: server "h": nat: give allow or nat`}},
		{"bad allow", "[[server]]\nhost = \"h\"\ndoor = \"d\"\nknown_hosts = true\nallow = \"192.0.2.0/24\"\n", []string{`f.toml:5: server "h": allow: "192.0.2.0/24" is not an IPv4 or IPv6 address`}},
		{"identity on a sequence", "[[server]]\nhost = \"h\"\nsequence = [\"7000\"]\nidentity = \"agent\"\n", []string{`f.toml:4: server "h": identity: only for public-key SPA doors`}},
		{"both key sources", "[[server]]\nhost = \"h\"\ndoor = \"d\"\nknown_hosts = true\nserver_key_file = \"f\"\n", []string{`server "h": known_hosts: give server_key_file or known_hosts`}},
		{"rotating limits", "[[server]]\nhost = \"h\"\ndoor = \"d\"\nsequence_key_file = \"k\"\nsequence_length = 99\nrotate_every = \"1ms\"\n", []string{"f.toml:5: server \"h\": sequence_length: 99 is out of range", "f.toml:6: server \"h\": rotate_every:"}},
		{"rotating key on a sequence", "[[server]]\nhost = \"h\"\nsequence = [\"7000\"]\nsequence_length = 5\n", []string{`f.toml:4: server "h": sequence_length: only for rotating doors`}},
		{"delay on SPA", "[[server]]\nhost = \"h\"\ndoor = \"d\"\nkey_file = \"k\"\ndelay = \"1s\"\n", []string{`f.toml:5: server "h": delay: only for knock sequences`}},
		{"duplicate host", "[[server]]\nhost = \"h\"\nsequence = [\"7000\"]\n[[server]]\nhost = \"H\"\nsequence = [\"7001\"]\n", []string{`f.toml:5: server "H": host: given twice (first on line 2)`}},
		{"ssh_port range", "[[server]]\nhost = \"h\"\ndoor = \"d\"\nknown_hosts = true\nssh_port = 0\n", []string{`f.toml:5: server "h": ssh_port: 0 is out of range`}},
	} {
		_, err := parseClientFile("f.toml", []byte(c.text))
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error\n%v\nlacks %q", c.name, err, w)
			}
		}
	}
}

func TestClientFilePath(t *testing.T) {
	e := &env{getenv: func(k string) string {
		return map[string]string{"HOME": "/home/alice"}[k]
	}}
	if p, _ := clientFilePath(e, ""); p != "/home/alice/.config/nftknock/client.toml" {
		t.Errorf("default: %s", p)
	}
	if p, _ := clientFilePath(e, "~/other.toml"); p != "/home/alice/other.toml" {
		t.Errorf("-config ~/other.toml: %s", p)
	}
	e.getenv = func(k string) string {
		return map[string]string{"HOME": "/home/alice", "XDG_CONFIG_HOME": "/xdg"}[k]
	}
	if p, _ := clientFilePath(e, ""); p != "/xdg/nftknock/client.toml" {
		t.Errorf("XDG_CONFIG_HOME: %s", p)
	}
	e.getenv = func(string) string { return "" }
	if _, err := clientFilePath(e, ""); err == nil {
		t.Error("no HOME, no error")
	}
	// A missing file and an oversized one name the file.
	dir := t.TempDir()
	if _, err := loadClientFile(filepath.Join(dir, "absent.toml")); err == nil || !strings.Contains(err.Error(), "absent.toml") {
		t.Errorf("absent: %v", err)
	}
	big := filepath.Join(dir, "big.toml")
	if err := os.WriteFile(big, []byte(strings.Repeat("#\n", maxClientFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadClientFile(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("big: %v", err)
	}
}
