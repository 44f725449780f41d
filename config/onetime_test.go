package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// otWrite writes a one_time_sequences file with mode 0600 and returns its path.
func otWrite(t *testing.T, dir, content string) string {
	t.Helper()
	path := filepath.Join(dir, "otp")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func otLoad(t *testing.T, path string) *OneTime {
	t.Helper()
	o, err := LoadOneTime(path)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func otRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// otSeq parses a sequence the tests know to be valid.
func otSeq(t *testing.T, s string) []Port {
	t.Helper()
	seq, err := ParseSequence(s)
	if err != nil {
		t.Fatal(err)
	}
	return seq
}

// otWantCurrent checks Current against a sequence and a line; line 0
// means the file must have run out.
func otWantCurrent(t *testing.T, o *OneTime, want string, wantLine, remaining int) {
	t.Helper()
	seq, line, ok := o.Current()
	if wantLine == 0 {
		if ok || seq != nil || line != 0 {
			t.Fatalf("Current = %v, %d, %v; want the file run out", seq, line, ok)
		}
	} else if !ok || line != wantLine || !slices.Equal(seq, otSeq(t, want)) {
		t.Fatalf("Current = %v, line %d, %v; want %s on line %d", seq, line, ok, want, wantLine)
	}
	if o.Remaining() != remaining {
		t.Fatalf("Remaining = %d, want %d", o.Remaining(), remaining)
	}
}

// otNoTemp fails if anything but the listed names is in dir.
func otNoTemp(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, names) {
		t.Errorf("directory holds %q, want only %q (a temp file was left behind?)", got, names)
	}
}

const otSample = `# one-time sequences for door ssh
#7000,8000,9000

  7001:tcp, 8001:udp  9001
	# an indented comment
7002 8002:UDP,1000:icmp
7003
`

func TestLoadOneTime(t *testing.T) {
	o := otLoad(t, otWrite(t, t.TempDir(), otSample))
	otWantCurrent(t, o, "7001:tcp,8001:udp,9001:tcp", 4, 3)
	// Current hands out a copy: the caller cannot change what is due.
	seq, _, _ := o.Current()
	seq[0].Num = 1
	otWantCurrent(t, o, "7001,8001:udp,9001", 4, 3)
	if got := fmt.Sprint(o.seqs[1].seq); got != "[7002:tcp 8002:udp 1000:icmp]" {
		t.Errorf("second sequence = %s", got)
	}
}

func TestOneTimeUseMarksExactlyThatLine(t *testing.T) {
	dir := t.TempDir()
	path := otWrite(t, dir, otSample)
	o := otLoad(t, path)
	steps := []struct {
		file      string // the whole file after Use
		next      string
		line, rem int
	}{
		{strings.Replace(otSample, "  7001:tcp", "#  7001:tcp", 1), "7002,8002:udp,1000:icmp", 6, 2},
		{strings.NewReplacer("  7001:tcp", "#  7001:tcp", "7002 8002", "#7002 8002").Replace(otSample), "7003", 7, 1},
		{strings.NewReplacer("  7001:tcp", "#  7001:tcp", "7002 8002", "#7002 8002", "7003", "#7003").Replace(otSample), "", 0, 0},
	}
	for i, s := range steps {
		if err := o.Use(); err != nil {
			t.Fatalf("Use %d: %v", i+1, err)
		}
		if got := otRead(t, path); got != s.file {
			t.Fatalf("after Use %d the file is\n%q\nwant\n%q", i+1, got, s.file)
		}
		otWantCurrent(t, o, s.next, s.line, s.rem)
		otNoTemp(t, dir, "otp")
	}
	// Run out: Use refuses and changes nothing.
	before := otRead(t, path)
	if err := o.Use(); err == nil || !strings.Contains(err.Error(), "no unused one-time sequence") {
		t.Errorf("Use on a used-up file: %v", err)
	}
	if otRead(t, path) != before {
		t.Error("Use on a used-up file changed it")
	}
	// What is left loads as a file with nothing due, not as an error.
	otWantCurrent(t, otLoad(t, path), "", 0, 0)
}

func TestOneTimeKeepsCRLFAndMissingNewline(t *testing.T) {
	for _, tc := range []struct{ name, in, out string }{
		{"crlf", "# used\r\n\r\n7000,8000\r\n9000 9001\r\n", "# used\r\n\r\n#7000,8000\r\n9000 9001\r\n"},
		{"no final newline", "7000,8000\n9000 9001", "#7000,8000\n9000 9001"},
		{"last line, no final newline", "#7000,8000\n  9000 9001", "#7000,8000\n#  9000 9001"},
		{"crlf, no final newline", "7000,8000\r", "#7000,8000\r"},
		{"tabs and spaces", "\t \n\t7000\t8000 \n", "\t \n#\t7000\t8000 \n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := otWrite(t, dir, tc.in)
			o := otLoad(t, path)
			if err := o.Use(); err != nil {
				t.Fatal(err)
			}
			if got := otRead(t, path); got != tc.out {
				t.Errorf("file after Use\n got %q\nwant %q", got, tc.out)
			}
		})
	}
}

