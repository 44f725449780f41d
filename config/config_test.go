package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestDefaultConfigParses(t *testing.T) {
	cfg, err := Parse("default.toml", DefaultTOML())
	if err != nil {
		t.Fatalf("the embedded default config does not validate: %v", err)
	}
	want := Door{
		Name: "ssh",
		Kind: &Sequence{
			Sequence:   []Port{{Num: 7000, Proto: TCP}, {Num: 8000, Proto: UDP}, {Num: 9000, Proto: TCP}},
			SeqTimeout: 10 * time.Second,
		},
		Open:    []Port{{Num: 22, Proto: TCP}},
		OpenFor: 30 * time.Second,
	}
	if cfg.NFLOGGroup != 7113 || cfg.Table != "nftknock" || cfg.MaxTracked != 65536 {
		t.Errorf("top level = %d %q %d, want 7113 nftknock 65536", cfg.NFLOGGroup, cfg.Table, cfg.MaxTracked)
	}
	if len(cfg.Doors) != 1 || !doorEqual(cfg.Doors[0], want) {
		t.Errorf("doors = %+v, want [%+v]", cfg.Doors, want)
	}
}

func TestDefaultsForOptionalKeys(t *testing.T) {
	cfg, err := Parse("f.toml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NFLOGGroup != DefaultNFLOGGroup || cfg.Table != DefaultTable || cfg.MaxTracked != DefaultMaxTracked || !cfg.OwnTable {
		t.Errorf("defaults not applied: %+v", cfg)
	}
	if off, err := Parse("f.toml", []byte("own_table = false\n"+minimal)); err != nil || off.OwnTable {
		t.Errorf("own_table = false: %v, %+v", err, off)
	}
	if cfg.File != "f.toml" {
		t.Errorf("File = %q", cfg.File)
	}
}

const minimal = `
[[door]]
name = "ssh"
sequence = ["7000", "8000:udp", "9000:TCP"]
seq_timeout = "10s"
open = ["22"]
open_for = "30s"
`

func TestLoadReadsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nftknock.toml")
	if err := os.WriteFile(path, []byte(minimal), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Doors[0].Kind.(*Sequence).Sequence; got[0] != (Port{Num: 7000, Proto: TCP}) || got[1] != (Port{Num: 8000, Proto: UDP}) || got[2] != (Port{Num: 9000, Proto: TCP}) {
		t.Errorf("sequence = %v", got)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "absent.toml")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(absent) = %v, want a not-exist error", err)
	}
	big := filepath.Join(t.TempDir(), "big.toml")
	if err := os.WriteFile(big, make([]byte, maxFileSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("Load(big) = %v, want a size error", err)
	}
}

