// Package integration runs nftknockd end to end: real nftables, real
// NFLOG, the stock `knock` client, in throwaway network namespaces.
// The tests need root. When CI=true, a missing privilege or tool fails
// them; elsewhere it skips them.
package integration

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nftknock/nftknock/integration/lab"
	"github.com/nftknock/nftknock/integration/nstest"
)

// daemonBin is nftknockd built for these tests: with -race, unless a
// benchmark wants the figures of a normal build.
var (
	daemonBin  string
	raceDaemon = flag.Bool("race-daemon", true, "build nftknockd with -race (make bench turns it off)")
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	flag.Parse()
	dir, err := os.MkdirTemp("", "nftknock-integration")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	daemonBin = filepath.Join(dir, "nftknockd")
	args := []string{"build", "-o", daemonBin}
	if *raceDaemon {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../cmd/nftknockd")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build nftknockd:", err)
		return 1
	}
	return m.Run()
}

// binDir holds the binaries the tests build.
var binDir string

var plainBuild = sync.OnceValues(func() (string, error) {
	bin := filepath.Join(binDir, "nftknockd-plain")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/nftknockd").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build nftknockd without -race: %v: %s", err, out)
	}
	return bin, nil
})

// plainDaemonBin is nftknockd built without -race, for tests of scale: a
// million grants under the race detector take minutes of CPU and
// gigabytes, and measure the detector.
func plainDaemonBin(t testing.TB) string {
	t.Helper()
	bin, err := plainBuild()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// newLab makes a lab that is deleted when the test ends, even on failure,
// with a TCP echo server on port 22 of the server.
func newLab(t testing.TB) *lab.Lab {
	t.Helper()
	l := newBareLab(t)
	echo(t, l, 22)
	return l
}

// newBareLab is newLab with nothing listening on the server.
func newBareLab(t testing.TB) *lab.Lab {
	t.Helper()
	nstest.Require(t, lab.Tools...)
	l, err := lab.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	return l
}

// echo serves TCP echo on port of the lab's server until the test ends.
func echo(t testing.TB, l *lab.Lab, port uint16) {
	t.Helper()
	echoIn(t, l.Server, port)
}

// echoIn serves TCP echo on port in network namespace ns until the test
// ends.
func echoIn(t testing.TB, ns string, port uint16) {
	t.Helper()
	stop, err := lab.EchoIn(ns, port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
}

// writeConfig writes a config file for the test and returns its path.
func writeConfig(t testing.TB, path, toml string) string {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "nftknock.toml")
	}
	if err := os.WriteFile(path, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// sshDoor is the default door with timeouts the tests can wait for.
func sshDoor(seqTimeout, openFor string) string {
	return fmt.Sprintf(`
[[door]]
name = "ssh"
sequence = ["7000:tcp", "8000:udp", "9000:tcp"]
seq_timeout = %q
open = ["22:tcp"]
open_for = %q
`, seqTimeout, openFor)
}

// startDaemon starts nftknockd in the lab's server namespace. When the
// test ends it is stopped (SIGTERM must make it exit 0) and its log is
// shown if the test failed.
func startDaemon(t testing.TB, l *lab.Lab, config string) *lab.Daemon {
	t.Helper()
	return startDaemonBin(t, l, daemonBin, config)
}

// startDaemonBin is startDaemon of the binary bin.
func startDaemonBin(t testing.TB, l *lab.Lab, bin, config string) *lab.Daemon {
	t.Helper()
	d, err := l.StartDaemon(bin, config)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("nftknockd did not exit 0 on SIGTERM: %v", err)
		}
		if t.Failed() {
			t.Logf("nftknockd log:\n%s", d.Log())
		}
	})
	return d
}

// startDaemonToKill is startDaemonBin for a test that stops or kills the
// daemon itself: the cleanup kills it if it still runs, and logs what it
// said if the test failed.
func startDaemonToKill(t testing.TB, l *lab.Lab, bin, config string) *lab.Daemon {
	t.Helper()
	d, err := l.StartDaemon(bin, config)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Kill()
		if t.Failed() {
			t.Logf("nftknockd log:\n%s", d.Log())
		}
	})
	return d
}

var (
	ssh4 = netip.AddrPortFrom(lab.ServerV4, 22)
	ssh6 = netip.AddrPortFrom(lab.ServerV6, 22)
)

const (
	// filteredWait is how long a connection attempt must go unanswered
	// to count as filtered.
	filteredWait = 400 * time.Millisecond
	// openWithin is how soon after the last knock the port must open.
	openWithin = time.Second
)

func mustFiltered(t testing.TB, l *lab.Lab, from netip.Addr, to netip.AddrPort) {
	t.Helper()
	if err := l.Filtered(from, to, filteredWait); err != nil {
		t.Error(err)
	}
}

func mustOpen(t testing.TB, l *lab.Lab, from netip.Addr, to netip.AddrPort) {
	t.Helper()
	if _, err := l.WaitOpen(from, to, openWithin); err != nil {
		t.Error(err)
	}
}

func mustKnock(t testing.TB, l *lab.Lab, v6 bool, delayMS int, ports ...string) {
	t.Helper()
	if err := l.Knock(v6, delayMS, ports...); err != nil {
		t.Fatal(err)
	}
}

// element returns the element for addr in set, failing the test if the
// set does not hold exactly that.
func element(t testing.TB, l *lab.Lab, set string, addr netip.Addr) lab.Element {
	t.Helper()
	return elementIn(t, l, "nftknock", set, addr)
}

// elementIn is element for a set of table (inet) table.
func elementIn(t testing.TB, l *lab.Lab, table, set string, addr netip.Addr) lab.Element {
	t.Helper()
	els, err := l.Elements(table, set)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range els {
		if e.Addr == addr {
			return e
		}
	}
	t.Fatalf("set %s holds %v, not %s", set, els, addr)
	return lab.Element{}
}

func noElements(t testing.TB, l *lab.Lab, set string) {
	t.Helper()
	els, err := l.Elements("nftknock", set)
	if err != nil {
		t.Fatal(err)
	}
	if len(els) != 0 {
		t.Errorf("set %s still holds %v", set, els)
	}
}
