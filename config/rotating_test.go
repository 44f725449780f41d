package config

import (
	"strings"
	"testing"
	"time"
)

func TestRotatingDoor(t *testing.T) {
	key := spaKeyFile(t, 0o600, "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n")
	cfg, err := Parse("f.toml", []byte(`
[[door]]
name = "rot"
sequence_key_file = "`+key+`"
sequence_length = 5
sequence_ports = "30000-30999:udp"
rotate_every = "1m"
seq_timeout = "10s"
open = ["22:tcp"]
open_for = "30s"

[[door]]
name = "dflt"
sequence_key_file = "`+key+`"
seq_timeout = "10s"
open = ["2222:tcp"]
open_for = "30s"
`))
	if err != nil {
		t.Fatal(err)
	}
	d, ok := cfg.Doors[0].Kind.(*Rotating)
	if !ok || d.KeyFile != key || d.Length != 5 || d.SeqTimeout != 10*time.Second ||
		d.Ports != (Port{Num: 30000, Last: 30999, Proto: UDP}) || d.Every != time.Minute {
		t.Errorf("door %+v", cfg.Doors[0].Kind)
	}
	// The defaults are the client's defaults.
	d = cfg.Doors[1].Kind.(*Rotating)
	if d.Length != DefaultSequenceLength || d.Ports.String() != DefaultSequencePorts || d.Every != DefaultRotateEvery || d.TCPFlags != DefaultTCPFlags {
		t.Errorf("defaults: length %d, ports %s, every %s", d.Length, d.Ports, d.Every)
	}
}

func TestRotatingDoorRejects(t *testing.T) {
	good := spaKeyFile(t, 0o600, "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n")
	door := func(extra string) string {
		return "[[door]]\nname = \"rot\"\nopen = [\"22:tcp\"]\nopen_for = \"30s\"\nseq_timeout = \"10s\"\n" + extra
	}
	rot := func(extra string) string { return door("sequence_key_file = \"" + good + "\"\n" + extra + "\n") }
	other := func(extra string) string {
		return "[[door]]\nname = \"other\"\nseq_timeout = \"5s\"\nopen_for = \"5s\"\n" + extra
	}
	tests := []rejectCase{
		{"and a sequence", rot(`sequence = ["7000"]`), []string{`door "rot": sequence: a rotating door`, `remove sequence`}},
		{"and a close sequence", rot(`close_sequence = ["7000"]`), []string{`close_sequence: a rotating door`}},
		{"and spa", rot("spa_port = \"62201:udp\"\nkey_file = \"" + good + "\""), []string{`sequence_key_file: a door has either spa_port or sequence_key_file`}},
		{"relative key", door(`sequence_key_file = "rot.key"`), []string{`sequence_key_file: "rot.key" must be an absolute path`}},
		{"length 1", rot(`sequence_length = 1`), []string{`sequence_length: 1 is out of range 2-16`}},
		{"length 17", rot(`sequence_length = 17`), []string{`sequence_length: 17 is out of range 2-16`}},
		{"narrow range", rot(`sequence_ports = "20000-20100:tcp"`), []string{`sequence_ports: "20000-20100:tcp" holds 101 ports`}},
		{"weak", rot("sequence_length = 2\nsequence_ports = \"20000-20999\""), []string{`sequence_ports: 2 knocks over 1000 ports are worth 20 bits`}},
		{"icmp range", rot(`sequence_ports = "100:icmp"`), []string{`sequence_ports:`, `icmp is a knock step`}},
		{"fast", rot(`rotate_every = "500ms"`), []string{`rotate_every: "500ms" is shorter than 1s`}},
		{"slow", rot(`rotate_every = "25h"`), []string{`rotate_every: "25h" is longer than`}},
		{"seq_timeout over window", rot(`rotate_every = "5s"`), []string{`seq_timeout: 10s is longer than rotate_every (5s)`}},
		{"length on knock door", door("sequence = [\"7000\"]\nsequence_length = 4"), []string{`sequence_length: only a rotating door`}},
		{"rotate_every on knock door", door("sequence = [\"7000\"]\nrotate_every = \"30s\""), []string{`rotate_every: only a rotating door`}},
		{"range has opened port", rot("") + other("sequence = [\"7000\"]\nopen = [\"25000:tcp\"]"), []string{`door "rot": sequence_ports: 20000-40000:tcp overlaps 25000:tcp, which door "other" opens`}},
		{"range has a knock", rot("") + other("sequence = [\"7000\", \"39999\"]\nopen = [\"80\"]"), []string{`sequence_ports:`, `overlaps 39999:tcp, a knock of door "other"`}},
		{"ranges overlap", rot("") + other("sequence_key_file = \""+good+"\"\nsequence_ports = \"39000-45000\"\nopen = [\"80\"]"), []string{`door "other": sequence_ports: 39000-45000:tcp overlaps 20000-40000:tcp, door "rot"'s range`}},
		{"udp knock in a udp range", rot(`sequence_ports = "20000-40000:udp"`) + other("sequence = [\"25000:udp\"]\nopen = [\"80\"]"), []string{`overlaps 25000:udp, a knock of door "other"`}},
	}
	checkRejects(t, tests)
	// A TCP range does not clash with UDP knocks on the same numbers.
	if _, err := Parse("f.toml", []byte(rot("")+other("sequence = [\"25000:udp\"]\nopen = [\"80\"]"))); err != nil {
		t.Errorf("a udp knock inside a tcp range: %v", err)
	}
}

func TestReservedDoorNames(t *testing.T) {
	for _, name := range []string{"knock_first", "knocking", "knock_rate", "ssh_allow"} {
		_, err := Parse("f.toml", []byte(strings.Replace(minimal, `name = "ssh"`, `name = "`+name+`"`, 1)))
		if err == nil || !strings.Contains(err.Error(), `name: "`+name+`" would give the door a set name nftknock uses`) {
			t.Errorf("door %q: %v", name, err)
		}
	}
}
