package authkeys

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Limits bound what a Watcher reads: the files are hostile input too (any
// user may write their own authorized_keys).
type Limits struct {
	// MaxFiles is how many files the paths and globs may name, together.
	MaxFiles int
	// MaxKeys is how many keys all the files may hold, together.
	MaxKeys int
	// MaxFileSize is the largest file read, in bytes; a larger one is
	// skipped whole.
	MaxFileSize int64
}

// DefaultLimits are the Limits a zero field stands for.
var DefaultLimits = Limits{MaxFiles: 1024, MaxKeys: 16384, MaxFileSize: 1 << 20}

// DefaultPollInterval is how often Run looks at the files: a removed line
// stops working within this and the time one poll takes.
const DefaultPollInterval = time.Second

// Options are a Watcher's settings; the zero value is the defaults.
type Options struct {
	Limits
	// Passwd is the passwd(5) file that says whose home is where
	// (default /etc/passwd).
	Passwd string
	// Report is told of each problem when it first appears (a skipped
	// file or line, a warning): for the log. It is called with the
	// Watcher's lock held, so it must not call the Watcher. Nil: none.
	Report func(Problem)
}

// FileStatus is what became of one file in a Set.
type FileStatus struct {
	Path string
	// Keys is how many of its keys the Set holds.
	Keys int
	// Skipped says why none of it is trusted; empty when it was read.
	Skipped string
}

// Set is the keys trusted at one moment: immutable, safe to share.
type Set struct {
	keys     []*Key
	byHash   map[[32]byte][]*Key
	files    []FileStatus
	problems []Problem
}

// Lookup returns the lines that list the key whose wire form hashes to
// h, in file order: a key may be listed more than once, with different
// options, and (as with sshd) any of its lines may let it in.
func (s *Set) Lookup(h [32]byte) []*Key { return s.byHash[h] }

// Keys lists every trusted line, in file order.
func (s *Set) Keys() []*Key { return s.keys }

// Files lists the files looked at, in order.
func (s *Set) Files() []FileStatus { return s.files }

// Problems lists what was skipped or warned about.
func (s *Set) Problems() []Problem { return s.problems }

// NewSet makes a Set of keys (for tests, and for keys that come from
// elsewhere than files).
func NewSet(keys []*Key) *Set {
	s := &Set{byHash: map[[32]byte][]*Key{}}
	for _, k := range keys {
		s.keys = append(s.keys, k)
		s.byHash[k.Hash] = append(s.byHash[k.Hash], k)
	}
	return s
}

// Watcher keeps the Set of keys its paths hold up to date. Set is
// lock-free, for the packet path; Poll (every second, from Run) notices a
// change to a file, to its StrictModes standing or to what the globs
// match, and rereads the files then.
type Watcher struct {
	patterns []string
	opt      Options
	cur      atomic.Pointer[Set]

	mu sync.Mutex
	// stamps is each file's StrictModes stamp at the last read: a poll
	// that finds the same ones and the same files has nothing to do.
	stamps      map[string]string
	paths       []string
	passwdStamp string
	users       users
	reported    map[string]bool
}

// NewWatcher checks patterns (absolute paths, which may hold the
// wildcards of filepath.Match), reads the files and returns a Watcher
// holding their keys. Files that cannot be trusted or read are skipped
// and reported, never an error: one user's broken file must not keep the
// others' keys out.
func NewWatcher(patterns []string, opt Options) (*Watcher, error) {
	if len(patterns) == 0 {
		return nil, errors.New("authorized_keys: no paths")
	}
	for _, p := range patterns {
		if !filepath.IsAbs(p) {
			return nil, fmt.Errorf("authorized_keys: %q is not an absolute path", p)
		}
		if _, err := filepath.Match(p, ""); err != nil {
			return nil, fmt.Errorf("authorized_keys: %q: %w", p, err)
		}
	}
	if opt.MaxFiles <= 0 {
		opt.MaxFiles = DefaultLimits.MaxFiles
	}
	if opt.MaxKeys <= 0 {
		opt.MaxKeys = DefaultLimits.MaxKeys
	}
	if opt.MaxFileSize <= 0 {
		opt.MaxFileSize = DefaultLimits.MaxFileSize
	}
	if opt.Passwd == "" {
		opt.Passwd = "/etc/passwd"
	}
	w := &Watcher{patterns: slices.Clone(patterns), opt: opt, reported: map[string]bool{}}
	w.Poll()
	return w, nil
}

// Set is the keys trusted now.
func (w *Watcher) Set() *Set { return w.cur.Load() }

// Run polls every interval (DefaultPollInterval if <= 0) until ctx ends.
func (w *Watcher) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultPollInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.Poll()
		}
	}
}

