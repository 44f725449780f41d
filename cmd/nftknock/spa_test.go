package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/integration/sshtest"
	"github.com/nftknock/nftknock/knock/authkeys"
	"github.com/nftknock/nftknock/knock/rotate"
	"github.com/nftknock/nftknock/knock/spa"
	"github.com/nftknock/nftknock/knock/sshspa"
)

// runWith runs nftknock with args, the environment vars (nothing else of
// the process's) and stdin.
func runWith(t *testing.T, vars map[string]string, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut strings.Builder
	e := &env{stdout: &out, stderr: &errOut, now: time.Now, stdin: strings.NewReader(stdin),
		getenv: func(k string) string { return vars[k] }}
	code = realMain(e, args)
	return code, out.String(), errOut.String()
}

// datagrams collects what a UDP socket on addr receives.
type datagrams struct {
	c    *net.UDPConn
	port int
}

func listenDatagrams(t *testing.T, addr string) *datagrams {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(addr), 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &datagrams{c: c, port: c.LocalAddr().(*net.UDPAddr).Port}
}

// next is the next datagram and its source, or fails after a while.
func (d *datagrams) next(t *testing.T) ([]byte, netip.Addr) {
	t.Helper()
	b := make([]byte, 2048)
	d.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := d.c.ReadFromUDPAddrPort(b)
	if err != nil {
		t.Fatalf("no datagram: %v", err)
	}
	return b[:n], from.Addr().Unmap()
}

// none checks that nothing more arrives for a short while.
func (d *datagrams) none(t *testing.T) {
	t.Helper()
	d.c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, _, err := d.c.ReadFromUDPAddrPort(make([]byte, 2048)); err == nil {
		t.Fatalf("one datagram (%d bytes) too many", n)
	}
}

func sharedKey(t *testing.T) (string, *spa.Key) {
	t.Helper()
	text := spa.GenerateKey()
	path := filepath.Join(t.TempDir(), "door.key")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	raw, _ := spa.ParseKey([]byte(text))
	k, err := spa.NewKey(raw)
	if err != nil {
		t.Fatal(err)
	}
	return path, k
}

// TestSharedSPASealsItsAddress: the shared-key client seals the address it
// sends from, -allow another, -nat none.
func TestSharedSPASealsItsAddress(t *testing.T) {
	keyPath, key := sharedKey(t)
	for _, c := range []struct {
		listen string
		flags  []string
		want   string // the sealed address; "" none
	}{
		{"127.0.0.1", nil, "127.0.0.1"},
		{"::1", nil, "::1"},
		{"127.0.0.1", []string{"-nat"}, ""},
		{"127.0.0.1", []string{"-allow", "203.0.113.7"}, "203.0.113.7"},
	} {
		d := listenDatagrams(t, c.listen)
		args := append([]string{"spa", "-door", "ssh", "-key-file", keyPath, "-p", fmt.Sprint(d.port)}, c.flags...)
		if code, _, stderr := runWith(t, nil, "", append(args, c.listen)...); code != 0 {
			t.Fatalf("%v: exit %d: %s", c.flags, code, stderr)
		}
		b, from := d.next(t)
		r, err := spa.Open(key, "ssh", b, time.Now(), 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		want := netip.Addr{}
		if c.want != "" {
			want = netip.MustParseAddr(c.want)
		}
		if r.Requested != want {
			t.Errorf("%s %v: sealed %v, want %v", c.listen, c.flags, r.Requested, want)
		}
		// What the server side decides with spa_allow_requested = false:
		// its own address and none open; another is refused.
		_, err = r.OpenFor(from, false)
		if (err == nil) != (c.want != "203.0.113.7") {
			t.Errorf("%v: OpenFor(%v, false) = %v", c.flags, from, err)
		}
	}
}

func TestSPAUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"spa", "-door", "d", "h"}, "give one of -key-file"},
		{[]string{"spa", "-door", "d", "-key-file", "k", "-known-hosts", "h"}, "give one of -key-file"},
		{[]string{"spa", "-key-file", "k", "h"}, "-door is required"},
		{[]string{"spa", "-door", "d", "-key-file", "k", "-allow", "192.0.2.1", "-nat", "h"}, "give -allow or -nat, not both"},
		{[]string{"spa", "-door", "d", "-known-hosts", "-allow", "x", "h"}, `-allow "x" is not`},
		{[]string{"spa", "-door", "d", "-known-hosts"}, "give one HOST"},
		{[]string{"spa", "-door", "d", "-known-hosts", "-p", "0", "h"}, "out of range"},
		{[]string{"open"}, "give one HOST"},
		{[]string{"open", "-wait", "70000", "h"}, "out of range"},
		{[]string{"proxy", "h"}, "give HOST and PORT"},
		{[]string{"proxy", "h", "ssh"}, `PORT "ssh" is not a port number`},
		{[]string{"keygen", "x"}, "takes no arguments"},
	} {
		code, _, stderr := runWith(t, nil, "", c.args...)
		if code != exitUsage || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, %s; want 2 and %q", c.args, code, stderr, c.want)
		}
	}
}

