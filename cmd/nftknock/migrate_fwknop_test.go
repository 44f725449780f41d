package main

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock/engine"
	"github.com/nftknock/nftknock/knock/fwknop"
)

// fwknopDoor is a door migrate -fwknop prints: exactly these keys.
type fwknopDoor struct {
	Name          string   `toml:"name"`
	Port          string   `toml:"fwknop_port"`
	KeyFile       string   `toml:"fwknop_key_file"`
	HMACKeyFile   string   `toml:"fwknop_hmac_key_file"`
	MaxAge        string   `toml:"fwknop_max_age"`
	Open          []string `toml:"open"`
	OpenFor       string   `toml:"open_for"`
	MaxOpenFor    string   `toml:"fwknop_max_open_for"`
	Source        []string `toml:"fwknop_source"`
	RequireSource *bool    `toml:"fwknop_require_source"`
}

// goldenKeysDir stands for the test's keys directory in the golden files.
const goldenKeysDir = "/etc/nftknock"

// migrateFwknopRun runs migrate -fwknop on testdata/migrate_fwknop/NAME.conf
// (with NAME.fwknopd.conf if there is one) into a fresh keys directory.
func migrateFwknopRun(t *testing.T, name string) (code int, out, stderr, keysDir string) {
	t.Helper()
	keysDir = filepath.Join(t.TempDir(), "keys")
	args := []string{"migrate", "-fwknop", "testdata/migrate_fwknop/" + name + ".conf", "-keys-dir", keysDir}
	if d := "testdata/migrate_fwknop/" + name + ".fwknopd.conf"; fileExists(d) {
		args = append(args, "-fwknopd-conf", d)
	}
	code, out, stderr, _ = run(t, args...)
	return code, out, stderr, keysDir
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// TestMigrateFwknopGolden converts every testdata/migrate_fwknop/*.conf and
// compares stdout, stderr and the key files written with the golden
// NAME.toml, NAME.stderr and NAME.keys; every door printed must be
// well-formed and its key files must hold keys the decoder takes.
func TestMigrateFwknopGolden(t *testing.T) {
	confs, _ := filepath.Glob("testdata/migrate_fwknop/*.conf")
	var names []string
	for _, c := range confs {
		if !strings.HasSuffix(c, ".fwknopd.conf") {
			names = append(names, strings.TrimSuffix(filepath.Base(c), ".conf"))
		}
	}
	if len(names) == 0 {
		t.Fatal("no testdata")
	}
	wantCode := map[string]int{"debian": exitFail, "refusals": exitFail}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			code, out, stderr, keysDir := migrateFwknopRun(t, name)
			if code != wantCode[name] {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, wantCode[name], stderr)
			}
			out = strings.ReplaceAll(out, keysDir, goldenKeysDir)
			stderr = strings.ReplaceAll(stderr, keysDir, goldenKeysDir)
			keys := listKeyFiles(t, keysDir)
			base := "testdata/migrate_fwknop/" + name
			compareGolden(t, base+".toml", out)
			compareGolden(t, base+".stderr", stderr)
			compareGolden(t, base+".keys", keys)
			doors := checkFwknopTOML(t, out)
			if len(doors)*2 != strings.Count(keys, "\n") {
				t.Errorf("%d doors, key files:\n%s", len(doors), keys)
			}
			for _, d := range doors {
				for _, p := range []string{d.KeyFile, d.HMACKeyFile} {
					real := strings.Replace(p, goldenKeysDir, keysDir, 1)
					if _, err := fwknop.ReadKeyFile(real); err != nil {
						t.Errorf("door %s: %v", d.Name, err)
					}
				}
			}
			// No secret reaches stdout or stderr.
			for _, secret := range []string{"not-shown-anywhere", "not-shown-either", "hunter2", "correct horse", "another passphrase"} {
				if strings.Contains(out, secret) || strings.Contains(stderr, secret) {
					t.Errorf("%q is printed", secret)
				}
			}
		})
	}
}

func compareGolden(t *testing.T, golden, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (go test -update writes it)", err)
	}
	if got != string(want) {
		t.Errorf("differs from %s (go test -update rewrites it):\n%s", golden, got)
	}
}

