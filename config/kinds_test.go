package config

import (
	"slices"
	"strings"
	"testing"
)

// TestReferenceConfig: the reference configuration that -print-config
// prints parses, has a door of every built-in kind, and sets every key of
// every kind and every top-level key, so that it documents them all.
func TestReferenceConfig(t *testing.T) {
	cfg, err := Parse("reference.toml", ReferenceTOML())
	if err != nil {
		t.Fatalf("the reference configuration does not validate: %v", err)
	}
	kinds := map[string]bool{}
	for _, d := range cfg.Doors {
		kinds[d.Kind.KindName()] = true
	}
	for _, want := range []Kind{&Sequence{}, &SPA{}, &KeySPA{}, &Fwknop{}, &Rotating{}} {
		if !kinds[want.KindName()] {
			t.Errorf("no door of kind %q in the reference configuration", want.KindName())
		}
	}
	text := string(ReferenceTOML())
	keys := append([]string{"nflog_group", "table", "max_tracked", "server_key_file"}, commonKeys...)
	for _, k := range Kinds {
		keys = append(keys, k.Keys...)
	}
	for _, k := range keys {
		if !strings.Contains(text, "\n"+k+" = ") {
			t.Errorf("the reference configuration does not set %s", k)
		}
	}
}

// TestParseReadsNoFiles: the files a config names are the daemon's to
// read; parsing only checks that their paths are absolute.
func TestParseReadsNoFiles(t *testing.T) {
	cfg, err := Parse("f.toml", []byte(`
[[door]]
name = "a"
spa_port = "62201:udp"
key_file = "/nonexistent/a.key"
open = ["22"]
open_for = "1s"
[[door]]
name = "b"
one_time_sequences = "/nonexistent/b.seq"
seq_timeout = "1s"
open = ["23"]
open_for = "1s"
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Doors[0].Kind.(*SPA).KeyFile != "/nonexistent/a.key" || cfg.Doors[1].Kind.(*Sequence).OneTimeFile != "/nonexistent/b.seq" {
		t.Errorf("paths not kept: %+v %+v", cfg.Doors[0].Kind, cfg.Doors[1].Kind)
	}
}

// trivialKind is a door kind of this test only: a door with a "bell" key
// (a port) that rings to open. Adding it takes a KindSpec and nothing
// else in this package.
type trivialKind struct{ bell Port }

func (*trivialKind) KindName() string { return "bell" }
func (k *trivialKind) Claims() []Claim {
	return []Claim{{Port: k.bell, Field: "bell", What: "door %q's bell", Own: "a bell must be a port of its own"}}
}

var trivialSpec = KindSpec{
	Name:      "a bell door (one with bell)",
	Selectors: []string{"bell"},
	Keys:      []string{"bell"},
	Parse: func(p *DoorParser) Kind {
		s, _ := p.String("bell")
		port, err := ParseKnock(s)
		if err != nil {
			p.Errorf("bell", "%v", err)
		}
		return &trivialKind{bell: port}
	},
}

// TestNewKindIsOneSpec adds a kind through ParseWith: it parses, its keys
// are its own (a knock key on it is refused, its key on a knock door too),
// and its claims are checked against the other doors like any kind's.
func TestNewKindIsOneSpec(t *testing.T) {
	kinds := append(slices.Clone(Kinds), trivialSpec)
	cfg, err := ParseWith("f.toml", []byte("[[door]]\nname = \"b\"\nbell = \"4000:udp\"\nopen = [\"22\"]\nopen_for = \"1s\"\n"), kinds)
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := cfg.Doors[0].Kind.(*trivialKind); !ok || k.bell != (Port{Num: 4000, Proto: UDP}) {
		t.Fatalf("kind %#v", cfg.Doors[0].Kind)
	}
	for _, tc := range []rejectCase{
		{"knock key on a bell door", "[[door]]\nname = \"b\"\nbell = \"4000:udp\"\nseq_timeout = \"1s\"\nopen = [\"22\"]\nopen_for = \"1s\"\n",
			[]string{`door "b": seq_timeout: only a rotating door (one with sequence_key_file) or a knock door (one with sequence or one_time_sequences) has seq_timeout`}},
		{"bell and sequence", "[[door]]\nname = \"b\"\nbell = \"4000:udp\"\nsequence = [\"1\"]\nopen = [\"22\"]\nopen_for = \"1s\"\n",
			[]string{`door "b": bell: a door has either sequence or bell, not both`}},
		{"bell on an opened port", "[[door]]\nname = \"b\"\nbell = \"22:tcp\"\nopen = [\"22\"]\nopen_for = \"1s\"\n",
			[]string{`door "b": bell: 22:tcp is also opened by door "b" (22:tcp): a bell must be a port of its own`}},
	} {
		_, err := ParseWith("f.toml", []byte(tc.toml), kinds)
		if err == nil || !strings.Contains(err.Error(), tc.want[0]) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want[0])
		}
	}
	// Without the spec, the key is unknown.
	if _, err := Parse("f.toml", []byte("[[door]]\nname = \"b\"\nbell = \"4000:udp\"\nsequence = [\"1\"]\nseq_timeout = \"1s\"\nopen = [\"22\"]\nopen_for = \"1s\"\n")); err == nil ||
		!strings.Contains(err.Error(), "bell: unknown key in [[door]]") {
		t.Errorf("bell without its kind: %v", err)
	}
}