// Reload rereads every file, changed or not (the daemon's reload).
func (w *Watcher) Reload() {
	w.mu.Lock()
	w.stamps = nil
	w.passwdStamp = ""
	w.mu.Unlock()
	w.Poll()
}

// Poll looks for changes and, if it finds any, rereads the files and
// swaps in a new Set. It reports whether it did.
func (w *Watcher) Poll() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	var problems []Problem
	users := w.loadUsers(&problems)
	paths, missing := w.expand(&problems)
	checks := make([]checked, len(paths))
	errs := make([]error, len(paths))
	stamps := make(map[string]string, len(paths))
	same := w.stamps != nil && slices.Equal(paths, w.paths)
	for i, p := range paths {
		checks[i], errs[i] = strictCheck(users, p)
		stamps[p] = string(checks[i].stamp)
		same = same && w.stamps[p] == stamps[p]
	}
	if same {
		return false
	}
	s := &Set{byHash: map[[32]byte][]*Key{}}
	for _, p := range missing {
		s.files = append(s.files, FileStatus{Path: p, Skipped: "no such file"})
	}
	for i, p := range paths {
		st := FileStatus{Path: p}
		var keys []*Key
		var probs []Problem
		err := errs[i]
		if err == nil {
			keys, probs, err = w.read(p, &checks[i], w.opt.MaxKeys-len(s.keys))
		}
		if err != nil {
			st.Skipped = err.Error()
			problems = append(problems, Problem{File: p, Reason: err.Error() + ": skipped, none of its keys is trusted"})
			// Read again next time, whatever the stamp says: a
			// file that changed under the read must not stay out.
			if _, changing := err.(changedError); changing {
				stamps[p] = ""
			}
		}
		if err == nil && racy(checks[i].file, time.Now()) {
			stamps[p] = ""
		}
		problems = append(problems, probs...)
		st.Keys = len(keys)
		for _, k := range keys {
			s.keys = append(s.keys, k)
			s.byHash[k.Hash] = append(s.byHash[k.Hash], k)
		}
		s.files = append(s.files, st)
	}
	s.problems = problems
	w.stamps, w.paths = stamps, paths
	w.report(problems)
	w.cur.Store(s)
	return true
}

// report tells Report of the problems it was not told of last time.
func (w *Watcher) report(problems []Problem) {
	now := make(map[string]bool, len(problems))
	for _, p := range problems {
		text := p.Error()
		now[text] = true
		if !w.reported[text] && w.opt.Report != nil {
			w.opt.Report(p)
		}
	}
	w.reported = now
}

// loadUsers rereads the passwd file when it changed.
func (w *Watcher) loadUsers(problems *[]Problem) users {
	var b bytes.Buffer
	if fi, err := os.Stat(w.opt.Passwd); err == nil {
		stampFile(&b, fi)
	}
	if stamp := b.String(); stamp != w.passwdStamp || w.users == nil {
		u, err := readPasswd(w.opt.Passwd)
		if err != nil {
			u = users{}
			// Read again when it changes; until then, no homes.
			*problems = append(*problems, Problem{File: w.opt.Passwd, Reason: fmt.Sprintf("%v: homes unknown, only root's files (and those under a .ssh) are trusted", err)})
		}
		w.users, w.passwdStamp = u, stamp
		// A user's home moved: every file's owner may have changed.
		w.stamps = nil
	}
	return w.users
}

// expand lists the files the patterns name now, at most MaxFiles, and the
// literal paths (no wildcards) that do not exist.
func (w *Watcher) expand(problems *[]Problem) (paths, missing []string) {
	seen := map[string]bool{}
	for _, pat := range w.patterns {
		var matches []string
		if hasMeta(pat) {
			var denied []string
			matches, denied = glob(pat)
			for i, d := range denied {
				if i == maxDeniedReported {
					*problems = append(*problems, Problem{File: pat, Reason: fmt.Sprintf("%d more directories it goes through cannot be searched", len(denied)-i)})
					break
				}
				*problems = append(*problems, Problem{File: d, Reason: fmt.Sprintf("cannot be searched (permission denied): no keys from %s under it", pat)})
			}
		} else if _, err := os.Lstat(pat); err == nil {
			matches = []string{pat}
		} else {
			missing = append(missing, pat)
			*problems = append(*problems, Problem{File: pat, Reason: fmt.Sprintf("%v: no keys from it", unwrapPathErr(err))})
			continue
		}
		for _, m := range matches {
			m = filepath.Clean(m)
			if seen[m] {
				continue
			}
			seen[m] = true
			if len(paths) >= w.opt.MaxFiles {
				*problems = append(*problems, Problem{File: pat, Reason: fmt.Sprintf("names more than %d files: the rest are skipped", w.opt.MaxFiles)})
				return paths, missing
			}
			paths = append(paths, m)
		}
	}
	return paths, missing
}

