package fwknop

import (
	"bufio"
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "TestGolden: remake testdata/golden/*.txt with the stock fwknop client (apt-get install fwknop-client); TestFuzzSeeds: rewrite testdata/fuzz")

// goldenMaxAge is fwknopd's default MAX_SPA_PACKET_AGE.
const goldenMaxAge = 120 * time.Second

// goldenCase is one packet the stock client made: the arguments it was
// given (besides -D, -p and the keys, which goldenArgs adds) and what Open
// must make of it.
type goldenCase struct {
	name string
	keys string // a key pair of testdata/golden/keys.txt
	args []string
	want error
	// For an accepted packet (want nil): what the command asked for.
	allow   string // "" for -s
	access  string
	typ     MessageType
	timeout time.Duration
	user    string // "" means the client's login name, taken from its dump
}

var goldenCases = []goldenCase{
	{name: "access", keys: "a", args: []string{"-A", "tcp/22", "-a", "192.0.2.2"},
		allow: "192.0.2.2", access: "tcp/22", typ: TypeAccess},
	{name: "source", keys: "a", args: []string{"-A", "tcp/22", "-s"},
		access: "tcp/22", typ: TypeAccess},
	{name: "client_timeout", keys: "a", args: []string{"-A", "tcp/22", "-a", "192.0.2.2", "-f", "60"},
		allow: "192.0.2.2", access: "tcp/22", typ: TypeClientTimeoutAccess, timeout: time.Minute},
	{name: "two_ports", keys: "a", args: []string{"-A", "tcp/22,udp/53", "-a", "192.0.2.2"},
		allow: "192.0.2.2", access: "tcp/22,udp/53", typ: TypeAccess},
	{name: "spoof_user", keys: "a", args: []string{"-A", "tcp/2222", "-a", "198.51.100.7", "-U", "alice"},
		allow: "198.51.100.7", access: "tcp/2222", typ: TypeAccess, user: "alice"},
	{name: "other_door", keys: "b", args: []string{"-A", "udp/1194", "-a", "192.0.2.3"},
		allow: "192.0.2.3", access: "udp/1194", typ: TypeAccess},
	{name: "passphrase", keys: "pass", args: []string{"-A", "tcp/22", "-a", "192.0.2.2"},
		allow: "192.0.2.2", access: "tcp/22", typ: TypeAccess},
	{name: "command", keys: "a", args: []string{"--server-cmd", "echo hi", "-a", "192.0.2.2"}, want: ErrCommand},
	{name: "nat", keys: "a", args: []string{"-A", "tcp/22", "-a", "192.0.2.2", "-N", "10.0.0.5:22"}, want: ErrNAT},
	{name: "nat_client_timeout", keys: "a", args: []string{"-A", "tcp/22", "-a", "192.0.2.2", "-N", "10.0.0.5:22", "-f", "60"}, want: ErrNAT},
	{name: "nat_local", keys: "a", args: []string{"-A", "tcp/22", "-a", "192.0.2.2", "--nat-local"}, want: ErrNAT},
	{name: "nat_local_client_timeout", keys: "a", args: []string{"-A", "tcp/22", "-a", "192.0.2.2", "--nat-local", "-f", "60"}, want: ErrNAT},
	{name: "stale", keys: "a", args: []string{"-A", "tcp/22", "-a", "192.0.2.2", "--time-offset-minus", "10m"}, want: ErrStale,
		allow: "192.0.2.2", access: "tcp/22", typ: TypeAccess},
	{name: "future", keys: "a", args: []string{"-A", "tcp/22", "-a", "192.0.2.2", "--time-offset-plus", "10m"}, want: ErrStale,
		allow: "192.0.2.2", access: "tcp/22", typ: TypeAccess},
	{name: "digest_sha512", keys: "a", args: []string{"-A", "tcp/22", "-a", "192.0.2.2", "-m", "sha512"}, want: ErrDigestType},
	{name: "hmac_sha512", keys: "a", args: []string{"-A", "tcp/22", "-a", "192.0.2.2", "--hmac-digest-type", "sha512"}, want: ErrHMAC},
}

// goldenKeys are the test key pairs (not secrets): a and b from `fwknop
// --no-rc-file --key-gen`, pass a passphrase for the client's
// --key-rijndael.
type goldenKeys struct{ enc, hmac string }

func (g goldenKeys) args() []string {
	if g.enc == passphrase {
		return []string{"--key-rijndael", g.enc, "--key-base64-hmac", g.hmac}
	}
	return []string{"--key-base64-rijndael", g.enc, "--key-base64-hmac", g.hmac}
}