// TestRejects checks that every problem is an error naming file, line,
// door and field, and that what knockd silently mangles is refused.
func TestRejects(t *testing.T) {
	door := func(seq, open, seqTimeout, openFor string) string {
		return "[[door]]\nname = \"ssh\"\nsequence = " + seq + "\nseq_timeout = " + seqTimeout +
			"\nopen = " + open + "\nopen_for = " + openFor + "\n"
	}
	ok := func(field, value string) string {
		vals := map[string]string{"seq": `["7000", "8000"]`, "open": `["22"]`, "st": `"10s"`, "of": `"30s"`}
		vals[field] = value
		return door(vals["seq"], vals["open"], vals["st"], vals["of"])
	}
	tests := []struct {
		name, toml string
		want       []string // substrings of one error line
	}{
		{"port zero", ok("seq", `["0", "8000"]`), []string{`f.toml:3: door "ssh": sequence[0]: "0": port 0 is out of range 1-65535`}},
		{"port too big", ok("seq", `["7000", "65536"]`), []string{`sequence[1]`, `out of range 1-65535`}},
		{"not a number", ok("seq", `["7000", "ssh"]`), []string{`sequence[1]`, `not a number`}},
		{"negative port", ok("seq", `["-1"]`), []string{`sequence[0]`, `not a number`}},
		{"bad proto", ok("seq", `["7000:icmpx"]`), []string{`sequence[0]`, `is not tcp, udp or icmp`}},
		{"empty sequence", ok("seq", `[]`), []string{`:3: door "ssh": sequence: empty`}},
		{"repeat in sequence", ok("seq", `["7000", "7000"]`), []string{`sequence[1]`, `repeats the knock before it`}},
		{"knock port opened", ok("seq", `["7000", "22:tcp"]`), []string{`sequence[1]`, `22:tcp is also opened by door "ssh"`}},
		{"knock port in an opened range", ok("open", `["6000-7500:tcp"]`), []string{`sequence[0]`, `7000:tcp is also opened by door "ssh" (6000-7500:tcp)`}},
		{"backwards range", ok("open", `["61000-60000:udp"]`), []string{`open[0]`, `lower port to the higher`}},
		{"icmp opened", ok("open", `["100:icmp"]`), []string{`open[0]`, `icmp is a knock step`}},
		{"icmp too big", ok("seq", `["70000:icmp"]`), []string{`sequence[0]`, `payload size of a ping, 0-65507`}},
		{"too many knocks", ok("seq", `["`+strings.TrimSuffix(strings.Repeat(`1", "2", "`, 17), `, "`)+`]`), []string{`:3: door "ssh": sequence: 34 entries; at most 32 are allowed`}},
		{"empty open", ok("open", `[]`), []string{`:5: door "ssh": open: empty`}},
		{"bad open", ok("open", `["22:sctp"]`), []string{`open[0]`, `is not tcp, udp or icmp`}},
		{"zero duration", ok("st", `"0s"`), []string{`:4: door "ssh": seq_timeout: "0s" must be longer than zero`}},
		{"negative duration", ok("of", `"-5s"`), []string{`:6: door "ssh": open_for: "-5s" must be longer than zero`}},
		{"not a duration", ok("of", `"30"`), []string{`open_for: "30" is not a duration`}},
		{"sub-millisecond", ok("of", `"1500us"`), []string{`open_for`, `millisecond`}},
		{"huge open_for", ok("of", `"10000h"`), []string{`open_for`, `longer than`}},
		{"missing duration", "[[door]]\nname = \"ssh\"\nsequence = [\"7000\"]\nopen = [\"22\"]\nopen_for = \"1s\"\n", []string{`door "ssh": seq_timeout: missing`}},
		{"no doors", "nflog_group = 5\n", []string{`f.toml: door: no [[door]] is configured`}},
		{"bad door name", strings.Replace(ok("", ""), `"ssh"`, `"SSH-1"`, 1), []string{`door "SSH-1": name: "SSH-1" must be`}},
		{"missing name", strings.Replace(ok("", ""), "name = \"ssh\"\n", "", 1), []string{`door "#1": name: missing`}},
		{"duplicate name", ok("", "") + strings.Replace(ok("", ""), `"7000", "8000"`, `"7001"`, 1), []string{`:8: door "ssh": name: door name is already used by door #1`}},
		{"cross-door knock on opened port", ok("", "") + strings.NewReplacer(`"ssh"`, `"vpn"`, `["22"]`, `["1194:udp"]`, `"7000", "8000"`, `"22"`).Replace(ok("", "")),
			[]string{`door "vpn": sequence[0]: 22:tcp is also opened by door "ssh"`}},
		{"unknown top-level key", "tabel = \"x\"\n" + ok("", ""), []string{`f.toml:1: tabel: unknown key`}},
		{"unknown door key", ok("", "") + "sequnce = [\"1\"]\n", []string{`f.toml:7: door "ssh": sequnce: unknown key in [[door]]`}},
		{"wrong door key type", ok("of", `30`), []string{`f.toml:6: door "ssh": open_for: want a string`}},
		{"max_grants", ok("", "") + "max_grants = 0\n", []string{`f.toml:7: door "ssh": max_grants: 0 is out of range 1-4194304`}},
		{"nflog group range", "nflog_group = 65536\n" + ok("", ""), []string{`f.toml:1: nflog_group: 65536 is out of range 0-65535`}},
		{"table name", "table = \"my table\"\n" + ok("", ""), []string{`f.toml:1: table: "my table" must be`}},
		{"max_tracked zero", "max_tracked = 0\n" + ok("", ""), []string{`f.toml:1: max_tracked: 0 is out of range`}},
		{"syntax error", "nflog_group = \n", []string{`f.toml:1: `}},
		{"wrong type", "nflog_group = \"7113\"\n" + ok("", ""), []string{`f.toml:1: nflog_group: incompatible types`}},
		{"own_table not a bool", "own_table = \"yes\"\n" + ok("", ""), []string{`f.toml:1: own_table: incompatible types`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("f.toml", []byte(tt.toml))
			if err == nil {
				t.Fatalf("accepted:\n%s\nas %+v", tt.toml, cfg)
			}
			if cfg != nil {
				t.Errorf("returned a config along with the error")
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				if containsAll(line, tt.want) {
					return
				}
			}
			t.Errorf("no error line contains all of %q; got:\n%v", tt.want, err)
		})
	}
}

