package integration

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/nftknock/nftknock/integration/nstest"
)

// repoRoot is the top of the source tree; the tests run in integration/.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// runMake runs make in the source tree with args and returns its output.
// The make that runs `make test` must not leak its flags into this one.
func runMake(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("make", append([]string{"--no-print-directory", "-C", repoRoot(t)}, args...)...)
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "MAKEFLAGS" && k != "MFLAGS" && k != "MAKELEVEL" && k != "VERSION" {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// gitVersion is what the Makefile stamps: `git describe`, or "dev".
func gitVersion(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("git", "describe", "--tags", "--always", "--dirty")
	cmd.Dir = repoRoot(t)
	out, err := cmd.Output()
	if err != nil {
		return "dev"
	}
	return strings.TrimSpace(string(out))
}

// files lists the regular files under root with their modes, as
// "-rw------- /etc/nftknock/nftknock.toml".
func files(t *testing.T, root string) []string {
	t.Helper()
	var got []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		got = append(got, fi.Mode().String()+" "+strings.TrimPrefix(p, root))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	return got
}

func sameList(t *testing.T, what string, got, want []string) {
	t.Helper()
	want = slices.Sorted(slices.Values(want))
	if !slices.Equal(got, want) {
		t.Errorf("%s:\n got  %s\n want %s", what, strings.Join(got, "\n      "), strings.Join(want, "\n      "))
	}
}

// TestMakeInstall: `make install DESTDIR=…` puts the binaries, the unit,
// the man pages and the config where they belong with the right modes,
// never overwrites a config that exists, and `make uninstall` takes away
// all of it but the config. PREFIX moves everything but /etc and rewrites
// the unit's paths.
func TestMakeInstall(t *testing.T) {
	nstest.Require(t, "make", "install")
	defaultTOML, err := os.ReadFile("../config/default.toml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		prefix, sbin, bin, unit, man string
	}{
		{"", "/usr/sbin", "/usr/bin", "/lib/systemd/system", "/usr/share/man"},
		{"/usr/local", "/usr/local/sbin", "/usr/local/bin", "/usr/local/lib/systemd/system", "/usr/local/share/man"},
	} {
		t.Run("PREFIX="+tc.prefix, func(t *testing.T) {
			dest := t.TempDir()
			args := []string{"DESTDIR=" + dest}
			if tc.prefix != "" {
				args = append(args, "PREFIX="+tc.prefix)
			}
			runMake(t, append([]string{"install"}, args...)...)
			config := "/etc/nftknock/nftknock.toml"
			want := []string{
				"-rwxr-xr-x " + tc.sbin + "/nftknockd",
				"-rwxr-xr-x " + tc.bin + "/nftknock",
				"-rw-r--r-- " + tc.unit + "/nftknockd.service",
				"-rw-r--r-- " + tc.man + "/man8/nftknockd.8",
				"-rw-r--r-- " + tc.man + "/man1/nftknock.1",
				"-rw-r--r-- " + tc.man + "/man5/nftknock.toml.5",
				"-rw------- " + config,
			}
			sameList(t, "installed files", files(t, dest), want)
			if got, _ := os.ReadFile(dest + config); string(got) != string(defaultTOML) {
				t.Errorf("installed config is not config/default.toml:\n%s", got)
			}
			if fi, err := os.Stat(dest + "/etc/nftknock"); err != nil || fi.Mode().Perm()&0o022 != 0 {
				t.Errorf("/etc/nftknock: %v, %v: want a directory only root can write", fi.Mode(), err)
			}

			// The version is stamped, in both.
			for _, bin := range []string{tc.sbin + "/nftknockd", tc.bin + "/nftknock"} {
				out, err := exec.Command(dest+bin, "-version").CombinedOutput()
				if want := filepath.Base(bin) + " " + gitVersion(t) + "\n"; err != nil || string(out) != want {
					t.Errorf("%s -version = %q, %v; want %q", bin, out, err, want)
				}
			}
			// The unit runs the binary where it was installed.
			unit, err := os.ReadFile(dest + tc.unit + "/nftknockd.service")
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range []string{
				"ExecStartPre=" + tc.sbin + "/nftknockd -check -config /etc/nftknock/nftknock.toml\n",
				"ExecStart=" + tc.sbin + "/nftknockd -config /etc/nftknock/nftknock.toml\n",
			} {
				if !strings.Contains(string(unit), line) {
					t.Errorf("installed unit lacks %q", line)
				}
			}

			// A config that exists is kept, edits and mode alike.
			mine := "# my own sequence\n" + string(defaultTOML)
			noErr(t, os.WriteFile(dest+config, []byte(mine), 0o600))
			noErr(t, os.Chmod(dest+config, 0o640))
			out2 := runMake(t, append([]string{"install"}, args...)...)
			if !strings.Contains(out2, "keeping the existing "+dest+config) {
				t.Errorf("second install does not say it keeps the config:\n%s", out2)
			}
			if got, _ := os.ReadFile(dest + config); string(got) != mine {
				t.Errorf("second install overwrote the config:\n%s", got)
			}
			want[len(want)-1] = "-rw-r----- " + config
			sameList(t, "files after a second install", files(t, dest), want)

			// Uninstall leaves the config alone.
			runMake(t, append([]string{"uninstall"}, args...)...)
			sameList(t, "files after uninstall", files(t, dest), []string{"-rw-r----- " + config})
			if got, _ := os.ReadFile(dest + config); string(got) != mine {
				t.Errorf("uninstall changed the config:\n%s", got)
			}
		})
	}
}

// debVersion is the Makefile's mapping of `git describe` to a Debian
// version.
func debVersion(v string) string {
	switch {
	case regexp.MustCompile(`^v[0-9]`).MatchString(v):
		v = v[1:]
	case regexp.MustCompile(`^[0-9].*\.`).MatchString(v):
	case v == "dev":
		v = "0~dev"
	default:
		v = "0~git" + v
	}
	v = regexp.MustCompile(`-([0-9]*)-g`).ReplaceAllString(v, "+$1.g")
	return regexp.MustCompile(`[^A-Za-z0-9.+~]`).ReplaceAllString(v, ".")
}

// TestMakeDeb: `make deb` builds a package with exactly the expected
// files, modes and owners, the config as a conffile, and maintainer
// scripts that neither enable nor start the service. The package is then
// installed, removed and purged for real with dpkg --root, its scripts
// running in a scratch network namespace: removal deletes the daemon's
// table (else nothing could open the ports it guards) and keeps the
// config; purge deletes the config.
func TestMakeDeb(t *testing.T) {
	nstest.Require(t, "make", "dpkg-deb", "dpkg", "nft")
	out := runMake(t, "deb")
	m := regexp.MustCompile(`building package 'nftknock' in '([^']+\.deb)'`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("make deb did not build a package:\n%s", out)
	}
	deb := filepath.Join(repoRoot(t), m[1])
	arch, err := exec.Command("dpkg", "--print-architecture").Output()
	if err != nil {
		t.Fatal(err)
	}
	version := debVersion(gitVersion(t))
	if want := "bin/nftknock_" + version + "_" + strings.TrimSpace(string(arch)) + ".deb"; m[1] != want {
		t.Errorf("package %s, want %s", m[1], want)
	}

	listing, err := exec.Command("dpkg-deb", "-c", deb).Output()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(string(listing)), "\n") {
		f := strings.Fields(line)
		if len(f) != 6 {
			t.Fatalf("dpkg-deb -c line %q", line)
		}
		got = append(got, f[0]+" "+f[1]+" "+f[5])
	}
	want := []string{
		"drwxr-xr-x root/root ./",
		"drwxr-xr-x root/root ./etc/",
		"drwxr-xr-x root/root ./etc/nftknock/",
		"-rw------- root/root ./etc/nftknock/nftknock.toml",
		"drwxr-xr-x root/root ./lib/",
		"drwxr-xr-x root/root ./lib/systemd/",
		"drwxr-xr-x root/root ./lib/systemd/system/",
		"-rw-r--r-- root/root ./lib/systemd/system/nftknockd.service",
		"drwxr-xr-x root/root ./usr/",
		"drwxr-xr-x root/root ./usr/bin/",
		"-rwxr-xr-x root/root ./usr/bin/nftknock",
		"drwxr-xr-x root/root ./usr/sbin/",
		"-rwxr-xr-x root/root ./usr/sbin/nftknockd",
		"drwxr-xr-x root/root ./usr/share/",
		"drwxr-xr-x root/root ./usr/share/man/",
		"drwxr-xr-x root/root ./usr/share/man/man1/",
		"-rw-r--r-- root/root ./usr/share/man/man1/nftknock.1",
		"drwxr-xr-x root/root ./usr/share/man/man5/",
		"-rw-r--r-- root/root ./usr/share/man/man5/nftknock.toml.5",
		"drwxr-xr-x root/root ./usr/share/man/man8/",
		"-rw-r--r-- root/root ./usr/share/man/man8/nftknockd.8",
	}
	if !slices.Equal(got, want) {
		t.Errorf("dpkg-deb -c:\n got  %s\n want %s", strings.Join(got, "\n      "), strings.Join(want, "\n      "))
	}

	for field, want := range map[string]string{
		"Package":      "nftknock",
		"Version":      version,
		"Architecture": strings.TrimSpace(string(arch)),
		"Depends":      "nftables, procps",
	} {
		if out, err := exec.Command("dpkg-deb", "-f", deb, field).Output(); err != nil || strings.TrimSpace(string(out)) != want {
			t.Errorf("control field %s = %q (%v), want %q", field, out, err, want)
		}
	}
	control := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "-e", deb, control).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -e: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(filepath.Join(control, "conffiles")); string(got) != "/etc/nftknock/nftknock.toml\n" {
		t.Errorf("conffiles = %q", got)
	}
	for _, script := range []string{"postinst", "prerm", "postrm"} {
		text, err := os.ReadFile(filepath.Join(control, script))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(text), "\n") {
			words := strings.Fields(line)
			if len(words) == 0 || strings.HasPrefix(words[0], "#") {
				continue
			}
			if slices.Contains(words, "deb-systemd-invoke") || slices.Contains(words, "deb-systemd-helper") ||
				slices.Contains(words, "systemctl") && slices.ContainsFunc(words, func(w string) bool {
					return w == "enable" || w == "start" || w == "restart" || w == "reenable" || w == "--now"
				}) {
				t.Errorf("%s enables or starts the service: %q", script, line)
			}
		}
	}

	// Install, remove and purge, for real, into a scratch root; the
	// scripts run in a scratch namespace.
	ns := nstest.New(t)
	root := t.TempDir()
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates"} {
		noErr(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	noErr(t, os.WriteFile(filepath.Join(root, "var/lib/dpkg/status"), nil, 0o644))
	dpkg := func(args ...string) string {
		t.Helper()
		argv := append([]string{"dpkg", "--root=" + root, "--force-script-chrootless", "--force-depends", "--log=/dev/null"}, args...)
		out, err := ns.TryRun("", argv...)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return out
	}
	out = dpkg("-i", deb)
	if !strings.Contains(out, "installed but not enabled") {
		t.Errorf("dpkg -i does not say the service is not enabled:\n%s", out)
	}
	var installed []string
	for _, w := range want {
		if w[0] == '-' {
			installed = append(installed, w[:10]+" "+strings.TrimPrefix(strings.Fields(w)[2], "."))
		}
	}
	sameList(t, "files dpkg -i installed (nothing enabled)", withoutDpkg(files(t, root)), installed)
	status := ns.Run(t, "", "dpkg-query", "--admindir="+root+"/var/lib/dpkg", "-s", "nftknock")
	if !regexp.MustCompile(`(?m)^Conffiles:\n /etc/nftknock/nftknock.toml [0-9a-f]{32}$`).MatchString(status) {
		t.Errorf("the config is not a registered conffile:\n%s", status)
	}
	config := filepath.Join(root, "etc/nftknock/nftknock.toml")
	if out, err := ns.TryRun("", filepath.Join(root, "usr/sbin/nftknockd"), "-check", "-config", config); err != nil {
		t.Errorf("the installed daemon does not accept the installed config: %v\n%s", err, out)
	}

	// A table the daemon left behind, as a stopped daemon does.
	ns.Run(t, "", "nft", "add", "table", "inet", "nftknock")
	dpkg("-r", "nftknock")
	if _, err := ns.TryRun("", "nft", "list", "table", "inet", "nftknock"); err == nil {
		t.Error("dpkg -r left the daemon's table in place: nothing could open its ports now")
	}
	sameList(t, "files after dpkg -r", withoutDpkg(files(t, root)), []string{"-rw------- /etc/nftknock/nftknock.toml"})

	dpkg("-P", "nftknock")
	sameList(t, "files after dpkg -P", withoutDpkg(files(t, root)), nil)
}

func withoutDpkg(files []string) []string {
	var out []string
	for _, f := range files {
		if !strings.Contains(f, " /var/lib/dpkg/") {
			out = append(out, f)
		}
	}
	return out
}
