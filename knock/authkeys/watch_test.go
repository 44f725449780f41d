package authkeys

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nftknock/nftknock/knock/internal/threadcap"
	"golang.org/x/sys/unix"
)

// lab is a scratch file tree with a passwd file of its own: alice is the
// test's own uid, bob uid 4242 (whose files only root can make).
type lab struct {
	t      *testing.T
	root   string
	passwd string
	mu     sync.Mutex
	report []Problem
}

const bobUID = 4242

func newLab(t *testing.T) *lab {
	root := t.TempDir()
	l := &lab{t: t, root: root, passwd: filepath.Join(root, "passwd")}
	text := fmt.Sprintf("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/usr/sbin/nologin\nalice:x:%d:%d::%s:/bin/sh\nbob:x:%d:%d::%s:/bin/sh\n",
		os.Getuid(), os.Getgid(), l.path("home/alice"), bobUID, bobUID, l.path("home/bob"))
	l.write("passwd", text, 0o644)
	return l
}

func (l *lab) path(rel string) string { return filepath.Join(l.root, rel) }

// write writes rel (and its directories, mode 0755) with mode.
func (l *lab) write(rel, text string, mode os.FileMode) string {
	l.t.Helper()
	p := l.path(rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		l.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(text), mode); err != nil {
		l.t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // past the umask
		l.t.Fatal(err)
	}
	return p
}

func (l *lab) chmod(rel string, mode os.FileMode) {
	l.t.Helper()
	if err := os.Chmod(l.path(rel), mode); err != nil {
		l.t.Fatal(err)
	}
}

func (l *lab) watcher(opt Options, patterns ...string) *Watcher {
	l.t.Helper()
	opt.Passwd = l.passwd
	opt.Report = func(p Problem) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.report = append(l.report, p)
	}
	for i, p := range patterns {
		patterns[i] = l.path(p)
	}
	w, err := NewWatcher(patterns, opt)
	if err != nil {
		l.t.Fatal(err)
	}
	return w
}

func (l *lab) reported() []Problem {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.report
	l.report = nil
	return r
}

func comments(s *Set) string {
	var c []string
	for _, k := range s.Keys() {
		c = append(c, k.Comment)
	}
	return strings.Join(c, ",")
}

func requireRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (to chown files to another user)")
		}
		t.Skip("needs root (to chown files to another user)")
	}
}

func TestWatcherGlobAndRemoval(t *testing.T) {
	l := newLab(t)
	l.write("home/alice/.ssh/authorized_keys", edLine(t, 1)+" alice@laptop\n"+edLine(t, 2)+" alice@phone\n", 0o600)
	l.write("etc/team.authorized_keys", edLine(t, 3)+" carol@ops\n", 0o644)
	// Files changed this recently are read at every poll: let them age.
	time.Sleep(racyWindow + 10*time.Millisecond)
	w := l.watcher(Options{}, "home/*/.ssh/authorized_keys", "etc/team.authorized_keys", "etc/absent")
	s := w.Set()
	if got := comments(s); got != "alice@laptop,alice@phone,carol@ops" {
		t.Fatalf("keys %s; files %+v", got, s.Files())
	}
	if r := l.reported(); len(r) != 1 || !strings.Contains(r[0].Error(), "etc/absent") {
		t.Fatalf("reported %v", r)
	}
	if w.Poll() {
		t.Error("a poll with nothing changed rebuilt the set")
	}
	if r := l.reported(); len(r) != 0 {
		t.Errorf("reported again: %v", r)
	}
	hash := s.Keys()[1].Hash
	if got := s.Lookup(hash); len(got) != 1 || got[0].Comment != "alice@phone" {
		t.Fatalf("lookup: %v", got)
	}

	// Removing a line, as an editor does (a new file renamed over the
	// old), while Run polls: the key goes without a reload.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx, 10*time.Millisecond); close(done) }()
	defer func() { cancel(); <-done }()
	l.write("home/alice/.ssh/authorized_keys.tmp", edLine(t, 1)+" alice@laptop\n", 0o600)
	if err := os.Rename(l.path("home/alice/.ssh/authorized_keys.tmp"), l.path("home/alice/.ssh/authorized_keys")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, w, func(s *Set) bool { return len(s.Lookup(hash)) == 0 })
	if got := comments(w.Set()); got != "alice@laptop,carol@ops" {
		t.Fatalf("after removal: %s", got)
	}
	// A new user's file, found by the glob. (It is the test's own uid's,
	// which is the watcher's: trusted, as the daemon's own files are.)
	l.write("home/bob/.ssh/authorized_keys", edLine(t, 4)+" bob@x\n", 0o600)
	waitFor(t, w, func(s *Set) bool { return strings.Contains(comments(s), "bob@x") })
}

