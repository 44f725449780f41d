package nft

import (
	"testing"

	"github.com/google/nftables"

	"github.com/nftknock/nftknock/integration/nstest"
)

// netns is a scratch network namespace with its own, empty nf_tables.
type netns struct{ *nstest.NS }

// requireKernel skips (or, in CI, fails) a test that needs root, nft and ip.
func requireKernel(tb testing.TB) {
	tb.Helper()
	nstest.Require(tb, "nft", "ip")
}

// newNetns creates a network namespace that t.Cleanup deletes, even if the
// test fails.
func newNetns(tb testing.TB) *netns {
	tb.Helper()
	requireKernel(tb)
	return &netns{nstest.New(tb)}
}

// open opens a Firewall for table in the namespace, closed by t.Cleanup.
func (ns *netns) open(tb testing.TB, table string) *Firewall {
	tb.Helper()
	f, err := Open(table, nftables.WithNetNSFd(ns.FD))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { f.Close() })
	return f
}

// nft runs nft in the namespace and returns its output.
func (ns *netns) nft(tb testing.TB, args ...string) string {
	tb.Helper()
	return ns.Run(tb, "", append([]string{"nft"}, args...)...)
}

func (ns *netns) tryNft(args ...string) (string, error) {
	return ns.TryRun("", append([]string{"nft"}, args...)...)
}

// nftInput runs nft -f - with input in the namespace.
func (ns *netns) nftInput(tb testing.TB, input string) {
	tb.Helper()
	ns.Run(tb, input, "nft", "-f", "-")
}
