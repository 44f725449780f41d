package nft

import (
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/nftknock/nftknock/config"
)

// BenchmarkGrant measures Grant against the kernel of a scratch namespace,
// over the Firewall's lasting socket: "refresh" grants the same source again
// and again (batch {delete, add}), "new" a new source each time ({add}).
func BenchmarkGrant(b *testing.B) {
	ns := newNetns(b)
	f := ns.open(b, "nftknock")
	if err := f.Install(defaultConfig()); err != nil {
		b.Fatal(err)
	}
	b.Run("refresh", func(b *testing.B) {
		addr := mustAddr("192.0.2.1")
		for b.Loop() {
			if err := f.Grant("ssh", addr, time.Minute); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("new", func(b *testing.B) {
		addr := mustAddr("10.0.0.0")
		for b.Loop() {
			addr = addr.Next()
			if err := f.Grant("ssh", addr, time.Minute); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkGrantSocketPerOp is the refresh batch of Grant sent as v0.3.0
// does without AsLasting: one netlink socket per operation. It is why
// Firewall keeps a lasting socket.
func BenchmarkGrantSocketPerOp(b *testing.B) {
	ns := newNetns(b)
	f := ns.open(b, "nftknock")
	if err := f.Install(defaultConfig()); err != nil {
		b.Fatal(err)
	}
	addr := mustAddr("192.0.2.1")
	if err := f.Grant("ssh", addr, time.Minute); err != nil {
		b.Fatal(err)
	}
	set, err := f.doorSet("ssh", addr)
	if err != nil {
		b.Fatal(err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(ns.FD))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := c.SetDeleteElements(set, []nftables.SetElement{{Key: addr.AsSlice()}}); err != nil {
			b.Fatal(err)
		}
		if err := c.SetAddElements(set, []nftables.SetElement{{Key: addr.AsSlice(), Timeout: time.Minute}}); err != nil {
			b.Fatal(err)
		}
		if err := c.Flush(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRotate is a window turn of a rotating door: both port sets
// flushed and refilled in one batch.
func BenchmarkRotate(b *testing.B) {
	ns := newNetns(b)
	f := ns.open(b, "nftknock")
	if err := f.Install(doorsConfig()); err != nil {
		b.Fatal(err)
	}
	seqs := [][][]config.Port{rotSeqs, {rotSeqs[1], {tcp(33000), tcp(34000), tcp(35000)}}}
	i := 0
	for b.Loop() {
		if err := f.Rotate("rot", seqs[i%2]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
