package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// Limits on a one_time_sequences file. It is read at every start, reload
// and use, so a hostile or mistaken file must not make the daemon read,
// hold or rewrite without bound. The line limit is knockd's own buffer
// (PATH_MAX), past which knockd would silently split a line in two.
const (
	oneTimeMaxSeqs = 10000
	oneTimeMaxLine = 4 << 10
	// oneTimeMaxSize is 1 MiB plus room for the '#' that Use adds to each
	// used line, so that a file that loads keeps loading as it is used up.
	oneTimeMaxSize = 1<<20 + oneTimeMaxSeqs
)

// oneTimeBlank is what may surround a sequence or precede a comment's '#':
// ASCII white space, as C's isspace, which knockd's trim uses.
const oneTimeBlank = " \t\r\n\v\f"

// OneTime is a one_time_sequences file: the sequences still unused, in file order.
//
// The format is knockd's: one sequence per line in a door's notation
// ("7000:tcp,8000:udp,9000", commas and/or spaces; "N:icmp" steps too);
// blank lines and lines whose first non-blank character is '#' are
// skipped; the first other line is the sequence due now. When a sequence
// has been used, knockd overwrites its line's first character with '#';
// nftknock instead prepends a '#' to the line, which leaves the used
// sequence readable (for an audit) while knockd and nftknock alike read
// the line as a comment. Nothing else in the file is ever changed.
//
// A OneTime is not safe for concurrent use: the daemon's loop owns it.
type OneTime struct {
	path string
	seqs []oneTimeLine
}

// oneTimeLine is one unused sequence and where it sits in the file.
type oneTimeLine struct {
	seq  []Port
	line int // 1-based
	off  int // offset of the line's first byte in the file
}

// LoadOneTime reads path. Errors name the file and line ("path:3: ..."); a
// line that does not parse is an error (refuse the whole file, do not skip
// it silently). A file with no unused sequence is not an error: Current
// reports ok=false.
func LoadOneTime(path string) (*OneTime, error) {
	data, err := readOneTime(path)
	if err != nil {
		return nil, err
	}
	seqs, err := parseOneTime(path, data)
	if err != nil {
		return nil, err
	}
	return &OneTime{path: path, seqs: seqs}, nil
}

// Current returns the sequence due now and its 1-based line number; ok is
// false when the file has run out.
func (o *OneTime) Current() (seq []Port, line int, ok bool) {
	if len(o.seqs) == 0 {
		return nil, 0, false
	}
	cur := o.seqs[0]
	return slices.Clone(cur.seq), cur.line, true
}

// Remaining returns how many unused sequences are left (including the
// current one).
func (o *OneTime) Remaining() int { return len(o.seqs) }

// Use marks the current sequence used and advances to the next. It
// rewrites the file atomically: a temp file in the same directory, same
// mode (and owner, if we can), fsync, rename over the original, fsync the
// directory. The file on disk is never half-written, whatever crashes
// when. If the rewrite fails, the in-memory state does not advance and the
// error is returned (the daemon then disables the door — fail closed).
//
// The file may have been edited since it was loaded, so Use reads it
// again and marks the first unused line that holds the current sequence,
// wherever it is now (as knockd's get_current_one_time_sequence_position
// does); it is an error if no line holds it any more. After a successful
// Use, the remaining sequences are those of the file as just rewritten.
//
// A symlink is followed: its target is rewritten and the link stays. A
// hard link to the file is broken by the rename (it keeps the old content).
func (o *OneTime) Use() error {
	if len(o.seqs) == 0 {
		return fmt.Errorf("%s: no unused one-time sequence is left to mark", o.path)
	}
	cur := o.seqs[0]
	data, err := readOneTime(o.path)
	if err != nil {
		return fmt.Errorf("mark one-time sequence used: %w", err)
	}
	now, err := parseOneTime(o.path, data)
	if err != nil {
		return fmt.Errorf("mark one-time sequence used: the file changed and no longer loads: %w", err)
	}
	i := slices.IndexFunc(now, func(l oneTimeLine) bool { return slices.Equal(l.seq, cur.seq) })
	if i < 0 {
		// The sequence itself is a secret: the message names only its line.
		return &Error{File: o.path, Msg: fmt.Sprintf(
			"the sequence that was due (line %d when loaded) is no longer in the file: it was edited since; nothing was marked", cur.line)}
	}
	off := now[i].off
	out := make([]byte, 0, len(data)+1)
	out = append(out, data[:off]...)
	out = append(out, '#')
	out = append(out, data[off:]...)

	if len(out) > oneTimeMaxSize {
		// Written, it would fail to load at the next start or reload.
		return &Error{File: o.path, Msg: fmt.Sprintf(
			"marking line %d used would make the file larger than %d bytes: delete used lines", now[i].line, oneTimeMaxSize)}
	}
	target, err := filepath.EvalSymlinks(o.path)
	if err != nil {
		return fmt.Errorf("mark one-time sequence used: %w", err)
	}
	if err := writeFileAtomic(target, out); err != nil {
		return fmt.Errorf("mark one-time sequence used in %s (line %d): %w", o.path, now[i].line, err)
	}
	now = slices.Delete(now, i, i+1)
	for j := i; j < len(now); j++ {
		now[j].off++ // the lines after the marked one moved by the '#'
	}
	o.seqs = now
	return nil
}

