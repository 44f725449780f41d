package engine

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"

	"go.uber.org/zap"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock"
	"github.com/nftknock/nftknock/knock/gate"
	"github.com/nftknock/nftknock/knock/knocktest"
)

// TestFloodAllocatesNothing: a flood of first knocks from ever new
// sources, the table of sources full (each evicts one), and of scan
// packets, costs the engine no allocation: under a flood the heap does not
// grow, and the garbage collector has nothing to catch up with.
func TestFloodAllocatesNothing(t *testing.T) {
	cfg, err := config.Parse(filepath.Join(t.TempDir(), "f.toml"), []byte(`
max_tracked = 1024
[[door]]
name = "ssh"
sequence = ["7000:tcp", "8000:udp", "9000:tcp"]
seq_timeout = "10s"
open = ["22:tcp"]
open_for = "30s"
`))
	if err != nil {
		t.Fatal(err)
	}
	g := gate.New(gate.NewFakeFirewall(nil), gate.Options{Log: zap.NewNop()})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go g.Run(ctx)
	e, err := Start(ctx, cfg, Options{Log: zap.NewNop(), Source: NewFakeSource(1), Gate: g})
	if err != nil {
		t.Fatal(err)
	}
	server := netip.MustParseAddr("192.0.2.1")
	var pkts [][]byte
	for i := range 4096 {
		src := netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
		pkts = append(pkts, knocktest.TCP(src, server, 7000, knocktest.SYN))
	}
	scan := knocktest.TCP(netip.MustParseAddr("10.1.0.1"), server, 2222, knocktest.SYN)
	ssh, star := []byte("ssh/1"), []byte("*")
	i := 0
	allocs := testing.AllocsPerRun(20000, func() {
		e.packet(knock.Logged{Prefix: ssh, Payload: pkts[i%len(pkts)]})
		e.packet(knock.Logged{Prefix: star, Payload: scan})
		i++
	})
	if allocs != 0 {
		t.Errorf("%.2f allocations per flood packet, want 0", allocs)
	}
}
