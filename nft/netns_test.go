package nft

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/nftables"
)

// netnsSeq numbers the namespaces this test binary creates.
var netnsSeq atomic.Int64

// netns is a scratch network namespace with its own, empty nf_tables.
type netns struct {
	name string
	fd   int
}

// requireKernel skips (or, in CI, fails) a test that needs root, nft and ip.
func requireKernel(tb testing.TB) {
	tb.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range []string{"nft", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("kernel test needs %s", strings.Join(missing, ", "))
	if os.Getenv("CI") == "true" {
		tb.Fatal(msg)
	}
	tb.Skip(msg)
}

// newNetns creates a network namespace that t.Cleanup deletes, even if the
// test fails.
func newNetns(tb testing.TB) *netns {
	tb.Helper()
	requireKernel(tb)
	name := fmt.Sprintf("nftk-nft-%d-%d", os.Getpid(), netnsSeq.Add(1))
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
	return &netns{name: name, fd: int(f.Fd())}
}

// open opens a Firewall for table in the namespace, closed by t.Cleanup.
func (ns *netns) open(tb testing.TB, table string) *Firewall {
	tb.Helper()
	f, err := Open(table, nftables.WithNetNSFd(ns.fd))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { f.Close() })
	return f
}

// nft runs nft in the namespace and returns its output.
func (ns *netns) nft(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := ns.tryNft(args...)
	if err != nil {
		tb.Fatalf("nft %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func (ns *netns) tryNft(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.name, "nft"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%w: %s", err, stderr.Bytes())
	}
	return stdout.String(), nil
}

// nftInput runs nft -f - with input in the namespace.
func (ns *netns) nftInput(tb testing.TB, input string) {
	tb.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns.name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(input)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("nft -f: %v: %s\ninput:\n%s", err, out, input)
	}
}