// keyDoor is a public-key door's server side for the tests: a server key
// (written as keygen -server writes it) and the keys it trusts.
type keyDoor struct {
	server  *sshspa.ServerKey
	pubFile string
	set     *authkeys.Set
}

func newKeyDoor(t *testing.T, trust ...*sshtest.Key) *keyDoor {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "server.key")
	code, stdout, stderr := runWith(t, nil, "", "keygen", "-server", path)
	if code != 0 {
		t.Fatalf("keygen -server: %d %s", code, stderr)
	}
	server, err := sshspa.LoadServerKey(path)
	if err != nil {
		t.Fatal(err)
	}
	pubFile := filepath.Join(dir, "server.pub")
	if err := os.WriteFile(pubFile, []byte(stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, k := range trust {
		lines = append(lines, k.Line)
	}
	keys, problems := authkeys.Parse("authorized_keys", []byte(strings.Join(lines, "\n")), 100)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	return &keyDoor{server: server, pubFile: pubFile, set: authkeys.NewSet(keys)}
}

func (k *keyDoor) open(t *testing.T, b []byte, from netip.Addr) (sshspa.Request, error) {
	t.Helper()
	return sshspa.Open(k.server, "team", k.set, b, from, time.Now(), 30*time.Second)
}

// TestKeySPAIdentities: the agent's keys in turn, one datagram each; a
// public key file picks the agent's matching key; a private key file
// signs itself.
func TestKeySPAIdentities(t *testing.T) {
	dir := t.TempDir()
	ed := sshtest.Keygen(t, dir, "id_ed25519", "ed25519", 0, "alice@laptop", "")
	rsaKey := sshtest.Keygen(t, dir, "id_rsa", "rsa", 2048, "alice@old", "")
	door := newKeyDoor(t, ed, rsaKey)
	sock := sshtest.Agent(t, ed, rsaKey)
	d := listenDatagrams(t, "127.0.0.1")
	base := []string{"spa", "-door", "team", "-server-key-file", door.pubFile, "-p", fmt.Sprint(d.port)}
	agentEnv := map[string]string{"SSH_AUTH_SOCK": sock}

	code, stdout, stderr := runWith(t, agentEnv, "", append(base, "-v", "127.0.0.1")...)
	if code != 0 {
		t.Fatalf("agent: exit %d: %s", code, stderr)
	}
	if n := strings.Count(stdout, "\n"); n != 2 {
		t.Errorf("-v printed %d lines: %s", n, stdout)
	}
	for _, want := range []*sshtest.Key{ed, rsaKey} {
		b, from := d.next(t)
		if len(b) != sshspa.Size {
			t.Fatalf("%d bytes", len(b))
		}
		r, err := door.open(t, b, from)
		if err != nil {
			t.Fatal(err)
		}
		if r.Key.Comment != want.Comment || r.Requested != netip.MustParseAddr("127.0.0.1") {
			t.Errorf("opened by %s for %v, want %s for 127.0.0.1", r.Key, r.Requested, want.Comment)
		}
	}
	d.none(t)

	for _, c := range []struct {
		name     string
		vars     map[string]string
		identity string
		want     *sshtest.Key
	}{
		{"public key file: the agent's key", agentEnv, rsaKey.Path + ".pub", rsaKey},
		{"private key file, no agent", nil, ed.Path, ed},
	} {
		if code, _, stderr := runWith(t, c.vars, "", append(base, "-identity", c.identity, "127.0.0.1")...); code != 0 {
			t.Fatalf("%s: exit %d: %s", c.name, code, stderr)
		}
		b, from := d.next(t)
		r, err := door.open(t, b, from)
		if err != nil || r.Key.Comment != c.want.Comment {
			t.Errorf("%s: %v, %v", c.name, r.Key, err)
		}
		d.none(t)
	}

	other := sshtest.Keygen(t, dir, "other", "ed25519", 0, "", "")
	encrypted := sshtest.Keygen(t, dir, "encrypted", "ed25519", 0, "", "secret")
	type failure struct {
		name     string
		vars     map[string]string
		identity string
		want     string
	}
	failures := []failure{
		{"no agent", nil, "agent", "no SSH agent ($SSH_AUTH_SOCK is not set)"},
		{"public key the agent lacks", agentEnv, other.Path + ".pub", "the agent does not hold this key"},
		{"public key, no agent", nil, other.Path + ".pub", "is a public key, so the agent must sign"},
		{"missing file", nil, filepath.Join(dir, "absent"), "no such file"},
	}
	// With a terminal here, the passphrase would be asked for on it.
	if tty, err := os.Open("/dev/tty"); err == nil {
		tty.Close()
	} else {
		failures = append(failures, failure{"passphrase, no terminal", nil, encrypted.Path, "ssh-add " + encrypted.Path})
	}
	for _, c := range failures {
		code, _, stderr := runWith(t, c.vars, "", append(base, "-identity", c.identity, "127.0.0.1")...)
		if code != exitFail || !strings.Contains(stderr, c.want) {
			t.Errorf("%s: exit %d, %s; want 1 and %q", c.name, code, stderr, c.want)
		}
	}
	d.none(t)
}

// TestKeySPAKnownHosts: -known-hosts takes the server key from a hashed
// ~/.ssh/known_hosts.
func TestKeySPAKnownHosts(t *testing.T) {
	sshtest.Require(t, "ssh-keygen")
	ed := sshtest.Keygen(t, t.TempDir(), "id", "ed25519", 0, "alice", "")
	door := newKeyDoor(t, ed)
	home := t.TempDir()
	kh := filepath.Join(home, ".ssh", "known_hosts")
	os.MkdirAll(filepath.Dir(kh), 0o700)
	if err := os.WriteFile(kh, []byte("127.0.0.1 "+door.server.Public().Line()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ssh-keygen", "-H", "-f", kh).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen -H: %v %s", err, out)
	}
	d := listenDatagrams(t, "127.0.0.1")
	vars := map[string]string{"HOME": home}
	code, _, stderr := runWith(t, vars, "", "spa", "-door", "team", "-known-hosts", "-identity", ed.Path, "-p", fmt.Sprint(d.port), "127.0.0.1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	b, from := d.next(t)
	if _, err := door.open(t, b, from); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runWith(t, vars, "", "spa", "-door", "team", "-known-hosts", "-identity", ed.Path, "-p", fmt.Sprint(d.port), "localhost")
	if code != exitFail || !strings.Contains(stderr, "no key for localhost") {
		t.Errorf("host not in known_hosts: exit %d: %s", code, stderr)
	}
}

func TestKeygenServer(t *testing.T) {
	sshtest.Require(t, "ssh-keygen")
	path := filepath.Join(t.TempDir(), "server.key")
	code, stdout, stderr := runWith(t, nil, "", "keygen", "-server", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi.Mode(), err)
	}
	out, err := exec.Command("ssh-keygen", "-y", "-f", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Fields(stdout), strings.Fields(string(out)); len(got) < 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("printed %q, ssh-keygen -y says %q", stdout, out)
	}
	if code, _, stderr := runWith(t, nil, "", "keygen", "-server", path); code != exitFail || !strings.Contains(stderr, "exists") {
		t.Errorf("over an existing file: exit %d: %s", code, stderr)
	}
}

func writeClientFile(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "client.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestOpenEachKind: nftknock open knocks as the client file says, with
// the knock and spa commands' own code.
func TestOpenEachKind(t *testing.T) {
	keyPath, key := sharedKey(t)
	spaPort := listenDatagrams(t, "127.0.0.1")
	seqUDP := listenDatagrams(t, "127.0.0.1")
	rotKeyPath, rotRaw := rotKey(t, 0o600)
	cf := writeClientFile(t, fmt.Sprintf(`
[[server]]
host = "127.0.0.1"
door = "ssh"
spa_port = "%d:udp"
key_file = %q

[[server]]
host = "localhost"
sequence = ["%d:udp", "%d:udp"]

[[server]]
host = "::1"
door = "rot"
sequence_key_file = %q
sequence_ports = "40000-40010:udp"
`, spaPort.port, keyPath, seqUDP.port, seqUDP.port, rotKeyPath))

	if code, _, stderr := runWith(t, nil, "", "open", "-config", cf, "127.0.0.1"); code != 0 {
		t.Fatalf("shared SPA: exit %d: %s", code, stderr)
	}
	b, _ := spaPort.next(t)
	if r, err := spa.Open(key, "ssh", b, time.Now(), 30*time.Second); err != nil || r.Requested != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("shared SPA: %+v %v", r, err)
	}
	code, _, stderr := runWith(t, nil, "", "open", "-v", "-config", cf, "localhost")
	if code != 0 || strings.Count(stderr, fmt.Sprintf("hitting udp 127.0.0.1:%d", seqUDP.port)) != 2 {
		t.Fatalf("sequence: exit %d: %s", code, stderr)
	}
	seqUDP.next(t)
	seqUDP.next(t)
	// The rotating door: the sequence of the window now, as the daemon
	// derives it (unless the window turned between the two).
	code, _, stderr = runWith(t, nil, "", "open", "-v", "-config", cf, "::1")
	ports, _ := config.ParsePort("40000-40010:udp")
	w := rotate.ClientWindow(time.Now(), config.DefaultRotateEvery)
	var want []string
	for _, p := range rotate.NewDeriver(rotRaw, "rot", config.DefaultSequenceLength, ports).Sequence(w) {
		want = append(want, hitting(netip.MustParseAddr("::1"), p))
	}
	if code != 0 || strings.TrimSpace(stderr) != strings.Join(want, "\n") {
		t.Errorf("rotating: exit %d:\n%s\nwant\n%s", code, stderr, strings.Join(want, "\n"))
	}
	if code, _, stderr := runWith(t, nil, "", "open", "-config", cf, "no-such-server"); code != exitFail || !strings.Contains(stderr, `no [[server]] with host = "no-such-server"`) {
		t.Errorf("unknown host: exit %d: %s", code, stderr)
	}
}

// gate is a userspace stand-in for a public-key SPA door: it listens for
// datagrams and, for the first trusted one, starts accepting TCP
// connections on its port, as the firewall would let them through.
type gate struct {
	door     *keyDoor
	udp      *datagrams
	tcpPort  int
	mu       sync.Mutex
	results  []error
	opened   chan struct{}
	listener net.Listener
}

func newGate(t *testing.T, door *keyDoor) *gate {
	t.Helper()
	// Find a free port, and leave it closed: connecting is refused
	// until the gate opens.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	g := &gate{door: door, udp: listenDatagrams(t, "127.0.0.1"), tcpPort: port, opened: make(chan struct{})}
	done := make(chan struct{})
	go g.serve(done)
	t.Cleanup(func() {
		g.udp.c.Close()
		<-done
		if g.listener != nil {
			g.listener.Close()
		}
	})
	return g
}

func (g *gate) serve(done chan struct{}) {
	defer close(done)
	b := make([]byte, 2048)
	for {
		n, from, err := g.udp.c.ReadFromUDPAddrPort(b)
		if err != nil {
			return
		}
		g.mu.Lock()
		_, err = sshspa.Open(g.door.server, "team", g.door.set, b[:n], from.Addr(), time.Now(), 30*time.Second)
		g.results = append(g.results, err)
		if err == nil && g.listener == nil {
			l, lerr := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", g.tcpPort))
			if lerr == nil {
				g.listener = l
				go echo(l)
				close(g.opened)
			}
		}
		g.mu.Unlock()
	}
}

// echo answers each connection with what it reads.
func echo(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

func (g *gate) seen() []error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]error(nil), g.results...)
}