// listKeyFiles lists the keys directory as "NAME MODE CONTENT" lines.
func listKeyFiles(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Count(string(data), "\n") != 1 || !strings.HasSuffix(string(data), "\n") {
			t.Errorf("%s: not one line: %q", e.Name(), data)
		}
		fmt.Fprintf(&b, "%s %04o %s", e.Name(), fi.Mode().Perm(), data)
	}
	return b.String()
}

var doorNameRE = regexp.MustCompile(`^[a-z0-9_]{1,32}$`)

// checkFwknopTOML decodes the doors with nothing left over and checks
// every value is of the form the lead's config takes.
func checkFwknopTOML(t *testing.T, out string) []fwknopDoor {
	t.Helper()
	var cfg struct {
		Door []fwknopDoor `toml:"door"`
	}
	md, err := toml.Decode(out, &cfg)
	if err != nil {
		t.Fatalf("not TOML: %v\n%s", err, out)
	}
	if u := md.Undecoded(); len(u) > 0 {
		t.Errorf("keys other than the fwknop door's: %v", u)
	}
	names := map[string]bool{}
	for _, d := range cfg.Door {
		if !doorNameRE.MatchString(d.Name) || names[d.Name] {
			t.Errorf("door name %q", d.Name)
		}
		names[d.Name] = true
		if p, err := config.ParsePort(d.Port); err != nil || p.Proto != config.UDP {
			t.Errorf("%s: fwknop_port %q: %v", d.Name, d.Port, err)
		}
		for _, f := range []string{d.KeyFile, d.HMACKeyFile} {
			if !filepath.IsAbs(f) {
				t.Errorf("%s: key file %q is not absolute", d.Name, f)
			}
		}
		for _, dur := range []string{d.MaxAge, d.OpenFor, d.MaxOpenFor} {
			if v, err := time.ParseDuration(dur); err != nil || v <= 0 {
				t.Errorf("%s: duration %q: %v", d.Name, dur, err)
			}
		}
		if len(d.Open) == 0 || len(d.Source) == 0 || d.RequireSource == nil {
			t.Errorf("%s: open %v, source %v, require_source %v", d.Name, d.Open, d.Source, d.RequireSource)
		}
		for _, o := range d.Open {
			if _, err := config.ParsePort(o); err != nil {
				t.Errorf("%s: open %q: %v", d.Name, o, err)
			}
		}
		for _, s := range d.Source {
			if p, err := netip.ParsePrefix(s); err != nil || p != p.Masked() {
				t.Errorf("%s: source %q: %v", d.Name, s, err)
			}
		}
	}
	// The daemon's own parser takes it, door for door.
	if len(cfg.Door) > 0 {
		parsed, err := config.Parse("migrated.toml", []byte(out))
		if err != nil {
			t.Errorf("the daemon's config parser refuses the output: %v", err)
		} else if len(parsed.Doors) != len(cfg.Door) {
			t.Errorf("the daemon reads %d doors, migrate wrote %d", len(parsed.Doors), len(cfg.Door))
		}
	}
	return cfg.Door
}

