package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nftknock/nftknock/integration/nstest"
)

// otherUID owns files in the tests that need a stranger's file.
const otherUID = 4242

// privateFile writes a valid config at dir/name with mode 0600 and returns
// its path. dir is made 0700.
func privateFile(t *testing.T, dir, name string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	must(t, os.Chmod(dir, 0o700))
	p := filepath.Join(dir, name)
	must(t, os.WriteFile(p, []byte(minimal), 0o600))
	must(t, os.Chmod(p, 0o600)) // whatever the umask
	return p
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// refused asserts that CheckPrivate and Load both refuse path with an
// error that contains every one of want.
func refused(t *testing.T, path string, want ...string) {
	t.Helper()
	err := CheckPrivate(path)
	if err == nil {
		t.Fatalf("CheckPrivate(%s) = nil, want an error", path)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("CheckPrivate(%s) = %q, want it to contain %q", path, err, w)
		}
	}
	if _, lerr := Load(path); lerr == nil || lerr.Error() != err.Error() {
		t.Errorf("Load(%s) = %v, want the same refusal as CheckPrivate: %v", path, lerr, err)
	}
}

func accepted(t *testing.T, path string) {
	t.Helper()
	if err := CheckPrivate(path); err != nil {
		t.Fatalf("CheckPrivate(%s) = %v, want nil", path, err)
	}
	if _, err := Load(path); err != nil {
		t.Fatalf("Load(%s) = %v, want it loaded", path, err)
	}
}

func TestCheckPrivateAcceptsPrivateFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "etc")
	p := privateFile(t, dir, "nftknock.toml")
	accepted(t, p)
	// Readable by everyone is fine: the file is not a secret.
	must(t, os.Chmod(p, 0o644))
	must(t, os.Chmod(dir, 0o755))
	accepted(t, p)
	// A relative path is checked as the absolute one.
	t.Chdir(dir)
	accepted(t, "nftknock.toml")
}

func TestCheckPrivateRefusesWritableFile(t *testing.T) {
	for _, mode := range []os.FileMode{0o620, 0o602, 0o666, 0o660} {
		p := privateFile(t, t.TempDir(), "nftknock.toml")
		must(t, os.Chmod(p, mode))
		t.Run(mode.String(), func(t *testing.T) {
			refused(t, p, p+": ", "writable by group or others", "chmod go-w "+p)
		})
	}
}

func TestCheckPrivateRefusesWritableDirectory(t *testing.T) {
	for _, mode := range []os.FileMode{0o770, 0o757, 0o777} {
		dir := filepath.Join(t.TempDir(), "etc")
		p := privateFile(t, dir, "nftknock.toml")
		must(t, os.Chmod(dir, mode))
		t.Run(mode.String(), func(t *testing.T) {
			refused(t, p, "directory "+dir+" is writable by group or others", "chmod go-w "+dir)
		})
	}
	// One level further up counts as much as the file's own directory.
	top := filepath.Join(t.TempDir(), "top")
	p := privateFile(t, filepath.Join(top, "etc"), "nftknock.toml")
	must(t, os.Chmod(top, 0o777))
	refused(t, p, "directory "+top+" is writable")
}

// A world-writable directory with the sticky bit, like /tmp, is accepted:
// only an entry's owner can rename or remove it there.
func TestCheckPrivateAcceptsStickyDirectory(t *testing.T) {
	sticky := filepath.Join(t.TempDir(), "tmp")
	must(t, os.Mkdir(sticky, 0o700))
	must(t, os.Chmod(sticky, 0o777|os.ModeSticky))
	p := privateFile(t, filepath.Join(sticky, "etc"), "nftknock.toml")
	accepted(t, p)
	// Directly in it, too.
	q := filepath.Join(sticky, "direct.toml")
	must(t, os.WriteFile(q, []byte(minimal), 0o600))
	accepted(t, q)
	// Without the sticky bit it is refused.
	must(t, os.Chmod(sticky, 0o777))
	refused(t, p, "directory "+sticky+" is writable")
}

func TestCheckPrivateRefusesStrangersFiles(t *testing.T) {
	nstest.Require(t) // chown needs root
	p := privateFile(t, t.TempDir(), "nftknock.toml")
	must(t, os.Chown(p, otherUID, otherUID))
	refused(t, p, p+": owned by uid 4242, not root", "chown root:root "+p, "chmod 600 "+p)

	// A directory a stranger owns is refused even when the file is root's.
	dir := filepath.Join(t.TempDir(), "etc")
	q := privateFile(t, dir, "nftknock.toml")
	must(t, os.Chown(dir, otherUID, otherUID))
	refused(t, q, "directory "+dir+" is owned by uid 4242", "chown root:root "+dir)

	// In a sticky directory, the entry below must still be root's.
	sticky := filepath.Join(t.TempDir(), "tmp")
	must(t, os.Mkdir(sticky, 0o700))
	must(t, os.Chmod(sticky, 0o777|os.ModeSticky))
	sub := filepath.Join(sticky, "planted")
	r := privateFile(t, sub, "nftknock.toml")
	must(t, os.Chown(sub, otherUID, otherUID))
	refused(t, r, "directory "+sub+" is owned by uid 4242")
}

func TestCheckPrivateFollowsLinks(t *testing.T) {
	base := t.TempDir()
	target := privateFile(t, filepath.Join(base, "real"), "nftknock.toml")
	linkDir := filepath.Join(base, "etc")
	must(t, os.Mkdir(linkDir, 0o700))
	link := filepath.Join(linkDir, "nftknock.toml")
	must(t, os.Symlink(target, link))
	accepted(t, link)

	// The target's mode counts, and the error names both.
	must(t, os.Chmod(target, 0o666))
	refused(t, link, link+" (a link to "+target+")", "chmod go-w "+target)
	must(t, os.Chmod(target, 0o600))

	// So does the directory the target is in.
	must(t, os.Chmod(filepath.Dir(target), 0o777))
	refused(t, link, "directory "+filepath.Dir(target)+" is writable")
	must(t, os.Chmod(filepath.Dir(target), 0o700))

	// And the directory the link is in: whoever writes it can re-point the link.
	must(t, os.Chmod(linkDir, 0o777))
	refused(t, link, "directory "+linkDir+" is writable")
	must(t, os.Chmod(linkDir, 0o700))

	// A link to a directory on the way is followed as well.
	dirLink := filepath.Join(base, "dirlink")
	must(t, os.Symlink(filepath.Dir(target), dirLink))
	accepted(t, filepath.Join(dirLink, "nftknock.toml"))
}

func TestCheckPrivateRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	refused(t, dir, "not a regular file")
	if err := CheckPrivate("/dev/null"); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("CheckPrivate(/dev/null) = %v, want not a regular file", err)
	}
	if err := CheckPrivate(filepath.Join(dir, "absent")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("CheckPrivate(absent) = %v, want a not-exist error", err)
	}
}