// keepOwner gives tmp the owner of the file it replaces, and calls chown
// only when the two differ. Under the unit they never do: the daemon runs
// as root and the file must be root's (LoadOneTime's callers check that),
// and chown is a call the unit's system call filter forbids (@privileged),
// so a rewrite that always called it would be a rewrite the sandbox
// refuses. Only root may give a file away; any other process keeps its own
// ownership, which is then the best it can do.
//
// Owner before mode: chown clears the set-id bits that chmod restores.
func keepOwner(tmp *os.File, orig fs.FileInfo) error {
	want, ok := orig.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	tfi, err := tmp.Stat()
	if err != nil {
		return err
	}
	if have, ok := tfi.Sys().(*syscall.Stat_t); ok && have.Uid == want.Uid && have.Gid == want.Gid {
		return nil
	}
	if err := tmp.Chown(int(want.Uid), int(want.Gid)); err != nil && !errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("give %s the owner %d:%d of the file it replaces: %w", tmp.Name(), want.Uid, want.Gid, err)
	}
	return nil
}

// readOneTime reads at most oneTimeMaxSize+1 bytes of a regular file.
func readOneTime(path string) ([]byte, error) {
	// O_NONBLOCK so that a FIFO put in the file's place fails below
	// instead of blocking the daemon's loop for ever in open.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("read one-time sequences: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read one-time sequences: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, &Error{File: path, Msg: fmt.Sprintf("not a regular file (%s)", fi.Mode().Type())}
	}
	data, err := io.ReadAll(io.LimitReader(f, oneTimeMaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("read one-time sequences %s: %w", path, err)
	}
	if len(data) > oneTimeMaxSize {
		return nil, &Error{File: path, Msg: fmt.Sprintf("file is larger than %d bytes", oneTimeMaxSize)}
	}
	return data, nil
}

// parseOneTime returns the unused sequences in data. Lines end at '\n'
// only, as for knockd's fgets; a '\r' before it (CRLF files) is blank.
func parseOneTime(path string, data []byte) ([]oneTimeLine, error) {
	var seqs []oneTimeLine
	for off, n := 0, 1; off < len(data); n++ {
		line, next := data[off:], len(data)
		if i := bytes.IndexByte(line, '\n'); i >= 0 {
			line, next = line[:i], off+i+1
		}
		if len(bytes.TrimSuffix(line, []byte("\r"))) > oneTimeMaxLine {
			return nil, &Error{File: path, Line: n, Msg: fmt.Sprintf("line is longer than %d bytes", oneTimeMaxLine)}
		}
		text := strings.Trim(string(line), oneTimeBlank)
		if text != "" && text[0] != '#' {
			seq, err := ParseSequence(text)
			if err != nil {
				return nil, &Error{File: path, Line: n, Msg: fmt.Sprintf("not a knock sequence: %v", err)}
			}
			for j := 1; j < len(seq); j++ {
				if seq[j] == seq[j-1] {
					return nil, &Error{File: path, Line: n, Msg: fmt.Sprintf(
						"knock %d (%s) repeats the knock before it: a repeated knock cannot be told from a retransmitted packet", j+1, seq[j])}
				}
			}
			if len(seqs) == oneTimeMaxSeqs {
				return nil, &Error{File: path, Line: n, Msg: fmt.Sprintf("more than %d unused sequences", oneTimeMaxSeqs)}
			}
			seqs = append(seqs, oneTimeLine{seq: seq, line: n, off: off})
		}
		off = next
	}
	return seqs, nil
}

// writeFileAtomic replaces path with data so that a crash at any moment
// leaves either the old file or the new one, whole: the data goes to a
// temp file in the same directory (rename is atomic only within one file
// system), is synced, renamed over path, and the directory is synced so
// the rename itself survives a power cut.
func writeFileAtomic(path string, data []byte) (err error) {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	renamed := false
	defer func() {
		if err != nil && !renamed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := keepOwner(tmp, fi); err != nil {
		return err
	}
	if err := tmp.Chmod(fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)); err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	renamed = true
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
