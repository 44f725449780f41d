// Package nstest gives kernel tests a scratch network namespace, so that
// they touch neither the host's ruleset nor its NFLOG groups. The nft and
// knock packages' kernel tests and the integration tests share it.
package nstest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/nftknock/nftknock/integration/lab"
)

var seq atomic.Uint32

// Require skips tb when it cannot run here (not root, or one of tools is
// missing) — or fails it when CI=true, where a test that cannot run is a
// failure, never a skip.
func Require(tb testing.TB, tools ...string) {
	tb.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("needs %s (run `sudo make test`, which installs the tools)", strings.Join(missing, ", "))
	if os.Getenv("CI") == "true" {
		tb.Fatal(msg)
	}
	tb.Skip(msg)
}

// NS is a scratch network namespace.
type NS struct {
	Name string
	FD   int // for nftables.WithNetNSFd and netlink.Config.NetNS
}

// New creates a namespace with lo up, deleted when tb ends, even if it
// fails. It calls Require(tb, "ip") first.
func New(tb testing.TB) *NS {
	tb.Helper()
	Require(tb, "ip")
	name := fmt.Sprintf("nftk-t%d-%d", os.Getpid(), seq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		tb.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	tb.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			tb.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	f, err := os.Open("/run/netns/" + name)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { f.Close() })
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		tb.Fatalf("lo up in %s: %v: %s", name, err, out)
	}
	return &NS{Name: name, FD: int(f.Fd())}
}

// Run runs argv in the namespace with stdin, failing tb if it fails, and
// returns its standard output.
func (ns *NS) Run(tb testing.TB, stdin string, argv ...string) string {
	tb.Helper()
	out, err := ns.TryRun(stdin, argv...)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// TryRun runs argv in the namespace with stdin and returns its standard
// output, or an error that carries its standard error.
func (ns *NS) TryRun(stdin string, argv ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, argv...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, stderr.String())
	}
	return string(out), nil
}

// In runs fn on an OS thread inside the namespace: sockets fn creates
// belong to the namespace for their whole life.
func (ns *NS) In(tb testing.TB, fn func() error) {
	tb.Helper()
	if err := lab.InNS(ns.Name, fn); err != nil {
		tb.Fatalf("in namespace %s: %v", ns.Name, err)
	}
}