// TestProxyRelaysThroughTheGate: proxy knocks, waits for the port and
// relays; with several agent keys it stops sending once the port answers.
func TestProxyRelaysThroughTheGate(t *testing.T) {
	dir := t.TempDir()
	trusted := sshtest.Keygen(t, dir, "trusted", "ed25519", 0, "alice@laptop", "")
	stranger := sshtest.Keygen(t, dir, "stranger", "ecdsa", 256, "alice@work", "")
	for _, c := range []struct {
		name  string
		agent []*sshtest.Key
		want  []error // what the gate made of each datagram
	}{
		{"trusted key first: one datagram", []*sshtest.Key{trusted, stranger}, []error{nil}},
		{"trusted key second: two", []*sshtest.Key{stranger, trusted}, []error{sshspa.ErrUnknownKey, nil}},
	} {
		t.Run(c.name, func(t *testing.T) {
			door := newKeyDoor(t, trusted)
			g := newGate(t, door)
			cf := writeClientFile(t, fmt.Sprintf("[[server]]\nhost = \"127.0.0.1\"\ndoor = \"team\"\nspa_port = \"%d:udp\"\nserver_key_file = %q\n", g.udp.port, door.pubFile))
			vars := map[string]string{"SSH_AUTH_SOCK": sshtest.Agent(t, c.agent...)}
			code, stdout, stderr := runWith(t, vars, "hello through the gate\n", "proxy", "-config", cf, "127.0.0.1", fmt.Sprint(g.tcpPort))
			if code != 0 || stdout != "hello through the gate\n" {
				t.Fatalf("exit %d, relayed %q: %s", code, stdout, stderr)
			}
			// Let a datagram that was (wrongly) sent late arrive.
			time.Sleep(200 * time.Millisecond)
			if got := g.seen(); !equalErrs(got, c.want) {
				t.Errorf("gate saw %v, want %v", got, c.want)
			}
		})
	}
}