// waitFor waits until cond holds for the watcher's set, failing after
// a generous deadline: this checks that a change is seen, not how fast.
func waitFor(t *testing.T, w *Watcher, cond func(*Set) bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(w.Set()); {
		if time.Now().After(deadline) {
			t.Fatalf("never seen; files %+v", w.Set().Files())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestWatcherSameSizeEdit: an edit in place that keeps the size, at once
// after a read (same mtime tick), is still seen at the next poll.
func TestWatcherSameSizeEdit(t *testing.T) {
	l := newLab(t)
	p := l.write("home/alice/.ssh/authorized_keys", edLine(t, 1)+" k1\n", 0o600)
	w := l.watcher(Options{}, "home/alice/.ssh/authorized_keys")
	if got := comments(w.Set()); got != "k1" {
		t.Fatal(got)
	}
	if err := os.WriteFile(p, []byte(edLine(t, 2)+" k2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w.Poll()
	if got := comments(w.Set()); got != "k2" {
		t.Fatalf("after a same-size edit: %s", got)
	}
}

func TestStrictModes(t *testing.T) {
	key := edLine(t, 1) + " k\n"
	for _, c := range []struct {
		name   string
		root   bool
		setup  func(l *lab)
		reason string // empty: trusted
	}{
		{"good", false, func(l *lab) {}, ""},
		{"group-writable file", false, func(l *lab) { l.chmod("home/alice/.ssh/authorized_keys", 0o620) }, "writable by group or others"},
		{"world-writable file", false, func(l *lab) { l.chmod("home/alice/.ssh/authorized_keys", 0o602) }, "writable by group or others"},
		{"group-writable .ssh", false, func(l *lab) { l.chmod("home/alice/.ssh", 0o770) }, "directory " + "%ROOT%/home/alice/.ssh is writable"},
		{"world-writable home", false, func(l *lab) { l.chmod("home/alice", 0o777) }, "home/alice is writable"},
		{"sticky world-writable dir above", false, func(l *lab) { l.chmod("home", os.ModeSticky|0o777) }, ""},
		{"world-writable dir above, no sticky bit", false, func(l *lab) { l.chmod("home", 0o777) }, "home is writable"},
		{"readable by all is fine", false, func(l *lab) { l.chmod("home/alice/.ssh/authorized_keys", 0o644) }, ""},
		{"a FIFO", false, func(l *lab) {
			p := l.path("home/alice/.ssh/authorized_keys")
			os.Remove(p)
			if err := syscall.Mkfifo(p, 0o600); err != nil {
				l.t.Fatal(err)
			}
		}, "not a regular file"},
		{"a directory", false, func(l *lab) {
			p := l.path("home/alice/.ssh/authorized_keys")
			os.Remove(p)
			os.Mkdir(p, 0o700)
		}, "not a regular file"},
		{"link to a trusted file", false, func(l *lab) {
			p := l.path("home/alice/.ssh/authorized_keys")
			l.write("home/alice/keys/real", key, 0o600)
			os.Remove(p)
			os.Symlink(l.path("home/alice/keys/real"), p)
		}, ""},
		{"link into a group-writable dir", false, func(l *lab) {
			p := l.path("home/alice/.ssh/authorized_keys")
			l.write("home/alice/shared/real", key, 0o600)
			l.chmod("home/alice/shared", 0o775)
			os.Remove(p)
			os.Symlink(l.path("home/alice/shared/real"), p)
		}, "shared is writable"},
		{"dangling link", false, func(l *lab) {
			p := l.path("home/alice/.ssh/authorized_keys")
			os.Remove(p)
			os.Symlink(l.path("nowhere"), p)
		}, "cannot resolve"},
		{"file owned by another user", true, func(l *lab) { chown(l, "home/alice/.ssh/authorized_keys", bobUID) }, "owned by uid 4242"},
		{".ssh owned by another user", true, func(l *lab) { chown(l, "home/alice/.ssh", bobUID) }, "owned by uid 4242"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.root {
				requireRoot(t)
			}
			l := newLab(t)
			l.write("home/alice/.ssh/authorized_keys", key, 0o600)
			l.chmod("home/alice/.ssh", 0o700)
			c.setup(l)
			w := l.watcher(Options{}, "home/alice/.ssh/authorized_keys")
			s := w.Set()
			files := s.Files()
			if len(files) != 1 {
				t.Fatalf("files %+v", files)
			}
			reason := strings.ReplaceAll(c.reason, "%ROOT%", l.root)
			switch {
			case reason == "" && (len(s.Keys()) != 1 || files[0].Skipped != ""):
				t.Fatalf("not trusted: %+v", files[0])
			case reason != "" && (len(s.Keys()) != 0 || !strings.Contains(files[0].Skipped, reason)):
				t.Fatalf("got %d keys, %q; want it skipped because %q", len(s.Keys()), files[0].Skipped, reason)
			case reason != "":
				if r := l.reported(); len(r) != 1 || !strings.Contains(r[0].Error(), "skipped") {
					t.Fatalf("reported %v", r)
				}
				// Fixing the file is seen at the next poll.
				if c.name == "group-writable file" {
					l.chmod("home/alice/.ssh/authorized_keys", 0o600)
					w.Poll()
					if len(w.Set().Keys()) != 1 {
						t.Fatalf("after chmod 600: %+v", w.Set().Files())
					}
				}
			}
		})
	}
}

func chown(l *lab, rel string, uid int) {
	l.t.Helper()
	if err := os.Lchown(l.path(rel), uid, uid); err != nil {
		l.t.Fatal(err)
	}
}

// TestOwners: whose file it is decides who else may own it.
func TestOwners(t *testing.T) {
	requireRoot(t)
	l := newLab(t)
	key := edLine(t, 1) + " k\n"
	// bob's own file under bob's home (passwd): trusted.
	l.write("home/bob/.ssh/authorized_keys", key, 0o600)
	chown(l, "home/bob", bobUID)
	chown(l, "home/bob/.ssh", bobUID)
	chown(l, "home/bob/.ssh/authorized_keys", bobUID)
	// dave, whom passwd does not list: the owner of the directory that
	// holds .ssh.
	l.write("srv/dave/.ssh/authorized_keys", key, 0o600)
	for _, p := range []string{"srv/dave", "srv/dave/.ssh", "srv/dave/.ssh/authorized_keys"} {
		chown(l, p, 5555)
	}
	// A file under no home, not root's: refused.
	l.write("etc/team.keys", key, 0o600)
	chown(l, "etc/team.keys", bobUID)
	w := l.watcher(Options{}, "home/bob/.ssh/authorized_keys", "srv/dave/.ssh/authorized_keys", "etc/team.keys")
	files := w.Set().Files()
	if len(files) != 3 || files[0].Skipped != "" || files[1].Skipped != "" || !strings.Contains(files[2].Skipped, "not root (it is under no user's home)") {
		t.Fatalf("files %+v", files)
	}
	// bob's file in alice's home: refused, it is alice's home.
	l.write("home/alice/.ssh/authorized_keys", key, 0o600)
	chown(l, "home/alice/.ssh/authorized_keys", bobUID)
	if os.Getuid() == 0 {
		// alice is uid 0 here: make her someone else.
		l.write("passwd", fmt.Sprintf("alice:x:1001:1001::%s:/bin/sh\nbob:x:%d:%d::%s:/bin/sh\n", l.path("home/alice"), bobUID, bobUID, l.path("home/bob")), 0o644)
	}
	w = l.watcher(Options{}, "home/alice/.ssh/authorized_keys")
	if f := w.Set().Files(); !strings.Contains(f[0].Skipped, "owned by uid 4242") || !strings.Contains(f[0].Skipped, "home/alice") {
		t.Fatalf("bob's file in alice's home: %+v", f)
	}
}

func TestWatcherLimits(t *testing.T) {
	l := newLab(t)
	for i := range 3 {
		l.write(fmt.Sprintf("keys/%d", i), edLine(t, byte(i+1))+fmt.Sprintf(" k%d\n", i)+edLine(t, byte(i+10))+fmt.Sprintf(" j%d\n", i), 0o600)
	}
	w := l.watcher(Options{Limits: Limits{MaxFiles: 2}}, "keys/*")
	if got := comments(w.Set()); got != "k0,j0,k1,j1" {
		t.Fatalf("MaxFiles 2: %s", got)
	}
	if r := l.reported(); len(r) != 1 || !strings.Contains(r[0].Reason, "more than 2 files") {
		t.Fatalf("reported %v", r)
	}
	w = l.watcher(Options{Limits: Limits{MaxKeys: 3}}, "keys/*")
	if got := comments(w.Set()); got != "k0,j0,k1" {
		t.Fatalf("MaxKeys 3: %s", got)
	}
	l.write("keys/big", strings.Repeat("# padding\n", 200), 0o600)
	w = l.watcher(Options{Limits: Limits{MaxFileSize: 1000}}, "keys/big", "keys/0")
	if f := w.Set().Files(); !strings.Contains(f[0].Skipped, "larger than 1000 bytes") || f[1].Keys != 2 {
		t.Fatalf("MaxFileSize: %+v", f)
	}
}

func TestWatcherReload(t *testing.T) {
	l := newLab(t)
	l.write("keys/a", edLine(t, 1)+" bad line here\nnot a key\n", 0o600)
	w := l.watcher(Options{}, "keys/a")
	if r := l.reported(); len(r) != 1 || r[0].Line != 2 {
		t.Fatalf("reported %v", r)
	}
	before := w.Set()
	w.Reload()
	if w.Set() == before {
		t.Error("Reload did not reread")
	}
	if len(w.Set().Keys()) != 1 {
		t.Errorf("after reload: %d keys", len(w.Set().Keys()))
	}
}

func TestNewWatcherRefuses(t *testing.T) {
	for _, p := range [][]string{nil, {"relative/path"}, {"/etc/[x"}} {
		if _, err := NewWatcher(p, Options{}); err == nil {
			t.Errorf("%q accepted", p)
		}
	}
}

// BenchmarkPollUnchanged: what a public-key SPA door's once-a-second poll
// costs on the daemon's packet goroutine when nothing changed (the
// common case): a stat of each file and of each directory above it. Ten
// files of 10 keys each.
func BenchmarkPollUnchanged(b *testing.B) {
	dir := b.TempDir()
	for i := range 10 {
		var text strings.Builder
		for j := range 10 {
			fmt.Fprintf(&text, "%s user%d@host%d\n", edLine(b, byte(10*i+j)), j, i)
		}
		p := filepath.Join(dir, fmt.Sprintf("u%d", i), "authorized_keys")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text.String()), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	time.Sleep(2 * racyWindow) // past the window in which a file is read again anyway
	w, err := NewWatcher([]string{filepath.Join(dir, "*", "authorized_keys")}, Options{})
	if err != nil {
		b.Fatal(err)
	}
	if n := len(w.Set().Keys()); n != 100 {
		b.Fatalf("%d keys, want 100", n)
	}
	for b.Loop() {
		if w.Poll() {
			b.Fatal("a poll found a change")
		}
	}
}

// TestWatcherReportsUnsearchableHome: a glob through a home the daemon
// cannot enter (mode 0700, and nftknockd runs without CAP_DAC_READ_SEARCH)
// matches nothing there, as filepath.Glob does; unlike it, the Watcher
// says which directory, once, with "permission denied" (on which the door
// adds the capability hint).
func TestWatcherReportsUnsearchableHome(t *testing.T) {
	l := newLab(t)
	l.write("home/alice/.ssh/authorized_keys", edLine(t, 1)+" alice@laptop\n", 0o600)
	l.write("home/bob/.ssh/authorized_keys", edLine(t, 2)+" bob@x\n", 0o600)
	l.chmod("home/bob", 0)
	t.Cleanup(func() { os.Chmod(l.path("home/bob"), 0o755) })
	time.Sleep(racyWindow + 10*time.Millisecond)

	var (
		w            *Watcher
		first, again []Problem
		rebuilt      bool
	)
	// As the daemon under its unit: root without the capabilities that
	// pass file modes.
	err := threadcap.Without(func() error {
		w = l.watcher(Options{}, "home/*/.ssh/authorized_keys")
		first = l.reported()
		rebuilt = w.Poll()
		again = l.reported()
		return nil
	}, unix.CAP_DAC_OVERRIDE, unix.CAP_DAC_READ_SEARCH)
	if err != nil {
		t.Fatal(err)
	}
	if got := comments(w.Set()); got != "alice@laptop" {
		t.Errorf("keys %q, want alice's alone (bob's home cannot be entered)", got)
	}
	if len(first) != 1 || first[0].File != l.path("home/bob") || !strings.Contains(first[0].Reason, "cannot be searched") || !strings.Contains(first[0].Reason, "permission denied") {
		t.Errorf("reported %v, want one problem naming %s, permission denied", first, l.path("home/bob"))
	}
	if rebuilt || len(again) != 0 {
		t.Errorf("a poll with nothing changed: rebuilt %v, reported %v", rebuilt, again)
	}
}

// TestGlobMatchesFilepathGlob: where every directory can be read, glob
// finds what filepath.Glob finds, in its order.
func TestGlobMatchesFilepathGlob(t *testing.T) {
	l := newLab(t)
	for _, f := range []string{"home/alice/.ssh/authorized_keys", "home/bob/.ssh/authorized_keys", "home/bob/.ssh/authorized_keys2", "home/.hidden/.ssh/authorized_keys", "etc/a.keys", "etc/b.keys", "etc/c.txt"} {
		l.write(f, "", 0o644)
	}
	for _, pat := range []string{"home/*/.ssh/authorized_keys", "home/*/.ssh/authorized_keys*", "home/[ab]*/.ssh/*", "etc/*.keys", "etc/?.*", "*/*", "home/nobody/*", "nothere/*/x"} {
		want, err := filepath.Glob(l.path(pat))
		if err != nil {
			t.Fatal(err)
		}
		got, denied := glob(l.path(pat))
		if !slices.Equal(got, want) || len(denied) != 0 {
			t.Errorf("glob(%s) = %v, denied %v; filepath.Glob: %v", pat, got, denied, want)
		}
	}
}
