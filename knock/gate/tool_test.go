package gate

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nftknock/nftknock/config"
)

// TestToolGrantAndRevoke: `nftknock grant` and `revoke` asked of the daemon
// (its table owned, so the tool cannot write it) write the element with
// exactly the asked timeout, restarting a longer or shorter one, and keep
// the ledger as the tool's own write would: a heal puts the grant back, a
// revoked one stays out.
func TestToolGrantAndRevoke(t *testing.T) {
	g := startGate(t, door("ssh", 30*time.Second))
	ctx := context.Background()
	if err := g.Tool(ctx, ToolRequest{Door: "ssh", Addr: alice, For: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if e, ok := g.element("ssh_v4", alice); !ok || e.Timeout != time.Hour {
		t.Fatalf("alice's element %+v (%v), want a 1h timeout", e, ok)
	}
	if gr, ok := g.ledgerGet("ssh", alice); !ok || gr.Timeout != time.Hour {
		t.Errorf("ledger %+v (%v)", gr, ok)
	}
	// As the tool's direct write: the timer restarts at what is asked.
	if err := g.Tool(ctx, ToolRequest{Door: "ssh", Addr: alice, For: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if e, _ := g.element("ssh_v4", alice); e.Timeout != time.Minute {
		t.Errorf("after a 1m grant: %+v", e)
	}
	if err := g.Tool(ctx, ToolRequest{Door: "ssh", Addr: bob, For: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if err := g.Tool(ctx, ToolRequest{Revoke: true, Door: "ssh", Addr: bob}); err != nil {
		t.Fatal(err)
	}
	if _, ok := g.element("ssh_v4", bob); ok {
		t.Error("bob's grant stayed after revoke")
	}
	g.clock.add(10 * time.Second)
	g.fw.Flush()
	g.wait("the heal", func() bool { _, ok := g.element("ssh_v4", alice); return ok })
	if e, _ := g.element("ssh_v4", alice); e.Timeout != time.Minute || e.Expires != 50*time.Second {
		t.Errorf("alice after the heal: %+v, want 1m with 50s left", e)
	}
	if _, ok := g.element("ssh_v4", bob); ok {
		t.Error("a revoked grant came back with the heal")
	}
}

func TestToolRefuses(t *testing.T) {
	perPort := door("fw", time.Minute)
	perPort.Kind = &config.Fwknop{}
	g := startGate(t, door("ssh", 30*time.Second), perPort)
	ctx := context.Background()
	for _, c := range []struct {
		r    ToolRequest
		want string
	}{
		{ToolRequest{Door: "web", Addr: alice, For: time.Hour}, `no door "web" (doors: fw, ssh)`},
		{ToolRequest{Door: "ssh", For: time.Hour}, "invalid address"},
		{ToolRequest{Door: "ssh", Addr: alice}, "under a millisecond"},
		{ToolRequest{Door: "fw", Addr: alice, For: time.Hour}, "a port must be named"},
		{ToolRequest{Door: "ssh", Addr: alice, Port: config.Port{Num: 22, Proto: config.TCP}, For: time.Hour}, "a port must be named"},
		{ToolRequest{Door: "fw", Addr: alice, Port: config.Port{Num: 80, Proto: config.TCP}, For: time.Hour}, "door fw does not open 80:tcp"},
	} {
		if err := g.Tool(ctx, c.r); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.r, err, c.want)
		}
	}
	if err := g.Tool(ctx, ToolRequest{Door: "fw", Addr: alice, Port: config.Port{Num: 22, Proto: config.TCP}, For: time.Hour}); err != nil {
		t.Errorf("per-port grant: %v", err)
	}
}
