package door

import (
	"crypto/ed25519"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/crypto/ssh"

	"github.com/nftknock/nftknock/knock"
	"github.com/nftknock/nftknock/knock/authkeys"
	"github.com/nftknock/nftknock/knock/knocktest"
	"github.com/nftknock/nftknock/knock/sshspa"
)

// keySPALab is a public-key door under test: its server key, the keys
// that may knock, the authorized_keys file, and a clock a few seconds
// after the door's start.
type keySPALab struct {
	t      *testing.T
	dir    string
	server *sshspa.ServerPublicKey
	keys   string // the authorized_keys file
	d      *keySPADoor
	logs   *observer.ObservedLogs
	now    time.Time
}

// signer is an ed25519 SSH key made from seed.
func signer(t *testing.T, seed byte) ssh.Signer {
	t.Helper()
	s, err := ssh.NewSignerFromKey(ed25519.NewKeyFromSeed(append(make([]byte, 31), seed)))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// line is s's authorized_keys line with options and comment.
func line(s ssh.Signer, options, comment string) string {
	l := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey()))) + " " + comment
	if options != "" {
		l = options + " " + l
	}
	return l + "\n"
}

func newKeySPALab(t *testing.T, authorized string, extra string) *keySPALab {
	t.Helper()
	l := &keySPALab{t: t, dir: t.TempDir()}
	pemBytes, pub, err := sshspa.GenerateServerKey("door test")
	if err != nil {
		t.Fatal(err)
	}
	l.server = pub
	serverKey := filepath.Join(l.dir, "server.key")
	if err := os.WriteFile(serverKey, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	l.keys = filepath.Join(l.dir, "team.authorized_keys")
	l.write(authorized)
	cfg := parseDoor(t, fmt.Sprintf("server_key_file = %q\n[[door]]\nname = \"team\"\nspa_port = \"62203:udp\"\nauthorized_keys = [%q]\nopen = [\"22:tcp\"]\nopen_for = \"30s\"\n%s",
		serverKey, l.keys, extra))
	start := time.Now()
	deps, logs := testDeps(t, func() time.Time { return start }, nil)
	dd, err := New("f.toml", cfg, deps, nil)
	if err != nil {
		t.Fatal(err)
	}
	l.d, l.logs, l.now = dd.(*keySPADoor), logs, start.Add(2*time.Second)
	return l
}

func (l *keySPALab) write(text string) {
	l.t.Helper()
	if err := os.WriteFile(l.keys, []byte(text), 0o600); err != nil {
		l.t.Fatal(err)
	}
}

// datagram is what from sends: sealed to server (the door's by default)
// by s at the lab's now, asking for requested.
func (l *keySPALab) datagram(s ssh.Signer, from netip.Addr, server *sshspa.ServerPublicKey, requested netip.Addr, at time.Time) *knock.Logged {
	l.t.Helper()
	if server == nil {
		server = l.server
	}
	d, err := sshspa.Seal(server, s, "team", requested, at)
	if err != nil {
		l.t.Fatal(err)
	}
	return &knock.Logged{Payload: knocktest.UDP(from, srv, 62203, d), Prefix: []byte("team/1")}
}

// rejected is the context of the one "SPA datagram rejected" line with
// reason, failing when there is not exactly one.
func (l *keySPALab) rejected(reason string) map[string]any {
	l.t.Helper()
	var found []map[string]any
	for _, e := range l.logs.FilterMessageSnippet("SPA datagram rejected: " + reason).All() {
		found = append(found, e.ContextMap())
	}
	if len(found) != 1 {
		l.t.Fatalf("%d rejections for %q, want 1; log: %v", len(found), reason, l.logs.All())
	}
	return found[0]
}

func fingerprint(s ssh.Signer) string { return ssh.FingerprintSHA256(s.PublicKey()) }

// TestKeySPAOpensForTheKey: a datagram signed by a listed key opens the
// door for its source, and the grant and the log name the key by its
// comment and fingerprint.
func TestKeySPAOpensForTheKey(t *testing.T) {
	alice := signer(t, 1)
	l := newKeySPALab(t, "# the team\n"+line(alice, "", "alice@laptop"), "")
	a := newRecorder()
	l.d.Packet(l.now, l.datagram(alice, client, nil, client, l.now), a)
	want := fmt.Sprintf(`open 192.0.2.2 by 'alice@laptop' %s`, fingerprint(alice))
	if got := a.opens(); len(got) != 1 || got[0] != want {
		t.Fatalf("opens %q, want %q", got, want)
	}
	lines := l.logs.FilterMessage("SPA request authenticated").All()
	if len(lines) != 1 || lines[0].ContextMap()["key"] != `'alice@laptop' `+fingerprint(alice) {
		t.Errorf("log %v", l.logs.All())
	}
}

// TestKeySPARejections: each datagram that must open nothing opens
// nothing and is logged with its own reason; those a key really signed
// name it, the others the key they claim.
func TestKeySPARejections(t *testing.T) {
	alice, bob, carol, dave := signer(t, 1), signer(t, 2), signer(t, 3), signer(t, 4)
	_, otherServer, err := sshspa.GenerateServerKey("another server")
	if err != nil {
		t.Fatal(err)
	}
	l := newKeySPALab(t, line(alice, "", "alice@laptop")+line(carol, `from="10.0.0.0/8"`, "carol@office")+line(dave, `expiry-time="20200101"`, "dave@gone"), "")
	other := netip.MustParseAddr("203.0.113.7")
	replayed := l.datagram(alice, client, nil, client, l.now)
	truncated := l.datagram(alice, client, nil, client, l.now)
	truncated.Payload = knocktest.UDP(client, srv, 62203, make([]byte, 100))
	for _, tc := range []struct {
		reason string
		lg     *knock.Logged
		key    string // the field naming the key, if any, and its value
		value  string
	}{
		{"unknown key", l.datagram(bob, client, nil, client, l.now), "claimed_key", fingerprint(bob)},
		{"from= refused", l.datagram(carol, client, nil, client, l.now), "key", `'carol@office' ` + fingerprint(carol)},
		{"expired key", l.datagram(dave, client, nil, client, l.now), "key", `'dave@gone' ` + fingerprint(dave)},
		{"not sealed to this server's key", l.datagram(alice, client, otherServer, client, l.now), "", ""},
		{"stale", l.datagram(alice, client, nil, client, l.now.Add(-time.Minute)), "", ""},
		{"sealed before the daemon started", l.datagram(alice, client, nil, client, l.now.Add(-3*time.Second)), "", ""},
		{"requested address not allowed", l.datagram(alice, client, nil, other, l.now), "key", `'alice@laptop' ` + fingerprint(alice)},
		{"truncated", truncated, "", ""},
	} {
		a := newRecorder()
		l.d.Packet(l.now, tc.lg, a)
		if got := a.opens(); len(got) != 0 {
			t.Errorf("%s: opened %v", tc.reason, got)
		}
		ctx := l.rejected(tc.reason)
		if tc.key != "" && ctx[tc.key] != tc.value {
			t.Errorf("%s: %s = %v, want %q", tc.reason, tc.key, ctx[tc.key], tc.value)
		}
		if ctx["source"] != "192.0.2.2" || ctx["door"] != "team" {
			t.Errorf("%s: %v", tc.reason, ctx)
		}
	}
	a := newRecorder()
	l.d.Packet(l.now, replayed, a)
	l.d.Packet(l.now, replayed, a)
	if len(a.opens()) != 1 {
		t.Errorf("a datagram sent twice: %v", a.opens())
	}
	l.rejected("replay")
	// carol from inside her from=: opens.
	l.d.Packet(l.now, l.datagram(carol, netip.MustParseAddr("10.1.2.3"), nil, netip.Addr{}, l.now), a)
	if got := a.opens(); len(got) != 2 || !strings.HasPrefix(got[1], "open 10.1.2.3 by 'carol@office'") {
		t.Errorf("carol from 10.1.2.3: %v", got)
	}
}

// TestKeySPARemovedLineStopsAtNextTick: the door rereads its files at the
// Tick a second brings: a removed line opens nothing after it, an added
// one opens, without a reload.
func TestKeySPARemovedLineStopsAtNextTick(t *testing.T) {
	alice, bob := signer(t, 1), signer(t, 2)
	l := newKeySPALab(t, line(alice, "", "alice@laptop"), "")
	a := newRecorder()
	l.d.Tick(l.now, a)
	l.d.Packet(l.now, l.datagram(alice, client, nil, client, l.now), a)
	l.write(line(bob, "", "bob@desk"))
	l.d.Tick(l.now.Add(500*time.Millisecond), a) // not yet a second since the last look
	l.d.Packet(l.now, l.datagram(alice, client, nil, client, l.now), a)
	if n := len(a.opens()); n != 2 {
		t.Fatalf("%d opens before the second's Tick, want 2: %v", n, a.opens())
	}
	l.d.Tick(l.now.Add(time.Second), a)
	l.d.Packet(l.now, l.datagram(alice, client, nil, client, l.now), a)
	l.rejected("unknown key")
	l.d.Packet(l.now, l.datagram(bob, client, nil, client, l.now), a)
	if got := a.opens(); len(got) != 3 || !strings.Contains(got[2], `'bob@desk'`) {
		t.Errorf("opens %v, want bob's third", got)
	}
}

// fakeWorker is Deps.Offload with a queue the test runs by hand.
type fakeWorker struct {
	jobs []Job
	full bool
}

func (w *fakeWorker) offload(_ Door, j Job) bool {
	if w.full {
		return false
	}
	w.jobs = append(w.jobs, j)
	return true
}

func (w *fakeWorker) run(now time.Time, a Actions) {
	for _, j := range w.jobs {
		j.Work()
		j.Done(now, a)
	}
	w.jobs = nil
}

// TestKeySPAOffloads: with a worker, a datagram is verified by a job, not
// in Packet, and acted on in its Done; a door has at most keySPAJobs out,
// and a datagram past them, or one the worker's queue has no room for, is
// refused at once as queue full.
func TestKeySPAOffloads(t *testing.T) {
	alice := signer(t, 1)
	l := newKeySPALab(t, line(alice, "", "alice@laptop"), "")
	w := &fakeWorker{}
	l.d.deps.Offload = w.offload
	a := newRecorder()
	for range keySPAJobs + 1 {
		l.d.Packet(l.now, l.datagram(alice, client, nil, client, l.now), a)
	}
	if len(a.opens()) != 0 || len(w.jobs) != keySPAJobs {
		t.Fatalf("opens %v and %d jobs before the worker ran, want none and %d", a.opens(), len(w.jobs), keySPAJobs)
	}
	l.rejected("verification queue full")
	w.run(l.now, a)
	if n := len(a.opens()); n != keySPAJobs {
		t.Errorf("%d opens after the worker ran, want %d", n, keySPAJobs)
	}
	// The jobs are back: the next datagram is queued; with the queue
	// full, it is refused.
	l.d.Packet(l.now, l.datagram(alice, client, nil, client, l.now), a)
	if len(w.jobs) != 1 {
		t.Errorf("%d jobs, want 1", len(w.jobs))
	}
	w.full = true
	l.d.Packet(l.now, l.datagram(alice, client, nil, client, l.now), a)
	if n := l.logs.FilterMessageSnippet("verification queue full").Len(); n != 2 {
		t.Errorf("%d queue-full lines, want 2", n)
	}
}

// TestKeySPALoadErrors: a server key or authorized_keys list that cannot
// be used is an error that names its field.
func TestKeySPALoadErrors(t *testing.T) {
	dir := t.TempDir()
	pemBytes, _, err := sshspa.GenerateServerKey("")
	if err != nil {
		t.Fatal(err)
	}
	loose := filepath.Join(dir, "loose.key")
	if err := os.WriteFile(loose, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chmod(loose, 0o640)
	for _, tc := range []struct{ server, want string }{
		{filepath.Join(dir, "absent"), "f.toml: server_key_file: server key: open " + filepath.Join(dir, "absent") + ": no such file"},
		{loose, "f.toml: server_key_file: server key " + loose + ": group or others may use it"},
	} {
		cfg := parseDoor(t, fmt.Sprintf("server_key_file = %q\n[[door]]\nname = \"team\"\nspa_port = \"62203:udp\"\nauthorized_keys = [\"/etc/nftknock/none\"]\nopen = [\"22\"]\nopen_for = \"1s\"\n", tc.server))
		deps, _ := testDeps(t, time.Now, nil)
		if _, err := New("f.toml", cfg, deps, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("got %v, want an error containing %q", err, tc.want)
		}
	}
}

// TestKeyLabel: a key's label is its comment, quoted, and its
// fingerprint; a comment's unprintable bytes, quotes and backslashes are
// replaced, and a long one cut.
func TestKeyLabel(t *testing.T) {
	for _, tc := range []struct{ comment, want string }{
		{"alice@laptop", `'alice@laptop' SHA256:x`},
		{"", `'' SHA256:x`},
		{"a\"b\\c\nd'é", `'a?b?c?d???' SHA256:x`},
		{strings.Repeat("z", 100), `'` + strings.Repeat("z", maxLabelComment) + `' SHA256:x`},
	} {
		if got := KeyLabel(&authkeys.Key{Comment: tc.comment, Fingerprint: "SHA256:x"}); got != tc.want {
			t.Errorf("%q: %q, want %q", tc.comment, got, tc.want)
		}
	}
}

// TestKeySPAPollsOnTheWorker: with a worker, the once-a-second look at the
// files is a job of its own, one out at a time, and what it finds counts
// from then on.
func TestKeySPAPollsOnTheWorker(t *testing.T) {
	alice := signer(t, 1)
	l := newKeySPALab(t, line(alice, "", "alice@laptop"), "")
	w := &fakeWorker{}
	l.d.deps.Offload = w.offload
	a := newRecorder()
	l.write("")
	l.d.Tick(l.now, a)
	l.d.Tick(l.now.Add(time.Second), a)
	if len(w.jobs) != 1 {
		t.Fatalf("%d jobs after two Ticks with a poll out, want 1", len(w.jobs))
	}
	w.run(l.now, a) // the poll: alice's line is gone
	l.d.Packet(l.now, l.datagram(alice, client, nil, client, l.now), a)
	w.run(l.now, a)
	l.rejected("unknown key")
	l.d.Tick(l.now.Add(2*time.Second), a)
	if len(w.jobs) != 1 {
		t.Errorf("%d jobs after the next second's Tick, want a poll", len(w.jobs))
	}
}