func equalErrs(a, b []error) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !errors.Is(a[i], b[i]) && a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestProxyDoorStaysShut: a knock that opens nothing is a clear error
// after -timeout, and open -wait likewise.
func TestProxyDoorStaysShut(t *testing.T) {
	dir := t.TempDir()
	trusted := sshtest.Keygen(t, dir, "trusted", "ed25519", 0, "alice@laptop", "")
	door := newKeyDoor(t)
	g := newGate(t, door) // trusts no key
	cf := writeClientFile(t, fmt.Sprintf("[[server]]\nhost = \"127.0.0.1\"\ndoor = \"team\"\nspa_port = \"%d:udp\"\nserver_key_file = %q\nidentity = %q\n", g.udp.port, door.pubFile, trusted.Path))
	for _, args := range [][]string{
		{"proxy", "-timeout", "700ms", "-config", cf, "127.0.0.1", fmt.Sprint(g.tcpPort)},
		{"open", "-timeout", "700ms", "-wait", fmt.Sprint(g.tcpPort), "-config", cf, "127.0.0.1"},
	} {
		code, stdout, stderr := runWith(t, nil, "", args...)
		if code != exitFail || stdout != "" || !strings.Contains(stderr, fmt.Sprintf("127.0.0.1:%d did not accept a connection within 700ms of the knock", g.tcpPort)) {
			t.Errorf("%s: exit %d, %q, %s", args[0], code, stdout, stderr)
		}
	}
	if got := g.seen(); len(got) != 2 || got[0] != sshspa.ErrUnknownKey {
		t.Errorf("gate saw %v", got)
	}
	// Now trusted: open -wait returns once the port accepts.
	g.mu.Lock()
	door.set = authkeys.NewSet(mustParse(t, trusted.Line))
	g.mu.Unlock()
	if code, _, stderr := runWith(t, nil, "", "open", "-wait", fmt.Sprint(g.tcpPort), "-config", cf, "127.0.0.1"); code != 0 {
		t.Fatalf("open -wait: exit %d: %s", code, stderr)
	}
}

func mustParse(t *testing.T, line string) []*authkeys.Key {
	keys, problems := authkeys.Parse("t", []byte(line), 10)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	return keys
}
