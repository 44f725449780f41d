package boot

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nftknock/nftknock/integration/lab"
)

// Tools are the host commands a Machine needs.
var Tools = []string{"debootstrap", "systemd-nspawn", "nsenter", "ip"}

// The two ends of the container's veth. The host end is moved into a
// network namespace of the test's own, so these addresses exist nowhere
// but on that one link; they are documentation ranges all the same.
var (
	HostV4  = netip.MustParseAddr("198.51.100.1")
	GuestV4 = netip.MustParseAddr("198.51.100.2")
	HostV6  = netip.MustParseAddr("2001:db8:5d::1")
	GuestV6 = netip.MustParseAddr("2001:db8:5d::2")
)

// guestNetwork configures the container's end with systemd-networkd, which
// runs after network-pre.target, as on a real server: the address exists
// only once the units ordered before the network are up.
var guestNetwork = fmt.Sprintf(`[Match]
Name=host0

[Network]
LinkLocalAddressing=ipv6
IPv6AcceptRA=no

[Address]
Address=%s/24

[Address]
Address=%s/64
DuplicateAddressDetection=none
`, GuestV4, GuestV6)

// Machine is a container booted with systemd-nspawn from an overlay of a
// cached root: systemd as its PID 1, its own network namespace, and a veth
// whose host end lives in NetNS.
type Machine struct {
	Name  string // the machine name; its veth's host end is Link
	Link  string // "ve-" + Name
	NetNS string // the test's side of the veth
	Dir   string // the root it boots (the overlay's merged view)

	logf    func(format string, args ...any)
	console string // every boot's console output, appended

	nspawn *exec.Cmd
	exited chan struct{} // closed when nspawn has exited
	leader int           // the container's PID 1, as the host sees it
}

// New prepares a machine over the cached root: an overlay whose writes go
// to a scratch directory, a network namespace for the host end of its
// veth, and systemd-networkd enabled to configure the other end. Nothing
// runs yet (see Boot). Everything is undone when tb ends, even on failure:
// the container powered off, the veth and the namespace deleted, the
// overlay unmounted.
func New(tb testing.TB, root string) *Machine {
	tb.Helper()
	// Interface names have at most 15 bytes: "ve-" and 12 more.
	name := fmt.Sprintf("sdboot%06d", os.Getpid()%1000000)
	scratch := tb.TempDir()
	m := &Machine{
		Name: name, Link: "ve-" + name, NetNS: name,
		Dir:     filepath.Join(scratch, "root"),
		logf:    tb.Logf,
		console: filepath.Join(scratch, "console.log"),
	}
	upper, work := filepath.Join(scratch, "upper"), filepath.Join(scratch, "work")
	for _, d := range []string{m.Dir, upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", root, upper, work)
	if err := syscall.Mount("overlay", m.Dir, "overlay", 0, opts); err != nil {
		tb.Fatalf("mount an overlay of %s on %s: %v", root, m.Dir, err)
	}
	tb.Cleanup(func() {
		if err := syscall.Unmount(m.Dir, 0); err != nil {
			tb.Errorf("unmount %s: %v (left mounted)", m.Dir, err)
			if mounts, _ := mountsUnder(m.Dir); len(mounts) > 0 {
				tb.Errorf("still mounted: %v", mounts)
			}
		}
	})

	if out, err := exec.Command("ip", "netns", "add", m.NetNS).CombinedOutput(); err != nil {
		tb.Fatalf("ip netns add %s: %v: %s", m.NetNS, err, out)
	}
	tb.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", m.NetNS).CombinedOutput(); err != nil {
			tb.Errorf("ip netns del %s: %v: %s", m.NetNS, err, out)
		}
	})
	if out, err := exec.Command("ip", "-n", m.NetNS, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		tb.Fatalf("lo up in %s: %v: %s", m.NetNS, err, out)
	}
	// Registered last, so it runs first: the container goes before the
	// namespace and the overlay it stands on.
	tb.Cleanup(func() { m.powerOff(tb) })

	// debootstrap copied the host's name.
	m.WriteFile(tb, "/etc/hostname", name+"\n", 0o644)
	m.WriteFile(tb, "/etc/systemd/network/10-sdboot-host0.network", guestNetwork, 0o644)
	for link, target := range map[string]string{
		"/etc/systemd/system/multi-user.target.wants/systemd-networkd.service": "/lib/systemd/system/systemd-networkd.service",
		"/etc/systemd/system/sockets.target.wants/systemd-networkd.socket":     "/lib/systemd/system/systemd-networkd.socket",
	} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(m.Dir, link)), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(m.Dir, link)); err != nil {
			tb.Fatal(err)
		}
	}
	return m
}