func (g goldenKeys) key(t testing.TB) *Key {
	t.Helper()
	enc := []byte(g.enc)
	if g.enc != passphrase {
		var err error
		if enc, err = ParseKey([]byte(g.enc)); err != nil {
			t.Fatal(err)
		}
	}
	mac, err := ParseKey([]byte(g.hmac))
	if err != nil {
		t.Fatal(err)
	}
	k, err := NewKey(enc, mac)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

const passphrase = "correct horse battery staple"

const goldenDir = "testdata/golden"

func readGoldenKeys(t testing.TB) map[string]goldenKeys {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(goldenDir, "keys.txt"))
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]goldenKeys{}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || strings.HasPrefix(line, "#") {
			continue
		}
		k := keys[f[0]]
		switch f[1] {
		case "KEY_BASE64":
			k.enc = f[2]
		case "HMAC_KEY_BASE64":
			k.hmac = f[2]
		default:
			t.Fatalf("keys.txt: %q", line)
		}
		keys[f[0]] = k
	}
	if a, ok := keys["a"]; ok {
		keys["pass"] = goldenKeys{enc: passphrase, hmac: a.hmac}
	}
	return keys
}

// golden is one testdata/golden/NAME.txt: the packet as received and what
// the client said it put in it (its --verbose dump).
type golden struct {
	command  string
	received time.Time
	payload  []byte
	client   map[string]string
}

func readGolden(t testing.TB, name string) golden {
	t.Helper()
	path := filepath.Join(goldenDir, name+".txt")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test ./knock/fwknop/ -run 'TestGolden$' -update remakes it)", err)
	}
	g := golden{client: map[string]string{}}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		switch {
		case !ok || strings.HasPrefix(line, "#"):
		case k == "command":
			g.command = v
		case k == "received":
			sec, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("%s: received: %v", path, err)
			}
			g.received = time.Unix(sec, 0)
		case k == "payload":
			g.payload = []byte(v)
		case k == "client":
			ck, cv, _ := strings.Cut(v, ": ")
			g.client[ck] = cv
		}
	}
	if len(g.payload) == 0 || g.received.IsZero() || len(g.client) == 0 {
		t.Fatalf("%s: incomplete", path)
	}
	return g
}

// TestGolden opens every packet the stock client made and checks each
// field against the command that made it and against the client's own
// account of what it encoded.
func TestGolden(t *testing.T) {
	if *update {
		makeGolden(t)
	}
	keys := readGoldenKeys(t)
	for _, c := range goldenCases {
		t.Run(c.name, func(t *testing.T) {
			g := readGolden(t, c.name)
			k := keys[c.keys].key(t)
			if string(g.payload) != g.client["Final SPA Data"] {
				t.Fatalf("the payload received is not the one the client says it sent:\n%s\n%s", g.payload, g.client["Final SPA Data"])
			}
			r, err := Open(k, g.payload, g.received, goldenMaxAge)
			if err != c.want {
				t.Fatalf("Open: %v, want %v", err, c.want)
			}
			if c.want == ErrHMAC {
				return
			}
			checkPlaintext(t, k, g)
			if c.want == ErrStale {
				// The same packet, with the offset allowed for.
				r, err = Open(k, g.payload, g.received, 11*time.Minute)
				if err != nil {
					t.Fatalf("Open with a 11m window: %v", err)
				}
				if d := g.received.Sub(r.Time); d < 9*time.Minute && d > -9*time.Minute {
					t.Errorf("timestamp %v is not 10 minutes off the receipt %v", r.Time, g.received)
				}
			} else if c.want != nil {
				return
			}
			checkRequest(t, c, g, r)
		})
	}
}

// checkPlaintext decrypts the packet and compares it with what the client
// says it encrypted, then seals that plaintext again with the test encoder
// and the packet's salt: the result must be the packet, byte for byte.
func checkPlaintext(t *testing.T, k *Key, g golden) {
	t.Helper()
	s := new(scratch)
	if !k.authentic(s, g.payload) {
		t.Fatal("HMAC does not match")
	}
	plain, err := k.decrypt(s, len(saltedPrefix)+len(g.payload)-macLen)
	if err != nil {
		t.Fatal(err)
	}
	want := g.client["Encoded Data"] + ":" + g.client["SPA Data Digest"]
	if g.client["Digest Type"] == "3 (SHA256)" && withDigest(g.client["Encoded Data"]) != want {
		t.Errorf("the client's SPA Data Digest is not SHA-256 of its Encoded Data")
	}
	if string(plain) != want {
		t.Fatalf("plaintext\n%s\nthe client encoded\n%s", plain, want)
	}
	salt := append([]byte(nil), s.blob[8:16]...)
	if again := sealPlain(k.enc, nil, salt, plain); string(again[:len(again)-macLen]) != string(g.payload[:len(g.payload)-macLen]) {
		t.Errorf("the test encoder does not remake the client's ciphertext")
	}
}