// TestMigrateFwknopOutputRuns: what migrate -fwknop writes for two stanzas
// is a configuration the daemon starts with: it validates, its key files
// pass the daemon's checks (root's, mode 0600) and load, its plan lays out
// (the two doors share fwknopd's port: one log rule).
func TestMigrateFwknopOutputRuns(t *testing.T) {
	code, out, stderr, keysDir := migrateFwknopRun(t, "two_stanzas")
	if code != exitOK {
		t.Fatalf("exit %d:\n%s", code, stderr)
	}
	path := filepath.Join(filepath.Dir(keysDir), "nftknock.toml")
	if err := os.WriteFile(path, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	p, err := engine.Plan(cfg)
	if err != nil {
		t.Fatalf("the daemon would not start with it: %v", err)
	}
	logs := 0
	for _, r := range p.Chains[0].Rules {
		if strings.HasSuffix(r.Comment, ": single-packet authorization") {
			logs++
			if !strings.HasPrefix(r.Comment, "doors fw, fw_2: ") {
				t.Errorf("the shared port's log rule: %q", r.Comment)
			}
		}
	}
	if logs != 1 {
		t.Errorf("%d log rules for the shared port, want 1", logs)
	}
}

// TestMigrateFwknopKeysOpenClientPackets: the key files migrate writes for
// two stanzas open the stock client's packets (knock/fwknop's golden
// ones), each its own; each door allows what its packet asks for.
func TestMigrateFwknopKeysOpenClientPackets(t *testing.T) {
	code, out, stderr, keysDir := migrateFwknopRun(t, "two_stanzas")
	if code != exitOK {
		t.Fatalf("exit %d:\n%s", code, stderr)
	}
	doors := checkFwknopTOML(t, out)
	if len(doors) != 2 {
		t.Fatalf("%d doors", len(doors))
	}
	var keys []*fwknop.Key
	for _, d := range doors {
		enc, err := fwknop.ReadKeyFile(d.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		mac, err := fwknop.ReadKeyFile(d.HMACKeyFile)
		if err != nil {
			t.Fatal(err)
		}
		k, err := fwknop.NewKey(enc, mac)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
		if !strings.HasPrefix(d.KeyFile, keysDir) {
			t.Errorf("%s is not in %s", d.KeyFile, keysDir)
		}
	}
	for i, name := range []string{"access", "other_door"} {
		payload, received := clientPacket(t, name)
		j, err := fwknop.Match(keys, payload)
		if err != nil || j != i {
			t.Fatalf("%s: matched door %d, %v; want %d", name, j, err, i)
		}
		r, err := fwknop.Open(keys[j], payload, received, 60*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, a := range r.Access {
			want := fmt.Sprintf("%d:%s", a.Port, a.Proto)
			if !slices.Contains(doors[j].Open, want) {
				t.Errorf("%s asks for %s; door %s opens %v", name, want, doors[j].Name, doors[j].Open)
			}
		}
		if _, err := fwknop.Open(keys[1-j], payload, received, 60*time.Second); err != fwknop.ErrHMAC {
			t.Errorf("%s with the other door's keys: %v", name, err)
		}
	}
}

// clientPacket reads a packet the stock client made from knock/fwknop's
// golden files.
func clientPacket(t *testing.T, name string) ([]byte, time.Time) {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "knock", "fwknop", "testdata", "golden", name+".txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var payload []byte
	var received time.Time
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ": ")
		switch k {
		case "payload":
			payload = []byte(v)
		case "received":
			sec, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			received = time.Unix(sec, 0)
		}
	}
	if payload == nil || received.IsZero() {
		t.Fatalf("%s: no payload", name)
	}
	return payload, received
}

func TestMigrateFwknopUsage(t *testing.T) {
	dir := t.TempDir()
	conf := "testdata/migrate_fwknop/single.conf"
	for _, c := range []struct {
		args []string
		code int
		err  string
	}{
		{[]string{"migrate", "-fwknop", conf}, exitUsage, "needs -keys-dir"},
		{[]string{"migrate", "-keys-dir", dir}, exitUsage, "go with -fwknop"},
		{[]string{"migrate", "-fwknopd-conf", conf}, exitUsage, "go with -fwknop"},
		{[]string{"migrate", "-fwknop", conf, "-keys-dir", dir, "extra.conf"}, exitUsage, "takes no other file"},
		{[]string{"migrate", "-fwknop", conf, "-keys-dir", dir + "/a\"b"}, exitUsage, "cannot be written into the TOML"},
		{[]string{"migrate", "-fwknop", filepath.Join(dir, "missing"), "-keys-dir", dir}, exitFail, "no such file"},
		{[]string{"migrate", "-fwknop", conf, "-fwknopd-conf", filepath.Join(dir, "missing"), "-keys-dir", dir}, exitFail, "no such file"},
	} {
		code, out, stderr, _ := run(t, c.args...)
		if code != c.code || !strings.Contains(stderr, c.err) || out != "" {
			t.Errorf("%v: exit %d, stderr %q, stdout %q; want %d and %q", c.args, code, stderr, out, c.code, c.err)
		}
	}
	if code, out, _, _ := run(t, "help", "migrate"); code != exitOK || !strings.Contains(out, "-keys-dir") || !strings.Contains(out, "-fwknop") {
		t.Errorf("help migrate: %d\n%s", code, out)
	}
}

// TestMigrateFwknopKeepsKeys: run twice into one directory, migrate keeps
// the files; a file holding another key is never overwritten, and then
// nothing is printed.
func TestMigrateFwknopKeepsKeys(t *testing.T) {
	dir := t.TempDir()
	args := []string{"migrate", "-fwknop", "testdata/migrate_fwknop/single.conf", "-keys-dir", dir}
	code, first, _, _ := run(t, args...)
	if code != exitOK {
		t.Fatalf("first run: exit %d", code)
	}
	if code, again, stderr, _ := run(t, args...); code != exitOK || again != first {
		t.Fatalf("second run: exit %d, %s\n%s", code, stderr, again)
	}
	if err := os.WriteFile(filepath.Join(dir, "fw.hmac"), []byte("b3RoZXI=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, stderr, _ := run(t, args...)
	if code != exitFail || out != "" || !strings.Contains(stderr, "holds another key") {
		t.Errorf("another key: exit %d, stderr %q, stdout %q", code, stderr, out)
	}
	if data, _ := os.ReadFile(filepath.Join(dir, "fw.hmac")); string(data) != "b3RoZXI=\n" {
		t.Errorf("the other key was overwritten: %q", data)
	}
}

// TestMigrateFwknopRefusesValues: a value migrate cannot read leaves its
// stanza (or the port) unconverted and says which and why.
func TestMigrateFwknopRefusesValues(t *testing.T) {
	const keys = "KEY_BASE64 hEZhtxH4vRmiC4Pa0ftba5ibqzI7q3cZQHeOc0R6urk=\nHMAC_KEY_BASE64 x5ajJPm+vspjsf186AAXHzJPmkGU2d/zHC9QKuDkzPEPUF46aoS4rSAZLzZV4as+8HIQF4SQoz+GVoyAQjQoMQ==\n"
	var many strings.Builder
	for i := 0; i < maxFwknopDoors+10; i++ {
		fmt.Fprintf(&many, "SOURCE ANY\nOPEN_PORTS tcp/%d\n%s", i+1, keys)
	}
	for _, c := range []struct {
		name, access, daemon string
		doors                int
		want                 string
	}{
		{"source", "SOURCE 300.1.1.1\nOPEN_PORTS tcp/22\n" + keys, "", 0, `SOURCE "300.1.1.1": not an address`},
		{"port", "SOURCE ANY\nOPEN_PORTS tcp/0\n" + keys, "", 0, `OPEN_PORTS: "tcp/0" is not proto/port`},
		{"protocol", "SOURCE ANY\nOPEN_PORTS icmp/8\n" + keys, "", 0, `"icmp/8" is not proto/port`},
		{"timeout", "SOURCE ANY\nOPEN_PORTS tcp/22\nFW_ACCESS_TIMEOUT -5\n" + keys, "", 0, `FW_ACCESS_TIMEOUT "-5" is not a number of seconds`},
		{"cap", "SOURCE ANY\nOPEN_PORTS tcp/22\nMAX_FW_TIMEOUT 99999999999\n" + keys, "", 0, `MAX_FW_TIMEOUT "99999999999"`},
		{"key", "SOURCE ANY\nOPEN_PORTS tcp/22\nKEY_BASE64 !!!!\nHMAC_KEY_BASE64 AAAA\n", "", 0, "KEY_BASE64: not base64"},
		{"key too long", "SOURCE ANY\nOPEN_PORTS tcp/22\nKEY_BASE64 " + strings.Repeat("A", 64) + "\nHMAC_KEY_BASE64 AAAA\n", "", 0, "holds 48 bytes; fwknop takes at most 32"},
		{"both keys", "SOURCE ANY\nOPEN_PORTS tcp/22\nKEY pw\n" + keys, "", 0, "both KEY_BASE64 and KEY"},
		{"semicolon passphrase", "SOURCE ANY\nOPEN_PORTS tcp/22\nKEY pass;word\nHMAC_KEY_BASE64 AAAA\n", "", 0, "KEY holds a ';'"},
		{"require source", "SOURCE ANY\nOPEN_PORTS tcp/22\nREQUIRE_SOURCE_ADDRESS maybe\n" + keys, "", 0, `REQUIRE_SOURCE_ADDRESS "maybe" is not Y or N`},
		{"age", "SOURCE ANY\nOPEN_PORTS tcp/22\n" + keys, "MAX_SPA_PACKET_AGE x;\n", 1, `MAX_SPA_PACKET_AGE "x" is not a number`},
		{"range", "SOURCE ANY\nOPEN_PORTS tcp/22\n" + keys, "PCAP_FILTER udp dst portrange 1-2;\n", 1, "a port range"},
		{"udp server port", "SOURCE ANY\nOPEN_PORTS tcp/22\n" + keys, "ENABLE_UDP_SERVER Y;\nUDPSERV_PORT 99999;\n", 1, `UDPSERV_PORT "99999" is not a port`},
		{"long line", "SOURCE " + strings.Repeat("1", 70000) + "\n", "", 0, "token too long"},
		{"too many", many.String(), "", maxFwknopDoors, "a configuration has at most 256 doors"},
	} {
		res := migrateFwknop("access.conf", []byte(c.access), "fwknopd.conf", []byte(c.daemon), "/etc/nftknock")
		all := strings.Join(res.warnings, "\n")
		if res.ok || !strings.Contains(all, c.want) && !strings.Contains(string(res.toml), c.want) {
			t.Errorf("%s: ok %v, warnings:\n%s", c.name, res.ok, all)
		}
		if got := strings.Count(string(res.toml), "[[door]]"); got != c.doors || len(res.keys) != 2*c.doors {
			t.Errorf("%s: %d doors, %d key files; want %d doors", c.name, got, len(res.keys), c.doors)
		}
	}
}

func TestPcapFilterPort(t *testing.T) {
	for _, c := range []struct {
		filter string
		port   int
		err    string
	}{
		{"udp port 62201", 62201, ""},
		{"udp dst port 40000", 40000, ""},
		{"UDP and dst port 1", 1, ""},
		{"port 62201", 62201, ""},
		{"udp dst portrange 10000-65535", 0, "port range"},
		{"tcp port 62201", 0, "TCP"},
		{"udp port 62201 or udp port 62202", 0, "not of the form"},
		{"udp port 0", 0, "not a port"},
		{"udp port 65536", 0, "not a port"},
		{"", 0, "not of the form"},
	} {
		p, err := pcapFilterPort(c.filter)
		if c.err == "" && (err != nil || p != c.port) || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%q: %d, %v; want %d, %q", c.filter, p, err, c.port, c.err)
		}
	}
}

// FuzzMigrateFwknop: any access.conf and fwknopd.conf convert without a
// panic into TOML that decodes, with key files of one line each.
func FuzzMigrateFwknop(f *testing.F) {
	for _, name := range []string{"debian", "single", "two_stanzas", "refusals"} {
		access, err := os.ReadFile("testdata/migrate_fwknop/" + name + ".conf")
		if err != nil {
			f.Fatal(err)
		}
		daemon, _ := os.ReadFile("testdata/migrate_fwknop/" + name + ".fwknopd.conf")
		f.Add(access, daemon)
	}
	f.Fuzz(func(t *testing.T, access, daemon []byte) {
		res := migrateFwknop("access.conf", access, "fwknopd.conf", daemon, "/etc/nftknock")
		var cfg map[string]any
		if _, err := toml.Decode(string(res.toml), &cfg); err != nil {
			t.Fatalf("not TOML: %v\n%s", err, res.toml)
		}
		if len(res.keys) > 2*maxFwknopDoors {
			t.Fatalf("%d key files", len(res.keys))
		}
		for _, k := range res.keys {
			if strings.Count(k.content, "\n") != 1 || strings.ContainsAny(k.name, "/\x00") {
				t.Fatalf("key file %q: %q", k.name, k.content)
			}
		}
		for _, w := range res.warnings {
			if strings.ContainsFunc(w, func(r rune) bool { return r < 0x20 }) {
				t.Fatalf("warning with a control character: %q", w)
			}
		}
	})
}