// WriteFile writes a file into the machine's root, creating its directory.
func (m *Machine) WriteFile(tb testing.TB, path, data string, mode os.FileMode) {
	tb.Helper()
	p := filepath.Join(m.Dir, path)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		tb.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		tb.Fatal(err)
	}
}

// ReadFile reads a file of the machine's root.
func (m *Machine) ReadFile(tb testing.TB, path string) string {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join(m.Dir, path))
	if err != nil {
		tb.Fatal(err)
	}
	return string(data)
}

// Boot starts the container and returns once its systemd reports the
// system running. onLink, if not nil, is called as soon as the veth's host
// end is up with its addresses, before the container's systemd has
// started anything: a test can watch the boot from there.
func (m *Machine) Boot(tb testing.TB, onLink func()) {
	tb.Helper()
	start := time.Now()
	console, err := os.OpenFile(m.console, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	defer console.Close()
	// --keep-unit --register=no: no host systemd to make a scope or
	// register a machine with (the host's PID 1 need not be systemd).
	m.nspawn = exec.Command("systemd-nspawn", "-b", "-D", m.Dir, "-M", m.Name,
		"--network-veth", "--keep-unit", "--register=no", "--console=read-only")
	m.nspawn.Stdout, m.nspawn.Stderr = console, console
	if err := m.nspawn.Start(); err != nil {
		tb.Fatalf("systemd-nspawn: %v", err)
	}
	m.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		cmd.Wait()
		close(exited)
	}(m.nspawn, m.exited)
	m.leader = 0

	if err := m.takeLink(30 * time.Second); err != nil {
		tb.Fatalf("%v\nconsole:\n%s", err, m.Console())
	}
	if onLink != nil {
		onLink()
	}
	if m.leader, err = m.findLeader(30 * time.Second); err != nil {
		tb.Fatalf("%v\nconsole:\n%s", err, m.Console())
	}
	// Until the container's systemd has set up /run/systemd/system and
	// its socket, systemctl says "offline" or cannot connect, at once:
	// ask again until it waits for the boot to end and says how it ended.
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var state string
	for ctx.Err() == nil {
		state, err = m.execCtx(ctx, "systemctl", "is-system-running", "--wait")
		if state = strings.TrimSpace(state); state == "running" || state == "degraded" || state == "maintenance" || state == "stopping" {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if state != "running" {
		failed, _ := m.Exec("systemctl", "--failed", "--no-legend")
		tb.Fatalf("the container's systemd is %q (%v), not running; failed units:\n%s\nconsole:\n%s", state, err, failed, m.Console())
	}
	m.logf("machine %s booted in %s", m.Name, time.Since(start).Round(time.Millisecond))
}

// takeLink waits for the veth's host end to appear in the host's own
// namespace, moves it into NetNS and gives it its addresses.
func (m *Machine) takeLink(within time.Duration) error {
	deadline := time.Now().Add(within)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-m.exited:
			return fmt.Errorf("systemd-nspawn exited (%v) before its veth %s appeared", m.nspawn.ProcessState, m.Link)
		default:
		}
		// nspawn may still be setting the link up when it appears: retry.
		out, err := exec.Command("ip", "link", "set", "dev", m.Link, "netns", m.NetNS).CombinedOutput()
		if err == nil {
			for _, argv := range [][]string{
				{"link", "set", "dev", m.Link, "up"},
				{"addr", "add", HostV4.String() + "/24", "dev", m.Link},
				{"addr", "add", HostV6.String() + "/64", "dev", m.Link, "nodad"},
			} {
				if out, err := exec.Command("ip", append([]string{"-n", m.NetNS}, argv...)...).CombinedOutput(); err != nil {
					return fmt.Errorf("ip -n %s %s: %v: %s", m.NetNS, strings.Join(argv, " "), err, out)
				}
			}
			return nil
		}
		last = fmt.Errorf("%v: %s", err, out)
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("the veth %s did not appear within %s: %v", m.Link, within, last)
}

// findLeader returns the container's PID 1 as the host sees it: the child
// of systemd-nspawn that is PID 1 of its own PID namespace.
func (m *Machine) findLeader(within time.Duration) (int, error) {
	deadline := time.Now().Add(within)
	parent := strconv.Itoa(m.nspawn.Process.Pid)
	for time.Now().Before(deadline) {
		procs, _ := filepath.Glob("/proc/[0-9]*/status")
		for _, p := range procs {
			data, err := os.ReadFile(p)
			if err != nil {
				continue
			}
			var ppid, nspid []string
			for _, line := range strings.Split(string(data), "\n") {
				k, v, _ := strings.Cut(line, ":")
				switch k {
				case "PPid":
					ppid = strings.Fields(v)
				case "NSpid":
					nspid = strings.Fields(v)
				}
			}
			if len(ppid) == 1 && ppid[0] == parent && len(nspid) > 1 && nspid[len(nspid)-1] == "1" {
				return strconv.Atoi(nspid[0])
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return 0, fmt.Errorf("no PID 1 of machine %s under systemd-nspawn %s within %s", m.Name, parent, within)
}

// Exec runs argv inside the container, in all its namespaces (nsenter:
// machinectl and systemd-run -M need machined, which the host lacks), and
// returns its combined output.
func (m *Machine) Exec(argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return m.execCtx(ctx, argv...)
}

func (m *Machine) execCtx(ctx context.Context, argv ...string) (string, error) {
	if m.leader == 0 {
		return "", errors.New("the machine is not running")
	}
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(m.leader), "-a"}, argv...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "TERM=dumb"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s: %w: %s", m.Name, strings.Join(argv, " "), err, out)
	}
	return string(out), nil
}

// WaitExit waits for systemd-nspawn to exit and returns its exit status:
// 0 after a power-off, 133 after a reboot inside.
func (m *Machine) WaitExit(within time.Duration) (int, error) {
	select {
	case <-m.exited:
		m.leader = 0
		return m.nspawn.ProcessState.ExitCode(), nil
	case <-time.After(within):
		return -1, fmt.Errorf("machine %s still running after %s", m.Name, within)
	}
}

// Dial connects over TCP from the test's side of the veth.
func (m *Machine) Dial(to netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := lab.InNS(m.NetNS, func() error {
		var err error
		c, err = (&net.Dialer{Timeout: timeout}).Dial("tcp", to.String())
		return err
	})
	return c, err
}

// Console returns the tail of what the container's console printed.
func (m *Machine) Console() string {
	data, _ := os.ReadFile(m.console)
	return tail(data, 60)
}

// powerOff stops a running container: SIGTERM makes systemd-nspawn ask
// the container's systemd to halt. If it has not stopped within a minute,
// its PID 1 is killed, which ends every process of its PID namespace.
// It then checks that the veth went with the container.
func (m *Machine) powerOff(tb testing.TB) {
	if m.nspawn != nil && m.exited != nil {
		select {
		case <-m.exited:
		default:
			// nspawn passes SIGTERM on to the container's systemd as a
			// halt request, which is lost if systemd has not yet set up
			// its handlers (early in a boot): ask again until it goes.
			var err error
			for range 12 {
				m.nspawn.Process.Signal(syscall.SIGTERM)
				if _, err = m.WaitExit(5 * time.Second); err == nil {
					break
				}
			}
			if err != nil {
				tb.Errorf("%v: killing it", err)
				if m.leader > 0 {
					syscall.Kill(m.leader, syscall.SIGKILL)
				}
				m.nspawn.Process.Kill()
				<-m.exited
			}
		}
		if tb.Failed() {
			tb.Logf("console of %s:\n%s", m.Name, m.Console())
		}
	}
	// The kernel deletes the veth with the container's namespace, a
	// moment after its last process is gone.
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := exec.Command("ip", "-n", m.NetNS, "link", "show", m.Link).CombinedOutput()
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			tb.Errorf("the veth %s outlived the container:\n%s", m.Link, out)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := exec.Command("ip", "link", "show", m.Link).CombinedOutput(); err == nil {
		tb.Errorf("the veth %s is left in the host's namespace:\n%s", m.Link, out)
	}
	// nspawn's own scratch directory for the machine, which it does not
	// always manage to remove when /run is not a tmpfs, and its lock on
	// the root directory, left behind when it had to be killed.
	os.Remove(filepath.Join("/run/systemd/nspawn/propagate", m.Name))
	var st syscall.Stat_t
	if syscall.Stat(m.Dir, &st) == nil {
		os.Remove(fmt.Sprintf("/run/systemd/nspawn/locks/inode-%d:%d", st.Dev, st.Ino))
	}
}