func checkRequest(t *testing.T, c goldenCase, g golden, r Request) {
	t.Helper()
	user := c.user
	if user == "" {
		user = g.client["Username"]
	}
	if r.User != user || r.User != g.client["Username"] {
		t.Errorf("User %q, want %q (client: %q)", r.User, user, g.client["Username"])
	}
	if ts := strconv.FormatInt(r.Time.Unix(), 10); ts != g.client["Timestamp"] {
		t.Errorf("Time %v (%s), client: %s", r.Time, ts, g.client["Timestamp"])
	}
	if r.Type != c.typ || !strings.HasPrefix(g.client["Message Type"], strconv.Itoa(int(c.typ))+" ") {
		t.Errorf("Type %d, want %d (client: %s)", r.Type, c.typ, g.client["Message Type"])
	}
	var want netip.Addr
	if c.allow != "" {
		want = netip.MustParseAddr(c.allow)
	}
	if r.Allow != want {
		t.Errorf("Allow %v, want %v", r.Allow, want)
	}
	var acc []string
	for _, a := range r.Access {
		acc = append(acc, a.String())
	}
	if got := strings.Join(acc, ","); got != c.access {
		t.Errorf("Access %s, want %s", got, c.access)
	}
	allow := c.allow
	if allow == "" {
		allow = "0.0.0.0"
	}
	if msg := allow + "," + c.access; msg != g.client["Message String"] {
		t.Errorf("the client sent %q, the case says %q", g.client["Message String"], msg)
	}
	if r.ClientTimeout != c.timeout || strconv.Itoa(int(c.timeout/time.Second)) != g.client["Client Timeout"] {
		t.Errorf("ClientTimeout %v, want %v (client: %s)", r.ClientTimeout, c.timeout, g.client["Client Timeout"])
	}
	if r.Digest != sha256.Sum256(g.payload) {
		t.Errorf("Digest is not SHA-256 of the payload")
	}
}

// makeGolden runs the stock client for every case, each sending to a UDP
// socket of its own on 127.0.0.1, and writes what arrived.
func makeGolden(t *testing.T) {
	bin, err := exec.LookPath("fwknop")
	if err != nil {
		t.Fatalf("-update needs the stock client: apt-get install fwknop-client (%v)", err)
	}
	vcmd := exec.Command(bin, "--no-rc-file", "--no-save-args", "--version")
	vcmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	version, _ := vcmd.CombinedOutput()
	keys := readGoldenKeys(t)
	for _, c := range goldenCases {
		k, ok := keys[c.keys]
		if !ok {
			t.Fatalf("%s: no keys %q in keys.txt", c.name, c.keys)
		}
		conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		port := conn.LocalAddr().(*net.UDPAddr).Port
		args := append([]string{"--no-rc-file", "--no-save-args"}, c.args...)
		args = append(args, "-D", "127.0.0.1", "-p", strconv.Itoa(port), "--use-hmac")
		args = append(args, k.args()...)
		args = append(args, "--verbose")
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmd := exec.CommandContext(ctx, bin, args...)
		// The client writes ~/.fwknoprc on a first run without
		// --no-rc-file; keep it away from the real home all the same.
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			conn.Close()
			t.Fatalf("%s: %v\n%s", c.name, err, out)
		}
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 65536)
		n, _, err := conn.ReadFromUDP(buf)
		received := time.Now()
		conn.Close()
		if err != nil {
			t.Fatalf("%s: nothing arrived: %v\n%s", c.name, err, out)
		}
		writeGolden(t, c, string(version), args, received, buf[:n], out)
	}
}

func writeGolden(t *testing.T, c goldenCase, version string, args []string, received time.Time, payload, out []byte) {
	var b strings.Builder
	fmt.Fprintf(&b, "# Made by `go test ./knock/fwknop/ -run 'TestGolden$' -update` with the stock client,\n# %s", strings.TrimSpace(version)+"\n")
	b.WriteString("# run as below (PORT: a UDP socket the test opened on 127.0.0.1; the keys are\n# testdata/golden/keys.txt's \"" + c.keys + "\"), and received as the payload below.\n")
	quoted := make([]string, len(args))
	for i, a := range args {
		switch {
		case i > 0 && args[i-1] == "-p":
			a = "PORT"
		case strings.ContainsAny(a, " \t"):
			a = strconv.Quote(a)
		}
		quoted[i] = a
	}
	fmt.Fprintf(&b, "command: fwknop %s\n", strings.Join(quoted, " "))
	fmt.Fprintf(&b, "received: %d\n", received.Unix())
	fmt.Fprintf(&b, "payload: %s\n", payload)
	b.WriteString("# The client's --verbose account of the packet:\n")
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	in := false
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "SPA Field Values:") {
			in = true
			continue
		}
		if !in || strings.HasPrefix(line, "====") {
			continue
		}
		if strings.TrimSpace(line) == "" {
			break
		}
		k, v, ok := strings.Cut(strings.TrimSpace(line), ": ")
		if !ok {
			t.Fatalf("%s: client output line %q", c.name, line)
		}
		fmt.Fprintf(&b, "client: %s: %s\n", k, v)
	}
	if !in {
		t.Fatalf("%s: no SPA field values in the client's output:\n%s", c.name, out)
	}
	if err := os.WriteFile(filepath.Join(goldenDir, c.name+".txt"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestGoldenCasesAreDistinct: a case per file, and every file a case.
func TestGoldenCasesAreDistinct(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(goldenDir, "*.txt"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		if n := strings.TrimSuffix(filepath.Base(f), ".txt"); n != "keys" {
			names = append(names, n)
		}
	}
	var cases []string
	for _, c := range goldenCases {
		cases = append(cases, c.name)
	}
	slices.Sort(names)
	slices.Sort(cases)
	if !slices.Equal(names, cases) {
		t.Errorf("testdata/golden has %v, the cases are %v", names, cases)
	}
}
