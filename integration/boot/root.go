// Package boot boots a Debian root under systemd-nspawn for tests that
// need the service manager itself: a real PID 1, the journal, Debian's
// own sshd. The root comes from debootstrap, once per machine (cached, see
// CachedRoot); each test boots an overlay of it, so the cache stays clean.
package boot

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Suite is the Debian release the tests boot: the one CI runs on.
const Suite = "bookworm"

// CacheDir holds the debootstrapped roots, one directory per key (see
// CachedRoot), between runs on one machine.
const CacheDir = "/var/cache/nftknock-test"

// Packages are what the booted root holds beyond debootstrap's minbase:
// the service manager, Debian's sshd, the nftables the .deb depends on,
// and the tools an administrator uses on the other side.
var Packages = []string{"systemd", "systemd-sysv", "dbus", "openssh-server", "nftables", "iproute2"}

// rootRecipe is what the cache key covers besides the package list: bump
// it when the way a root is made changes, so that old caches are not used.
const rootRecipe = "debootstrap --variant=minbase, apt archives emptied; v1"

// CachedRoot returns a debootstrapped root of Suite with packages, building
// it when the cache has none. The cache key is a hash of the suite, the
// sorted package list and rootRecipe: another list gets another root. A
// root is built in a scratch directory and renamed into place only once
// complete, under a lock, so concurrent runs wait for one build instead of
// racing, and a build that died half-way is never used. The returned tree
// must be treated as read-only: boot an overlay of it (Machine does).
func CachedRoot(packages []string, mirror string, logf func(format string, args ...any)) (string, error) {
	pkgs := slices.Sorted(slices.Values(packages))
	sum := sha256.Sum256([]byte(Suite + "\n" + strings.Join(pkgs, ",") + "\n" + rootRecipe))
	key := Suite + "-" + hex.EncodeToString(sum[:6])
	root := filepath.Join(CacheDir, key)
	if err := os.MkdirAll(CacheDir, 0o755); err != nil {
		return "", fmt.Errorf("root cache: %w", err)
	}
	lock, err := os.OpenFile(root+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return "", fmt.Errorf("root cache: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(filepath.Join(root, "usr/lib/systemd/systemd")); err == nil {
		logf("booting the cached root %s", root)
		return root, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("root cache: %w", err)
	}

	// Scratch directories of this key are builds that died: the lock says
	// none is running. debootstrap mounts /proc and /sys inside the
	// target; a killed one may have left them there.
	stale, _ := filepath.Glob(root + ".build-*")
	for _, d := range append(stale, root) {
		if err := removeTree(d); err != nil {
			return "", err
		}
	}
	build, err := os.MkdirTemp(CacheDir, key+".build-")
	if err != nil {
		return "", fmt.Errorf("root cache: %w", err)
	}
	start := time.Now()
	logf("debootstrap %s from %s into %s (once per machine; later runs use the cache)", Suite, mirror, build)
	cmd := exec.Command("debootstrap", "--variant=minbase", "--include="+strings.Join(pkgs, ","), Suite, build, mirror)
	if out, err := cmd.CombinedOutput(); err != nil {
		removeTree(build)
		return "", fmt.Errorf("debootstrap %s %s: %v\n%s", Suite, mirror, err, tail(out, 40))
	}
	// The downloaded packages are installed: they only take room.
	debs, _ := filepath.Glob(filepath.Join(build, "var/cache/apt/archives/*.deb"))
	for _, d := range debs {
		os.Remove(d)
	}
	if err := os.Rename(build, root); err != nil {
		removeTree(build)
		return "", fmt.Errorf("root cache: %w", err)
	}
	logf("debootstrap took %s", time.Since(start).Round(time.Second))
	return root, nil
}

// HostMirror is the Debian mirror this machine's apt uses for Suite (the
// one mirror a test machine may reach), or deb.debian.org if none is
// configured. $NFTKNOCK_TEST_MIRROR overrides it.
func HostMirror() string {
	if m := os.Getenv("NFTKNOCK_TEST_MIRROR"); m != "" {
		return m
	}
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	for _, f := range files {
		if m := mirrorIn822(f); m != "" {
			return m
		}
	}
	files, _ = filepath.Glob("/etc/apt/sources.list.d/*.list")
	for _, f := range append([]string{"/etc/apt/sources.list"}, files...) {
		if m := mirrorInList(f); m != "" {
			return m
		}
	}
	return "http://deb.debian.org/debian"
}

// mirrorIn822 reads a deb822 .sources file: the first URI of a stanza of
// Types deb whose Suites hold Suite and whose Components hold main.
func mirrorIn822(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	for _, stanza := range strings.Split(string(data), "\n\n") {
		fields := map[string][]string{}
		for _, line := range strings.Split(stanza, "\n") {
			k, v, ok := strings.Cut(line, ":")
			if ok && !strings.HasPrefix(line, "#") && !strings.HasPrefix(line, " ") {
				fields[strings.ToLower(k)] = strings.Fields(v)
			}
		}
		enabled := len(fields["enabled"]) == 0 || fields["enabled"][0] == "yes"
		if enabled && slices.Contains(fields["types"], "deb") && slices.Contains(fields["suites"], Suite) &&
			slices.Contains(fields["components"], "main") && len(fields["uris"]) > 0 {
			return fields["uris"][0]
		}
	}
	return ""
}

// mirrorInList reads a one-line-style sources.list: "deb [opts] URI Suite main".
func mirrorInList(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		w := strings.Fields(sc.Text())
		if len(w) < 4 || w[0] != "deb" {
			continue
		}
		w = w[1:]
		if strings.HasPrefix(w[0], "[") {
			for len(w) > 0 && !strings.HasSuffix(w[0], "]") {
				w = w[1:]
			}
			if len(w) > 0 {
				w = w[1:]
			}
		}
		if len(w) >= 3 && w[1] == Suite && slices.Contains(w[2:], "main") {
			return w[0]
		}
	}
	return ""
}

// removeTree deletes dir after unmounting whatever is mounted below it:
// a RemoveAll that walked into a mounted /proc or /sys would try to delete
// the host's.
func removeTree(dir string) error {
	if err := unmountUnder(dir); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// unmountUnder unmounts every mount at or below dir, deepest first.
func unmountUnder(dir string) error {
	mounts, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		if err := syscall.Unmount(mounts[i], syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			return fmt.Errorf("unmount %s: %w", mounts[i], err)
		}
	}
	return nil
}

// mountsUnder lists the mount points at or below dir in /proc/self/mounts
// order (parents before children).
func mountsUnder(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		// The kernel escapes blanks in mount points as octal.
		mp := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(f[1])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out, nil
}

// tail returns the last n lines of out.
func tail(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