// maxDeniedReported bounds the directories named, per pattern, that a
// glob could not search: a thousand homes of mode 0700 need one fix, not a
// thousand lines.
const maxDeniedReported = 8

// glob is filepath.Glob (the same matches, in the same order) that also
// returns the directories it could not list or search. filepath.Glob
// skips those in silence, and a daemon without CAP_DAC_READ_SEARCH cannot
// enter a home of mode 0700 (Debian's default since bookworm): a pattern
// such as /home/*/.ssh/authorized_keys would match nothing, and nobody
// would know why. The pattern was checked in NewWatcher.
func glob(pattern string) (matches, denied []string) {
	dir, file := filepath.Split(pattern)
	if dir != "/" {
		dir = dir[:len(dir)-1] // the separator Split leaves
	}
	dirs := []string{dir}
	if hasMeta(dir) {
		dirs, denied = glob(dir)
	}
	for _, d := range dirs {
		if !hasMeta(file) {
			p := filepath.Join(d, file)
			if _, err := os.Lstat(p); err == nil {
				matches = append(matches, p)
			} else if errors.Is(err, fs.ErrPermission) {
				denied = append(denied, d)
			}
			continue
		}
		names, err := readNames(d)
		if errors.Is(err, fs.ErrPermission) {
			denied = append(denied, d)
		}
		for _, n := range names {
			if ok, _ := filepath.Match(file, n); ok {
				matches = append(matches, filepath.Join(d, n))
			}
		}
	}
	return matches, denied
}

// readNames lists dir's entries, sorted, as filepath.Glob does.
func readNames(dir string) ([]string, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	slices.Sort(names)
	return names, err
}

func hasMeta(p string) bool {
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '*', '?', '[', '\\':
			return true
		}
	}
	return false
}

// racyWindow: a file changed this recently may change again without its
// stamp showing it (the kernel's file times come from a clock that ticks
// every few milliseconds, and a second write of the same size in the same
// tick leaves the stamp as it was), so it is read again at the next poll,
// until it has been quiet this long: ten times the coarsest tick (HZ=100).
const racyWindow = 100 * time.Millisecond

func racy(fi os.FileInfo, now time.Time) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true
	}
	changed := time.Unix(st.Ctim.Sec, st.Ctim.Nsec)
	return now.Sub(changed) < racyWindow
}

// changedError: the file changed between its check and its read.
type changedError string

func (e changedError) Error() string { return string(e) }

// read reads and parses the file c checked, at most maxKeys keys of it.
func (w *Watcher) read(path string, c *checked, maxKeys int) ([]*Key, []Problem, error) {
	// O_NOFOLLOW: the resolved path had no link at its end when it was
	// checked; one there now is a change under the check. O_NONBLOCK: a
	// FIFO put in the file's place must not hang the daemon.
	fd, err := syscall.Open(c.resolved, syscall.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, nil, changedError("changed while being read")
		}
		return nil, nil, err
	}
	f := os.NewFile(uintptr(fd), c.resolved)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !os.SameFile(fi, c.file) || !fi.Mode().IsRegular() {
		return nil, nil, changedError("changed while being read")
	}
	if fi.Size() > w.opt.MaxFileSize {
		return nil, nil, fmt.Errorf("larger than %d bytes", w.opt.MaxFileSize)
	}
	data, err := io.ReadAll(io.LimitReader(f, w.opt.MaxFileSize+1))
	if err != nil {
		return nil, nil, err
	}
	if int64(len(data)) > w.opt.MaxFileSize {
		return nil, nil, fmt.Errorf("larger than %d bytes", w.opt.MaxFileSize)
	}
	if maxKeys < 0 {
		maxKeys = 0
	}
	keys, problems := Parse(path, data, maxKeys)
	return keys, problems, nil
}