func TestLoadOneTimeRunOut(t *testing.T) {
	for name, content := range map[string]string{
		"empty":         "",
		"comments only": "# nothing\n#7000,8000\n\n   \r\n\t#x\n",
		"no newline":    "#7000",
	} {
		t.Run(name, func(t *testing.T) {
			otWantCurrent(t, otLoad(t, otWrite(t, t.TempDir(), content)), "", 0, 0)
		})
	}
}

func TestLoadOneTimeErrors(t *testing.T) {
	long := strings.Repeat("7000,8000,", oneTimeMaxLine/10+1)
	many := strings.Repeat("7000,8000\n", oneTimeMaxSeqs) + "7000\n"
	for _, tc := range []struct {
		name, content string
		line          int
		want          string
	}{
		{"bad port", "#ok\n7000,8000\n7000,70000\n", 3, `"70000": port 70000 is out of range`},
		{"bad protocol", "\n\n\n7000:sctp\n", 4, `protocol "sctp" is not tcp, udp or icmp`},
		{"not a number", "7000\nhello world\n", 2, "port is not a number"},
		{"only separators", ",,,\n", 1, "empty sequence"},
		{"too many knocks", strings.Repeat("1,2,", 17) + "\n", 1, "at most 32 are allowed"},
		{"repeated knock", "7000,8000:udp,8000:udp\n", 1, "knock 3 (8000:udp) repeats the knock before it"},
		{"line too long", "7000\n" + long + "\n", 2, "line is longer than 4096 bytes"},
		{"long comment", "#" + strings.Repeat("x", oneTimeMaxLine) + "\n", 1, "line is longer than 4096 bytes"},
		{"too many sequences", many, oneTimeMaxSeqs + 1, "more than 10000 unused sequences"},
		{"a bad line after used ones", "#7000,8000\n#junk\njunk\n", 3, "not a knock sequence"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := otWrite(t, t.TempDir(), tc.content)
			o, err := LoadOneTime(path)
			if err == nil {
				t.Fatalf("loaded, %d sequences", o.Remaining())
			}
			prefix := fmt.Sprintf("%s:%d: ", path, tc.line)
			if !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want %q…%q", err, prefix, tc.want)
			}
			var ce *Error
			if !errors.As(err, &ce) || ce.File != path || ce.Line != tc.line {
				t.Errorf("error is not a *config.Error for %s:%d: %#v", path, tc.line, err)
			}
		})
	}

	t.Run("file too large", func(t *testing.T) {
		path := otWrite(t, t.TempDir(), "#"+strings.Repeat("x", oneTimeMaxSize))
		if _, err := LoadOneTime(path); err == nil || !strings.HasPrefix(err.Error(), path+": file is larger than") {
			t.Errorf("error %v", err)
		}
	})
	t.Run("size limit", func(t *testing.T) {
		// A file at the limit loads, but a Use that would push it over is
		// refused: written, the file would no longer load.
		content := "7000\n#" + strings.Repeat("x", oneTimeMaxLine-1) + "\n"
		content += strings.Repeat("#\n", (oneTimeMaxSize-len(content))/2)
		content += strings.Repeat("\n", oneTimeMaxSize-len(content))
		path := otWrite(t, t.TempDir(), content)
		o := otLoad(t, path)
		if err := o.Use(); err == nil || !strings.HasPrefix(err.Error(), path+": marking line 1 used would make the file larger") {
			t.Errorf("Use at the size limit: %v", err)
		}
		otWantCurrent(t, o, "7000", 1, 1)
		if otRead(t, path) != content {
			t.Error("the file changed")
		}
		if err := os.WriteFile(path, []byte(content+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadOneTime(path); err == nil || !strings.HasPrefix(err.Error(), path+": file is larger than") {
			t.Errorf("a file over the limit: %v", err)
		}
	})
	t.Run("missing", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "nope")
		if _, err := LoadOneTime(path); err == nil || !strings.Contains(err.Error(), path) || !errors.Is(err, os.ErrNotExist) {
			t.Errorf("error %v", err)
		}
	})
	t.Run("fifo", func(t *testing.T) {
		// Must fail at once, not block in open waiting for a writer.
		path := filepath.Join(t.TempDir(), "fifo")
		if err := syscall.Mkfifo(path, 0o600); err != nil {
			t.Skip(err)
		}
		if _, err := LoadOneTime(path); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("error %v", err)
		}
	})
	t.Run("directory", func(t *testing.T) {
		dir := t.TempDir()
		if _, err := LoadOneTime(dir); err == nil || !strings.HasPrefix(err.Error(), dir+": not a regular file") {
			t.Errorf("error %v", err)
		}
	})
}

