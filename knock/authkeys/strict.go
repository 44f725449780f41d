package authkeys

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// The StrictModes check: whoever can change an authorized_keys file
// decides whose key opens the door, so a file is trusted only when none
// but root and its user can change it, as sshd's StrictModes (its
// auth_secure_path) requires before it reads one:
//
//   - the file is a regular file, owned by root or its user, not writable
//     by group or others;
//   - every directory above it, up to /, likewise — sshd stops at the
//     home directory; this check goes on to /, as the daemon's own config
//     check does (config.CheckPrivate), and like that check accepts a
//     world-writable directory that has the sticky bit (/tmp), where only
//     an entry's owner can replace it.
//
// Its user is the one whose home directory (in the passwd file) holds the
// file, the deepest such home; failing that, when the path has a .ssh
// directory, the owner of the directory that holds .ssh (a user from a
// directory service that /etc/passwd does not list). A file under no home
// must be root's, or the daemon's own user's. Symbolic links are followed:
// the check applies to the file they resolve to and the directories above
// it, and to the directories above the path as given.

// users maps home directories to their users' ids.
type users map[string]uint32

// maxPasswd bounds what is read of the passwd file.
const maxPasswd = 8 << 20

// readPasswd reads the home directories of a passwd(5) file. Homes that
// are / (or empty) are left out: everything would be under them.
func readPasswd(path string) (users, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	u := users{}
	sc := bufio.NewScanner(&limitedReader{f, maxPasswd})
	sc.Buffer(make([]byte, 4096), 64<<10)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) < 7 {
			continue
		}
		uid, err := strconv.ParseUint(fields[2], 10, 32)
		home := filepath.Clean(fields[5])
		if err != nil || !filepath.IsAbs(home) || home == "/" {
			continue
		}
		if _, dup := u[home]; !dup {
			u[home] = uint32(uid)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return u, nil
}

type limitedReader struct {
	f interface{ Read([]byte) (int, error) }
	n int64
}

func (l *limitedReader) Read(b []byte) (int, error) {
	if l.n <= 0 {
		return 0, fmt.Errorf("larger than %d bytes", maxPasswd)
	}
	if int64(len(b)) > l.n {
		b = b[:l.n]
	}
	n, err := l.f.Read(b)
	l.n -= int64(n)
	return n, err
}

// owner is whose file a path is: the user's id, and how that was found.
type owner struct {
	uid   uint32
	known bool
	why   string // "home /home/alice of uid 1000"
}

// ownerOf finds the user whose file the absolute, resolved path is.
func (u users) ownerOf(path string) owner {
	best := ""
	for d := filepath.Dir(path); d != "/" && d != "."; d = filepath.Dir(d) {
		if _, ok := u[d]; ok {
			best = d
			break // the deepest home above path
		}
	}
	if best != "" {
		return owner{uid: u[best], known: true, why: fmt.Sprintf("the home %s of uid %d", best, u[best])}
	}
	// A user /etc/passwd does not list: the owner of the directory
	// holding the nearest .ssh.
	for d := filepath.Dir(path); d != "/" && d != "."; d = filepath.Dir(d) {
		if filepath.Base(d) == ".ssh" {
			home := filepath.Dir(d)
			if fi, err := os.Stat(home); err == nil {
				uid := uidOf(fi)
				return owner{uid: uid, known: true, why: fmt.Sprintf("the directory %s (owner uid %d) holding .ssh", home, uid)}
			}
			break
		}
	}
	return owner{}
}

// trusts reports whether uid may own the file or a directory above it.
func (o owner) trusts(uid uint32) bool {
	return uid == 0 || uid == uint32(os.Geteuid()) || (o.known && uid == o.uid)
}

func (o owner) whom() string {
	if o.known {
		return fmt.Sprintf("root or uid %d (%s)", o.uid, o.why)
	}
	return "root (it is under no user's home)"
}

// checked is what the StrictModes check saw of one path: the resolved
// file, its user, and a stamp of everything the check read, to tell
// whether anything changed since.
type checked struct {
	resolved string
	owner    owner
	file     fs.FileInfo
	stamp    []byte
}