func TestEveryErrorIsReported(t *testing.T) {
	_, err := Parse("f.toml", []byte("nflog_group = -1\n[[door]]\nname = \"a\"\nsequence = [\"0\"]\nopen = []\nseq_timeout = \"x\"\nopen_for = \"0s\"\n"))
	if err == nil {
		t.Fatal("accepted")
	}
	if n := len(strings.Split(err.Error(), "\n")); n != 5 {
		t.Errorf("got %d error lines, want 5 (nflog_group, sequence[0], open, seq_timeout, open_for):\n%v", n, err)
	}
	var ce *Error
	if !errors.As(err, &ce) || ce.File != "f.toml" {
		t.Errorf("errors are not *Error naming the file: %#v", err)
	}
}

func TestParsePort(t *testing.T) {
	for in, want := range map[string]Port{
		"60000-61000:udp": {Num: 60000, Last: 61000, Proto: UDP},
		"1":               {Num: 1, Proto: TCP}, "65535:udp": {Num: 65535, Proto: UDP}, " 22:tcp ": {Num: 22, Proto: TCP}, "53:UDP": {Num: 53, Proto: UDP},
	} {
		got, err := ParsePort(in)
		if err != nil || got != want {
			t.Errorf("ParsePort(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", ":tcp", "22:", "22:tcp:x", "0x16", "1e3", "99999999999", "22 :tcp"} {
		if p, err := ParsePort(in); err == nil {
			t.Errorf("ParsePort(%q) = %v, want an error", in, p)
		}
	}
}

func TestParseKnock(t *testing.T) {
	for in, want := range map[string]Port{
		"7000": {Num: 7000, Proto: TCP}, "8000:udp": {Num: 8000, Proto: UDP}, "0:icmp": {Num: 0, Proto: ICMP}, "1000:ICMP": {Num: 1000, Proto: ICMP},
	} {
		got, err := ParseKnock(in)
		if err != nil || got != want {
			t.Errorf("ParseKnock(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"7000-7001", "-1:icmp", "65508:icmp", "x:icmp", "0"} {
		if p, err := ParseKnock(in); err == nil {
			t.Errorf("ParseKnock(%q) = %v, want an error", in, p)
		}
	}
	seq, err := ParseSequence(" 7000:tcp,8000:udp  9000 ,, 64:icmp ")
	if err != nil || len(seq) != 4 || seq[1] != (Port{Num: 8000, Proto: UDP}) || seq[3] != (Port{Num: 64, Proto: ICMP}) {
		t.Errorf("ParseSequence = %v, %v", seq, err)
	}
	for _, in := range []string{"", " , ", "7000,99999", strings.Repeat("1,", 33)} {
		if seq, err := ParseSequence(in); err == nil {
			t.Errorf("ParseSequence(%q) = %v, want an error", in, seq)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(DefaultTOML())
	f.Add([]byte(minimal))
	f.Add([]byte("[[door]]\nname=\"a\"\nsequence=[\"1:udp\",\"2\"]\nseq_timeout=\"1ms\"\nopen=[\"3\"]\nopen_for=\"1s\"\n[[door]]\n"))
	// A rotating door and an SPA door (their key files do not exist: the
	// fuzzer explores the other keys' validation around them).
	f.Add([]byte("[[door]]\nname=\"r\"\nsequence_key_file=\"/nonexistent/r.key\"\nsequence_length=3\nsequence_ports=\"1000-1999:udp\"\nrotate_every=\"2s\"\nseq_timeout=\"1s\"\nopen=[\"22\"]\nopen_for=\"1s\"\n" +
		"[[door]]\nname=\"s\"\nspa_port=\"62201:udp\"\nkey_file=\"/nonexistent/s.key\"\nopen=[\"23\"]\nopen_for=\"1s\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.toml", data)
		if err != nil {
			if cfg != nil {
				t.Fatal("config returned with an error")
			}
			return
		}
		// Whatever validated must satisfy the invariants the rest of the
		// daemon relies on.
		if len(cfg.Doors) == 0 || cfg.MaxTracked < 1 || cfg.Table == "" {
			t.Fatalf("invalid config accepted: %+v", cfg)
		}
		for _, d := range cfg.Doors {
			if len(d.Open) == 0 || d.OpenFor <= 0 || !doorNameRE.MatchString(d.Name) || d.MaxGrants < 1 || d.Kind == nil {
				t.Fatalf("invalid door accepted: %+v", d)
			}
			switch k := d.Kind.(type) {
			case *Sequence:
				if (len(k.Sequence) == 0) == (k.OneTimeFile == "") || k.SeqTimeout <= 0 {
					t.Fatalf("invalid knock door accepted: %+v", k)
				}
				for _, p := range k.Sequence {
					if (p.Num == 0 && p.Proto != ICMP) || (p.Proto != TCP && p.Proto != UDP && p.Proto != ICMP) || p.Last != 0 {
						t.Fatalf("invalid knock accepted: %+v", p)
					}
				}
			case *SPA:
				if k.Port.Proto != UDP || k.Port.Num == 0 || !filepath.IsAbs(k.KeyFile) || k.MaxAge <= 0 {
					t.Fatalf("invalid SPA door accepted: %+v", k)
				}
			case *Rotating:
				if k.Ports.Last <= k.Ports.Num || k.Every < MinRotateEvery || k.SeqTimeout > k.Every || !filepath.IsAbs(k.KeyFile) {
					t.Fatalf("invalid rotating door accepted: %+v", k)
				}
			default:
				t.Fatalf("door of unknown kind %T accepted", k)
			}
			for _, p := range d.Open {
				if p.Num == 0 || (p.Proto != TCP && p.Proto != UDP) || (p.Last != 0 && p.Last <= p.Num) {
					t.Fatalf("invalid opened port accepted: %+v", p)
				}
			}
		}
	})
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

func doorEqual(a, b Door) bool {
	ka, oka := a.Kind.(*Sequence)
	kb, okb := b.Kind.(*Sequence)
	return a.Name == b.Name && a.OpenFor == b.OpenFor && slices.Equal(a.Open, b.Open) &&
		oka && okb && ka.SeqTimeout == kb.SeqTimeout && slices.Equal(ka.Sequence, kb.Sequence)
}

// TestREADMEShowsDefaultConfig keeps the README's configuration reference
// true: its toml block must be the embedded default config.
func TestREADMEShowsDefaultConfig(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	want := "```toml\n" + string(DefaultTOML()) + "```\n"
	if !strings.Contains(string(readme), want) {
		t.Errorf("README.md has no ```toml block equal to config/default.toml; paste `nftknockd -print-config` into it")
	}
}

// TestKnockdDoorKeys covers the keys of knockd's doors: what they parse
// into, and what is refused.
func TestKnockdDoorKeys(t *testing.T) {
	dir := t.TempDir()
	ot := filepath.Join(dir, "otp")
	if err := os.WriteFile(ot, []byte("# used ones are commented out\n7100:udp,7200\n7300 7400:udp\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := `
[[door]]
name = "ssh"
sequence = ["7000", "1000:icmp", "9000:udp"]
close_sequence = ["9100", "9200:udp"]
seq_timeout = "5s"
tcp_flags = "syn,!ack,!rst"
interface = "eth0"
open = ["22:tcp", "60000-61000:udp"]
open_to = "anyone"
open_for = "1m"
always_allow = ["192.168.1.0/24", "fd00::/8", "10.1.2.3", "2001:db8::1"]
on_open = ["/usr/local/bin/notify", "{door}", "{src}"]
on_close = ["/usr/local/bin/notify", "closed"]
hook_timeout = "3s"

[[door]]
name = "otp"
one_time_sequences = "` + ot + `"
seq_timeout = "5s"
open = ["2222"]
open_for = "10s"
`
	cfg, err := Parse("f.toml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.Doors[0]
	k := d.Kind.(*Sequence)
	once := cfg.Doors[1].Kind.(*Sequence)
	checks := map[string]bool{
		"sequence":      len(k.Sequence) == 3 && k.Sequence[1] == (Port{Num: 1000, Proto: ICMP}),
		"close":         len(k.CloseSequence) == 2 && k.CloseSequence[1] == (Port{Num: 9200, Proto: UDP}),
		"tcp_flags":     k.TCPFlags == TCPFlags{Mask: FlagSYN | FlagACK | FlagRST, Want: FlagSYN},
		"interface":     d.Interface == "eth0",
		"open range":    d.Open[1] == (Port{Num: 60000, Last: 61000, Proto: UDP}),
		"open_to":       d.OpenToAnyone,
		"always_allow":  len(d.AlwaysAllow) == 4 && d.AlwaysAllow[2] == netip.MustParsePrefix("10.1.2.3/32") && d.AlwaysAllow[3] == netip.MustParsePrefix("2001:db8::1/128"),
		"on_open":       len(d.OnOpen) == 3 && d.OnOpen[2] == "{src}",
		"hook_timeout":  d.HookTimeout == 3*time.Second,
		"default flags": once.TCPFlags == DefaultTCPFlags,
		"one-time":      once.OneTimeFile == ot && len(once.Sequence) == 0,
		"default hooks": cfg.Doors[1].HookTimeout == defaultHookTimeout && cfg.Doors[1].OnOpen == nil,
		"max_grants":    d.MaxGrants == DefaultMaxGrants,
	}
	for name, ok := range checks {
		if !ok {
			t.Errorf("%s: not parsed as expected: %+v", name, cfg.Doors)
		}
	}

	base := "[[door]]\nname = \"ssh\"\nsequence = [\"7000\"]\nseq_timeout = \"5s\"\nopen = [\"22\"]\nopen_for = \"1m\"\n"
	for _, tt := range []struct{ name, extra, want string }{
		{"flag name", `tcp_flags = "syn,fyn"`, `tcp_flags: "syn,fyn": "fyn" is not one of fin, syn, rst, psh, ack, urg`},
		{"flag twice", `tcp_flags = "syn,!syn"`, `tcp_flags: "syn,!syn" names syn twice`},
		{"open_to", `open_to = "everyone"`, `open_to: "everyone" is neither "source"`},
		{"network host bits", `always_allow = ["192.168.1.5/24"]`, `always_allow[0]: "192.168.1.5/24" has host bits set: did you mean "192.168.1.0/24"?`},
		{"network garbage", `always_allow = ["lan"]`, `always_allow[0]: "lan" is neither an address nor a network`},
		{"interface", `interface = "eth0/1"`, `interface: "eth0/1" is not an interface name`},
		{"long interface", `interface = "abcdefghijklmnop"`, `interface: "abcdefghijklmnop" is not an interface name`},
		{"relative hook", `on_open = ["notify", "{src}"]`, `on_open[0]: "notify" must be an absolute path`},
		{"empty hook", `on_close = []`, `on_close: empty`},
		{"close same as open", `close_sequence = ["7000"]`, `close_sequence: is the same as sequence`},
		{"close on opened port", `close_sequence = ["22"]`, `close_sequence[0]: 22:tcp is also opened by door "ssh"`},
		{"both sequences", `one_time_sequences = "` + ot + `"`, `a door has either sequence or one_time_sequences, not both`},
		{"hook timeout", `hook_timeout = "1h"`, `hook_timeout: "1h" is longer than`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("f.toml", []byte(base+tt.extra+"\n"))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}

	rel := strings.Replace(base, `sequence = ["7000"]`, `one_time_sequences = "otp.txt"`, 1)
	if _, err := Parse("f.toml", []byte(rel)); err == nil || !strings.Contains(err.Error(), `one_time_sequences: "otp.txt" must be an absolute path`) {
		t.Errorf("relative one_time_sequences: %v", err)
	}
}
