package gate

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/nft"
)

// ToolRequest is `nftknock grant` or `revoke` asked of the daemon (over
// its control socket) because the daemon owns the table and no other
// socket may write it. It does what the tool would do to the kernel —
// an element with timeout For, or its deletion — and records it in the
// ledger as the Watcher would have reported the tool's own write.
type ToolRequest struct {
	Revoke bool
	Door   string
	Addr   netip.Addr
	// Port names the grant of a door that grants per port; zero for
	// other doors.
	Port config.Port
	For  time.Duration // grants: 1ms or more
	By   string        // the element's comment: who asked
}

type toolRequest struct {
	ToolRequest
	done chan error
}

// Tool has the gate carry out r and waits for it.
func (g *Gate) Tool(ctx context.Context, r ToolRequest) error {
	q := &toolRequest{ToolRequest: r, done: make(chan error, 1)}
	select {
	case g.reqs <- request{tool: q}:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-q.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *Gate) tool(r *toolRequest) error {
	gd, ok := g.gates[r.Door]
	if !ok {
		return fmt.Errorf("no door %q (doors: %s)", r.Door, strings.Join(slices.Sorted(maps.Keys(g.gates)), ", "))
	}
	addr := r.Addr.Unmap().WithZone("")
	if !addr.IsValid() {
		return fmt.Errorf("invalid address")
	}
	if gd.PerPort != (r.Port.Num != 0) {
		return fmt.Errorf("door %s: a port must be named for a door that grants per port, and only for one", r.Door)
	}
	if gd.PerPort && len(g.grantees(g.doors[r.Door], addr, []config.Port{r.Port})) == 0 {
		return fmt.Errorf("door %s does not open %s", r.Door, r.Port)
	}
	set, key := gd.GrantSet(addr, r.Port.Proto, r.Port.Num)
	if r.Revoke {
		if err := g.fw.Delete(set, [][]byte{key}); err != nil {
			return err
		}
		g.forget(r.Door, g.keyOf(r.Door, key))
		return nil
	}
	if r.For < time.Millisecond {
		return fmt.Errorf("timeout %v is under a millisecond", r.For)
	}
	refused, first, err := g.fw.Put(set, []nft.Element{{Key: key, Timeout: r.For, Live: true, Comment: r.By}})
	if err == nil && len(refused) > 0 {
		err = first
	}
	if err != nil {
		return err
	}
	g.record(g.grantOf(r.Door, key, r.For, r.For, r.By, g.now()))
	return nil
}
