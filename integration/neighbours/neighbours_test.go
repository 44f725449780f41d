package neighbours

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nftknock/nftknock/integration/lab"
	"github.com/nftknock/nftknock/integration/nstest"
)

// Each neighbour does what it says in a lab's server namespace, and when
// it is closed leaves nothing behind: no process in the namespace, no
// mount, no work directory, the host's files as they were.

// newLab makes a lab that serves TCP echo on echo in the server namespace
// and checks, when the test ends, that the host's ruleset did not change.
func newLab(t *testing.T, echo []uint16, tools ...string) *lab.Lab {
	t.Helper()
	nstest.Require(t, append(tools, "ip", "nft")...)
	hostRuleset := func() string {
		out, err := exec.Command("nft", "list", "ruleset").CombinedOutput()
		if err != nil {
			t.Fatalf("nft list ruleset on the host: %v: %s", err, out)
		}
		return string(out)
	}
	before := hostRuleset()
	t.Cleanup(func() {
		if hostRuleset() != before {
			t.Error("the host's own ruleset changed")
		}
	})
	l, err := lab.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	for _, port := range echo {
		stop, err := l.Echo(port)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
	}
	return l
}

var (
	server4 = func(port uint16) netip.AddrPort { return netip.AddrPortFrom(lab.ServerV4, port) }
	server6 = func(port uint16) netip.AddrPort { return netip.AddrPortFrom(lab.ServerV6, port) }
)

// echoes connects from the client and checks that what it sends comes back.
func echoes(l *lab.Lab, to netip.AddrPort) error {
	c, err := l.Dial(netip.Addr{}, to, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	msg := fmt.Sprintf("echo %d", time.Now().UnixNano())
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Errorf("%s: no echo: %w", to, err)
	}
	if string(buf) != msg {
		return fmt.Errorf("%s: echoed %q, want %q", to, buf, msg)
	}
	return nil
}

func mustEcho(t *testing.T, l *lab.Lab, to netip.AddrPort) {
	t.Helper()
	if err := echoes(l, to); err != nil {
		t.Error(err)
	}
}

// mustFiltered checks that a connection gets no answer (a drop).
func mustFiltered(t *testing.T, l *lab.Lab, to netip.AddrPort) {
	t.Helper()
	if err := l.Filtered(netip.Addr{}, to, 400*time.Millisecond); err != nil {
		t.Error(err)
	}
}

// mustRejected checks that a connection is refused at once, with an ICMP
// error or a reset (what firewalld's `reject` gives).
func mustRejected(t *testing.T, l *lab.Lab, to netip.AddrPort) {
	t.Helper()
	c, err := l.Dial(netip.Addr{}, to, 2*time.Second)
	if err == nil {
		c.Close()
		t.Errorf("connect %s succeeded, want it rejected", to)
		return
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("connect %s timed out (dropped), want it rejected", to)
	}
}