// strictCheck runs the check on path (absolute). An error says why the
// file is not trusted, with the fix; the stamp is filled in either way as
// far as the check got, so that an unchanged refusal is not reported
// again.
func strictCheck(u users, path string) (c checked, err error) {
	var stamp bytes.Buffer
	defer func() { c.stamp = stamp.Bytes() }()
	resolved, err := filepath.EvalSymlinks(path)
	if err != nil {
		fmt.Fprintf(&stamp, "resolve:%v", err)
		return c, fmt.Errorf("cannot resolve: %w", unwrapPathErr(err))
	}
	c.resolved = resolved
	fmt.Fprintf(&stamp, "%s\x00", resolved)
	fi, err := os.Stat(resolved)
	if err != nil {
		fmt.Fprintf(&stamp, "stat:%v", err)
		return c, unwrapPathErr(err)
	}
	c.file = fi
	stampFile(&stamp, fi)
	c.owner = u.ownerOf(resolved)
	if !fi.Mode().IsRegular() {
		return c, fmt.Errorf("not a regular file (%s)", fi.Mode().Type())
	}
	if uid := uidOf(fi); !c.owner.trusts(uid) {
		return c, fmt.Errorf("owned by uid %d, not %s: anyone who can write it decides whose key opens the door. Fix: chown it to its user, or to root", uid, c.owner.whom())
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return c, fmt.Errorf("writable by group or others (mode %04o): anyone who can write it decides whose key opens the door. Fix: chmod go-w %s", perm, resolved)
	}
	seen := map[string]bool{}
	for _, dir := range append(ancestors(path), ancestors(resolved)...) {
		if seen[dir] {
			continue
		}
		seen[dir] = true
		di, err := os.Stat(dir)
		if err != nil {
			fmt.Fprintf(&stamp, "stat %s:%v", dir, err)
			return c, fmt.Errorf("directory %s: %w", dir, unwrapPathErr(err))
		}
		fmt.Fprintf(&stamp, "|%s:%d:%o:%d", dir, inodeOf(di), di.Mode(), uidOf(di))
		if uid := uidOf(di); !c.owner.trusts(uid) {
			return c, fmt.Errorf("its directory %s is owned by uid %d, not %s: whoever owns a directory can replace the files in it. Fix: chown %s, or move the file", dir, uid, c.owner.whom(), dir)
		}
		if perm := di.Mode().Perm(); perm&0o022 != 0 && di.Mode()&fs.ModeSticky == 0 {
			return c, fmt.Errorf("its directory %s is writable by group or others (mode %04o): whoever can write it can replace the file. Fix: chmod go-w %s", dir, perm, dir)
		}
	}
	return c, nil
}

// stampFile writes what identifies a version of a file: a change of its
// contents, owner, mode or identity changes one of these.
func stampFile(b *bytes.Buffer, fi fs.FileInfo) {
	st, _ := fi.Sys().(*syscall.Stat_t)
	if st == nil {
		fmt.Fprintf(b, "%d:%d:%v", fi.Size(), fi.ModTime().UnixNano(), fi.Mode())
		return
	}
	fmt.Fprintf(b, "%d:%d:%d:%d:%d.%d:%d.%d:%o:%d", st.Dev, st.Ino, st.Size, st.Nlink,
		st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec, st.Mode, st.Uid)
}

// ancestors lists the directories above the absolute path p, nearest
// first, ending with /.
func ancestors(p string) []string {
	var dirs []string
	for d := filepath.Dir(p); ; d = filepath.Dir(d) {
		dirs = append(dirs, d)
		if d == "/" || d == "." {
			return dirs
		}
	}
}

func uidOf(fi fs.FileInfo) uint32 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Uid
	}
	return ^uint32(0)
}

func inodeOf(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

// unwrapPathErr drops the path from an *fs.PathError: the caller names
// the file already.
func unwrapPathErr(err error) error {
	if pe, ok := err.(*fs.PathError); ok {
		return pe.Err
	}
	return err
}
