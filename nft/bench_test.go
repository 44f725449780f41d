package nft

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/nftables"
)

// BenchmarkGrant measures a grant as the gate writes it (Put of one
// element) against the kernel of a scratch namespace, over the Firewall's
// lasting socket: "refresh" grants the same source again and again (its
// timer restarts), "new" a new source each time.
func BenchmarkGrant(b *testing.B) {
	ns := newNetns(b)
	f := ns.open(b, "nftknock")
	if _, err := f.Install(defaultPlan("nftknock")); err != nil {
		b.Fatal(err)
	}
	put := func(addr netip.Addr, live bool) {
		if _, first, err := f.Put("ssh_v4", []Element{{Key: addr.AsSlice(), Timeout: time.Minute, Live: live}}); err != nil || first != nil {
			b.Fatal(err, first)
		}
	}
	b.Run("refresh", func(b *testing.B) {
		addr := mustAddr("192.0.2.1")
		for b.Loop() {
			put(addr, true)
		}
	})
	b.Run("new", func(b *testing.B) {
		addr := mustAddr("10.0.0.0")
		for b.Loop() {
			addr = addr.Next()
			put(addr, false)
		}
	})
}

// BenchmarkGrantSocketPerOp is the refresh batch of Grant sent as v0.3.0
// does without AsLasting: one netlink socket per operation. It is why
// Firewall keeps a lasting socket.
func BenchmarkGrantSocketPerOp(b *testing.B) {
	ns := newNetns(b)
	f := ns.open(b, "nftknock")
	if _, err := f.Install(defaultPlan("nftknock")); err != nil {
		b.Fatal(err)
	}
	addr := mustAddr("192.0.2.1")
	if err := f.Grant("ssh", addr, time.Minute); err != nil {
		b.Fatal(err)
	}
	set := ssh4(f)
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

// BenchmarkRotate is a window turn of a rotating door: a port set flushed
// and refilled in one batch.
func BenchmarkRotate(b *testing.B) {
	ns := newNetns(b)
	f := ns.open(b, "nftknock")
	if _, err := f.Install(planOf("nftknock", sshDoor(), rotDoor())); err != nil {
		b.Fatal(err)
	}
	sets := [][][]byte{{{0x61, 0xa8}, {0x79, 0x18}}, {{0x75, 0x30}, {0x84, 0xd0}}}
	i := 0
	for b.Loop() {
		if err := f.Replace("rot_first", sets[i%2]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