func TestOneTimeUseKeepsModeAndOwner(t *testing.T) {
	dir := t.TempDir()
	path := otWrite(t, dir, "7000\n8000\n")
	wantUID, wantGID := os.Getuid(), os.Getgid()
	if os.Geteuid() == 0 {
		// Root rewrites a file someone else owns: the owner must stay.
		wantUID, wantGID = 4242, 4343
		if err := os.Chown(path, wantUID, wantGID); err != nil {
			t.Fatal(err)
		}
	}
	o := otLoad(t, path)
	for _, mode := range []os.FileMode{0o600, 0o640} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		if err := o.Use(); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode() != mode || int(st.Uid) != wantUID || int(st.Gid) != wantGID {
			t.Errorf("after Use: mode %v owner %d:%d, want %v %d:%d", fi.Mode(), st.Uid, st.Gid, mode, wantUID, wantGID)
		}
		otNoTemp(t, dir, "otp")
	}
}

func TestOneTimeUseFollowsSymlink(t *testing.T) {
	dir := t.TempDir()
	target := otWrite(t, dir, "7000\n8000\n")
	link := filepath.Join(dir, "link")
	if err := os.Symlink("otp", link); err != nil {
		t.Fatal(err)
	}
	o := otLoad(t, link)
	if err := o.Use(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the symlink was replaced: %v %v", fi.Mode(), err)
	}
	if got := otRead(t, target); got != "#7000\n8000\n" {
		t.Errorf("target is %q", got)
	}
	otNoTemp(t, dir, "link", "otp")
}

// otAsNobody runs f where the directory's permissions bind: root passes
// them (CAP_DAC_OVERRIDE), so as root f runs on a thread of its own whose
// file-system uid is nobody's, which drops those capabilities for that
// thread alone. The thread stays locked and dies with the goroutine, so
// its changed identity never serves other goroutines.
func otAsNobody(f func()) {
	if os.Geteuid() != 0 {
		f()
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		syscall.Setfsuid(65534)
		f()
	}()
	<-done
}

func TestOneTimeUseFailsOnReadOnlyDirectory(t *testing.T) {
	dir := t.TempDir()
	// As root the test reads as nobody: open up t.TempDir's parent, and
	// the file to reading.
	if err := os.Chmod(filepath.Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	path := otWrite(t, dir, "# keys\n7000,8000\n9000\n")
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	o := otLoad(t, path)
	if err := os.Chmod(dir, 0o555); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(dir, 0o755) })

	var err, probe error
	otAsNobody(func() {
		if f, err := os.Create(filepath.Join(dir, "probe")); err == nil {
			f.Close()
			probe = errors.New("the directory is writable after all")
			return
		}
		err = o.Use()
	})
	if probe != nil {
		t.Skip(probe)
	}
	if err == nil || !errors.Is(err, os.ErrPermission) || !strings.Contains(err.Error(), path) {
		t.Fatalf("Use in a read-only directory: %v; want a permission error naming the file", err)
	}
	if got := otRead(t, path); got != "# keys\n7000,8000\n9000\n" {
		t.Errorf("the file changed: %q", got)
	}
	otWantCurrent(t, o, "7000,8000", 2, 2)
	otNoTemp(t, dir, "otp")

	// Once the directory is writable again, the same sequence is marked.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := o.Use(); err != nil {
		t.Fatal(err)
	}
	if got := otRead(t, path); got != "# keys\n#7000,8000\n9000\n" {
		t.Errorf("the file is %q", got)
	}
}

