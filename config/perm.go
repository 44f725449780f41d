package config

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// CheckPrivate refuses a file that someone other than root could change,
// the way sshd's StrictModes does: the config decides who gets through the
// firewall, so whoever can write it can open any port. Load calls it for
// the config file; every file a config names (one-time sequences, key
// files) must be checked with it too, at start and at reload.
//
// The file passes when:
//
//   - it is a regular file, owned by root (or by the user the daemon runs
//     as, as sshd accepts the user's own files), and not writable by group
//     or others;
//   - every directory above it, up to /, is owned by root (or that user)
//     and not writable by group or others, since whoever can write a
//     directory can replace the file in it. A world-writable directory is
//     accepted only with the sticky bit set (/tmp, mode 1777): there only
//     an entry's owner can rename or remove it, and the entry below it has
//     to pass the ownership check itself.
//
// Symbolic links are followed, not refused (/etc is often managed with
// links): the check applies to the file they resolve to and the directories
// above it, and also to the directories above the path as given, since
// whoever can write those can point the link elsewhere.
//
// Readability by others is not checked: the config holds knock sequences,
// not keys; a file that must stay secret is checked by its own reader.
func CheckPrivate(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	resolved, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	fi, err := os.Stat(resolved)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	name := path
	if resolved != abs {
		name = fmt.Sprintf("%s (a link to %s)", path, resolved)
	}
	if !fi.Mode().IsRegular() {
		return &Error{File: name, Msg: fmt.Sprintf("not a regular file (%s)", fi.Mode().Type())}
	}
	uid := ownerOf(fi)
	if !trustedOwner(uid) {
		return &Error{File: name, Msg: fmt.Sprintf(
			"owned by uid %d, not root: anyone who can write it decides who gets through the firewall. Fix: chown root:root %s; chmod 600 %s",
			uid, resolved, resolved)}
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return &Error{File: name, Msg: fmt.Sprintf(
			"writable by group or others (mode %04o): anyone who can write it decides who gets through the firewall. Fix: chmod go-w %s (or chmod 600 %s)",
			perm, resolved, resolved)}
	}
	seen := map[string]bool{}
	for _, dir := range append(ancestors(abs), ancestors(resolved)...) {
		if seen[dir] {
			continue
		}
		seen[dir] = true
		if err := checkDir(name, dir); err != nil {
			return err
		}
	}
	return nil
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

// checkDir checks one directory above the file named name.
func checkDir(name, dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("%s: directory %s: %w", name, dir, err)
	}
	if uid := ownerOf(fi); !trustedOwner(uid) {
		return &Error{File: name, Msg: fmt.Sprintf(
			"its directory %s is owned by uid %d, not root: whoever owns a directory can replace the files in it. Fix: chown root:root %s, or move the file",
			dir, uid, dir)}
	}
	perm := fi.Mode().Perm()
	if perm&0o022 == 0 {
		return nil
	}
	if fi.Mode()&fs.ModeSticky != 0 {
		return nil // like /tmp: only an entry's owner may rename or remove it
	}
	return &Error{File: name, Msg: fmt.Sprintf(
		"its directory %s is writable by group or others (mode %04o): whoever can write it can replace the file. Fix: chmod go-w %s",
		dir, perm, dir)}
}

func ownerOf(fi fs.FileInfo) uint32 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Uid
	}
	return ^uint32(0)
}

// trustedOwner reports whether uid may own the config and its directories:
// root, or the user the daemon runs as.
func trustedOwner(uid uint32) bool {
	return uid == 0 || uid == uint32(os.Geteuid())
}