// treeDigest hashes the names, modes, link targets and contents under
// each path, so that a test can tell the host's files did not change.
func treeDigest(t *testing.T, paths ...string) string {
	t.Helper()
	h := sha256.New()
	for _, root := range paths {
		err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
			if errors.Is(err, fs.ErrNotExist) && p == root {
				fmt.Fprintf(h, "%s absent\n", p)
				return nil
			}
			if err != nil {
				return err
			}
			info, err := e.Info()
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "%s %v %d\n", p, info.Mode(), info.ModTime().UnixNano())
			switch {
			case info.Mode()&fs.ModeSymlink != 0:
				target, err := os.Readlink(p)
				if err != nil {
					return err
				}
				fmt.Fprintf(h, "-> %s\n", target)
			case info.Mode().IsRegular():
				b, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				h.Write(b)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// mustLeaveNothing checks what a closed neighbour must have left: no
// process in the lab's server namespace, no mount of its work directory,
// no work directory.
func mustLeaveNothing(t *testing.T, l *lab.Lab, dir string) {
	t.Helper()
	if pids := processesIn(t, l.Server); len(pids) > 0 {
		t.Errorf("processes still in %s after Close: %v", l.Server, pids)
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), dir) {
		t.Errorf("a mount of %s is still there after Close", dir)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("work directory %s still there after Close (%v)", dir, err)
	}
}

// processesIn lists the processes whose network namespace is netns.
func processesIn(t *testing.T, netns string) []string {
	t.Helper()
	var want syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+netns, &want); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []string
	for _, e := range entries {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat("/proc/"+e.Name()+"/ns/net", &st) != nil {
			continue // gone meanwhile, or a kernel thread
		}
		if st.Dev == want.Dev && st.Ino == want.Ino {
			cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
			pids = append(pids, e.Name()+" "+strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	return pids
}

func TestDockerPublishesRestartsAndCleansUp(t *testing.T) {
	l := newLab(t, nil, DockerTools...)
	before := treeDigest(t, "/etc/docker", "/var/lib/docker")
	start := time.Now()
	d, err := StartDocker(l.Server)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			if err := d.Close(); err != nil {
				t.Error(err)
			}
		}
	})
	t.Logf("dockerd ready in %s", time.Since(start).Round(time.Millisecond))
	if err := d.ImportBusybox("nftknock-busybox"); err != nil {
		t.Fatal(err)
	}
	ip, err := d.RunEcho("echo", "nftknock-busybox", "8443:8080")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("container up at %s, %s after start", ip, time.Since(start).Round(time.Millisecond))
	if _, err := netip.ParseAddr(ip); err != nil {
		t.Errorf("container address %q: %v", ip, err)
	}
	waitEcho(t, l, server4(8443))
	mustEcho(t, l, server6(8443))

	start = time.Now()
	if err := d.RestartContainer("echo"); err != nil {
		t.Fatal(err)
	}
	waitEcho(t, l, server4(8443))
	t.Logf("docker restart: echoing again after %s", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	if err := d.RestartDaemon("echo"); err != nil {
		t.Fatal(err)
	}
	waitEcho(t, l, server4(8443))
	mustEcho(t, l, server6(8443))
	t.Logf("dockerd restart: echoing again after %s", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	dir := d.sb.dir
	if err := d.Close(); err != nil {
		t.Error(err)
	}
	closed = true
	t.Logf("Close took %s", time.Since(start).Round(time.Millisecond))
	mustLeaveNothing(t, l, dir)
	v1, _ := filepath.Glob("/sys/fs/cgroup/*/" + filepath.Base(dir))
	v2, _ := filepath.Glob("/sys/fs/cgroup/" + filepath.Base(dir))
	if entries := append(v1, v2...); len(entries) > 0 {
		t.Errorf("cgroups left after Close: %v", entries)
	}
	if after := treeDigest(t, "/etc/docker", "/var/lib/docker"); after != before {
		t.Error("the host's /etc/docker or /var/lib/docker changed")
	}
}

// waitEcho waits for a published port to echo: docker-proxy and the
// container come up a moment after `docker run` returns.
func waitEcho(t *testing.T, l *lab.Lab, to netip.AddrPort) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := echoes(l, to)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not echo: %v", to, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestFirewalldAddPortReloadAndCleanUp(t *testing.T) {
	l := newLab(t, []uint16{22, 8443}, FirewalldTools...)
	before := treeDigest(t, "/etc/firewalld")
	start := time.Now()
	f, err := StartFirewalld(l.Server)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			if err := f.Close(); err != nil {
				t.Error(err)
			}
		}
	})
	t.Logf("firewalld running in %s", time.Since(start).Round(time.Millisecond))
	if out, err := f.Cmd("--get-default-zone"); err != nil || strings.TrimSpace(out) != "public" {
		t.Errorf("default zone %q, %v; want public", out, err)
	}
	mustEcho(t, l, server4(22)) // ssh is allowed in the public zone
	mustEcho(t, l, server6(22))
	mustRejected(t, l, server4(8443))

	if err := f.AddPort("8443/tcp"); err != nil {
		t.Fatal(err)
	}
	mustEcho(t, l, server4(8443))
	start = time.Now()
	if err := f.Reload(); err != nil {
		t.Fatal(err)
	}
	t.Logf("firewall-cmd --reload took %s", time.Since(start).Round(time.Millisecond))
	mustRejected(t, l, server4(8443)) // a runtime port does not survive a reload
	mustEcho(t, l, server4(22))

	ruleset, err := lab.Run(l.Server, "nft", "list", "tables")
	if err != nil || !strings.Contains(ruleset, "table inet firewalld") {
		t.Errorf("nft list tables: %q, %v; want table inet firewalld", ruleset, err)
	}
	dir := f.sb.dir
	start = time.Now()
	if err := f.Close(); err != nil {
		t.Error(err)
	}
	closed = true
	t.Logf("Close took %s", time.Since(start).Round(time.Millisecond))
	mustLeaveNothing(t, l, dir)
	if ruleset, err := lab.Run(l.Server, "nft", "list", "tables"); err != nil || strings.Contains(ruleset, "firewalld") {
		t.Errorf("after Close, nft list tables: %q, %v; want firewalld's table gone", ruleset, err)
	}
	if treeDigest(t, "/etc/firewalld") != before {
		t.Error("the host's /etc/firewalld changed")
	}
}

func TestUFWAllowReloadAndCleanUp(t *testing.T) {
	l := newLab(t, []uint16{22, 8443}, UFWTools...)
	hostFiles := []string{"/etc/ufw", "/lib/ufw", "/etc/default/ufw"}
	before := treeDigest(t, hostFiles...)
	start := time.Now()
	u, err := StartUFW(l.Server, "22/tcp")
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			if err := u.Close(); err != nil {
				t.Error(err)
			}
		}
	})
	t.Logf("ufw enabled in %s", time.Since(start).Round(time.Millisecond))
	if out, err := u.Cmd("status"); err != nil || !strings.Contains(out, "Status: active") || !strings.Contains(out, "22/tcp") {
		t.Errorf("ufw status: %q, %v", out, err)
	}
	mustEcho(t, l, server4(22))
	mustEcho(t, l, server6(22))
	mustFiltered(t, l, server4(8443)) // ufw's default: deny (drop) incoming
	mustFiltered(t, l, server6(8443))

	start = time.Now()
	if err := u.Reload(); err != nil {
		t.Fatal(err)
	}
	t.Logf("ufw reload took %s", time.Since(start).Round(time.Millisecond))
	mustEcho(t, l, server4(22))
	mustFiltered(t, l, server4(8443))

	dir := u.sb.dir
	if err := u.Close(); err != nil {
		t.Error(err)
	}
	closed = true
	mustLeaveNothing(t, l, dir)
	if treeDigest(t, hostFiles...) != before {
		t.Error("the host's ufw files changed")
	}
}

func TestAdminRulesetDropsWhatItDoesNotAllow(t *testing.T) {
	l := newLab(t, []uint16{22, 80}, "nft")
	if err := LoadRuleset(l.Server, AdminRuleset); err != nil {
		t.Fatal(err)
	}
	mustEcho(t, l, server4(80))
	mustEcho(t, l, server6(80))
	mustFiltered(t, l, server4(22))
	mustFiltered(t, l, server6(22))
}