func TestOneTimeUseFollowsConcurrentEdit(t *testing.T) {
	dir := t.TempDir()
	path := otWrite(t, dir, "7000,8000\n7001,8001\n")
	o := otLoad(t, path)
	otWantCurrent(t, o, "7000,8000", 1, 2)

	// Someone adds sequences above and rewrites the due one with other
	// separators: it is still the same sequence, now on line 4.
	edited := "# regenerated\n#6000\n6001 6002\n 7000:tcp 8000\r\n7001,8001\n"
	if err := os.WriteFile(path, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := o.Use(); err != nil {
		t.Fatal(err)
	}
	if got, want := otRead(t, path), "# regenerated\n#6000\n6001 6002\n# 7000:tcp 8000\r\n7001,8001\n"; got != want {
		t.Errorf("file\n got %q\nwant %q", got, want)
	}
	// From now on the file as it is counts: 6001 6002 is due.
	otWantCurrent(t, o, "6001,6002", 3, 2)

	// The due sequence disappears: Use says so, marks nothing, stays put.
	gone := "# regenerated\n#6000\n#6001 6002 (used by hand)\n# 7000:tcp 8000\r\n7001,8001\n"
	if err := os.WriteFile(path, []byte(gone), 0o600); err != nil {
		t.Fatal(err)
	}
	err := o.Use()
	if err == nil || !strings.HasPrefix(err.Error(), path+": ") || !strings.Contains(err.Error(), "no longer in the file") {
		t.Fatalf("Use with the due sequence gone: %v", err)
	}
	if strings.Contains(err.Error(), "6001") {
		t.Errorf("the error shows the secret sequence: %v", err)
	}
	if otRead(t, path) != gone {
		t.Error("Use changed the file although the sequence was gone")
	}
	otWantCurrent(t, o, "6001,6002", 3, 2)

	// An edit that breaks the file: Use refuses, state unchanged.
	if err := os.WriteFile(path, []byte("6001 6002\nbroken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := o.Use(); err == nil || !strings.Contains(err.Error(), path+":2:") {
		t.Fatalf("Use on a broken file: %v", err)
	}
	otWantCurrent(t, o, "6001,6002", 3, 2)
}

func TestOneTimeUseMarksFirstOfDuplicates(t *testing.T) {
	path := otWrite(t, t.TempDir(), "7000,8000\n9000\n7000,8000\n")
	o := otLoad(t, path)
	for _, want := range []string{"#7000,8000\n9000\n7000,8000\n", "#7000,8000\n#9000\n7000,8000\n", "#7000,8000\n#9000\n#7000,8000\n"} {
		if err := o.Use(); err != nil {
			t.Fatal(err)
		}
		if got := otRead(t, path); got != want {
			t.Fatalf("file %q, want %q", got, want)
		}
	}
}

func FuzzLoadOneTime(f *testing.F) {
	f.Add([]byte(otSample))
	f.Add([]byte("7000,8000\r\n#x\r\n9000:udp 1:icmp"))
	f.Add([]byte("#\n\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "otp")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		o, err := LoadOneTime(path)
		if err != nil {
			var ce *Error
			if o != nil || !errors.As(err, &ce) || ce.File != path || !strings.HasPrefix(err.Error(), path+":") {
				t.Fatalf("bad error %#v (OneTime %v)", err, o)
			}
			return
		}
		seq, line, ok := o.Current()
		if ok != (o.Remaining() > 0) || o.Remaining() > oneTimeMaxSeqs {
			t.Fatalf("Current ok=%v with Remaining %d", ok, o.Remaining())
		}
		if !ok {
			if err := o.Use(); err == nil {
				t.Fatal("Use succeeded with nothing left")
			}
			return
		}
		if len(seq) == 0 || len(seq) > maxSequence {
			t.Fatalf("sequence of %d knocks", len(seq))
		}
		for i, p := range seq {
			if (p.Num == 0 && p.Proto != ICMP) || (p.Proto != TCP && p.Proto != UDP && p.Proto != ICMP) || p.Last != 0 ||
				(i > 0 && p == seq[i-1]) {
				t.Fatalf("invalid knock %d accepted: %+v", i, p)
			}
		}
		// The line Current names must be where Use puts the '#', and Use
		// must change nothing else.
		lines := bytes.SplitAfter(data, []byte("\n"))
		if line < 1 || line > len(lines) {
			t.Fatalf("line %d of %d", line, len(lines))
		}
		off := len(bytes.Join(lines[:line-1], nil))
		rem := o.Remaining()
		if err := o.Use(); err != nil {
			t.Fatal(err)
		}
		want := slices.Concat(data[:off], []byte("#"), data[off:])
		if got := []byte(otRead(t, path)); !bytes.Equal(got, want) {
			t.Fatalf("after Use\n got %q\nwant %q", got, want)
		}
		if o.Remaining() != rem-1 {
			t.Fatalf("Remaining %d after Use, was %d", o.Remaining(), rem)
		}
		if again := otLoad(t, path); again.Remaining() != o.Remaining() {
			t.Fatalf("reloaded: %d remaining, in memory %d", again.Remaining(), o.Remaining())
		}
	})
}
