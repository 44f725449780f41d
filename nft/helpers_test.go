package nft

import (
	"net/netip"
	"time"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/nft/plan"
)

func tcp(n uint16) config.Port { return config.Port{Num: n, Proto: config.TCP} }
func udp(n uint16) config.Port { return config.Port{Num: n, Proto: config.UDP} }

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// testDoor is a door as these tests lay it out: its gate and what it has
// the kernel capture, as a knock, SPA or rotating door would say it.
type testDoor struct {
	gate      plan.Door
	knocks    []plan.Knock
	datagram  *config.Port
	size      uint16 // of the datagrams, if one size only
	shared    bool   // the datagram port is shared (SharedDatagram)
	rotating  *plan.RotatingKnocks
	maxGrants int
}

func knockOf(step config.Port, label string, watch plan.Watch, seqTimeout time.Duration) plan.Knock {
	return plan.Knock{Step: step, When: plan.DoorMatch("", config.DefaultTCPFlags, step.Proto), Label: label, Watch: watch, SeqTimeout: seqTimeout}
}

// sshDoor is the shipped default door: knocks 7000/tcp, 8000/udp,
// 9000/tcp, opens 22/tcp.
func sshDoor() testDoor {
	return testDoor{
		gate: plan.Door{Name: "ssh", Open: []config.Port{tcp(22)}, MaxGrants: config.DefaultMaxGrants},
		knocks: []plan.Knock{
			knockOf(tcp(7000), "knock 1 of 3", plan.WatchFirst, 10*time.Second),
			knockOf(udp(8000), "knock 2 of 3", plan.WatchNext, 10*time.Second),
			knockOf(tcp(9000), "knock 3 of 3", plan.WatchNone, 10*time.Second),
		},
	}
}

// adminDoor shares an opened port (22/tcp) and a knock port (9000/tcp:
// step 3 of ssh, step 1 of admin) with sshDoor.
func adminDoor() testDoor {
	return testDoor{
		gate: plan.Door{Name: "admin", Open: []config.Port{tcp(22), tcp(8443)}, MaxGrants: config.DefaultMaxGrants},
		knocks: []plan.Knock{
			knockOf(tcp(9000), "knock 1 of 2", plan.WatchFirst, 5*time.Second),
			knockOf(udp(7001), "knock 2 of 2", plan.WatchNone, 5*time.Second),
		},
	}
}

// vpnDoor is an SPA door on 62201/udp; rotDoor a rotating door on
// 20000-40000/tcp whose sets hold rotSeqs' knocks.
func vpnDoor() testDoor {
	p := udp(62201)
	return testDoor{gate: plan.Door{Name: "vpn", Open: []config.Port{udp(1194)}, MaxGrants: config.DefaultMaxGrants}, datagram: &p}
}

// teamDoor is a public-key SPA door on 62203/udp whose datagrams are 691
// bytes, heard on eth0 only.
func teamDoor() testDoor {
	p := udp(62203)
	return testDoor{gate: plan.Door{Name: "team", Open: []config.Port{tcp(22)}, MaxGrants: config.DefaultMaxGrants}, datagram: &p, size: 691}
}

// fwDoor and fw2Door are fwknop doors: they grant per port and share
// 62201/udp.
func fwDoor() testDoor {
	p := udp(62201)
	return testDoor{gate: plan.Door{Name: "fw", Open: []config.Port{tcp(22), tcp(2222)}, MaxGrants: config.DefaultMaxGrants, PerPort: true},
		datagram: &p, shared: true}
}

func fw2Door() testDoor {
	p := udp(62201)
	return testDoor{gate: plan.Door{Name: "fw_2", Open: []config.Port{udp(1194)}, MaxGrants: config.DefaultMaxGrants, PerPort: true},
		datagram: &p, shared: true}
}

func rotDoor() testDoor {
	r := config.Port{Num: 20000, Last: 40000, Proto: config.TCP}
	return testDoor{
		gate: plan.Door{Name: "rot", Open: []config.Port{tcp(2222)}, MaxGrants: config.DefaultMaxGrants},
		rotating: &plan.RotatingKnocks{Range: r, When: plan.DoorMatch("", config.DefaultTCPFlags, config.TCP), SeqTimeout: 10 * time.Second,
			First: []uint16{25000, 31000}, Next: []uint16{21111, 22222, 36000}},
	}
}

// planOf lays out doors in table, with every prefix tagged 1.
func planOf(table string, doors ...testDoor) *plan.Plan {
	b := plan.NewBuilder(table, config.DefaultNFLOGGroup, func(door string) string { return door + "/1" })
	addDoors(b, doors...)
	return b.Build()
}

func addDoors(b *plan.Builder, doors ...testDoor) {
	for _, d := range doors {
		b.Door(d.gate)
		for _, k := range d.knocks {
			b.Knock(d.gate.Name, k)
		}
		switch {
		case d.datagram != nil && d.size != 0:
			b.SizedDatagram(d.gate.Name, *d.datagram, d.size, plan.DoorMatch("eth0", config.TCPFlags{}, config.UDP))
		case d.datagram != nil && d.shared:
			b.SharedDatagram(d.gate.Name, *d.datagram, nil)
		case d.datagram != nil:
			b.Datagram(d.gate.Name, *d.datagram, nil)
		}
		if d.rotating != nil {
			b.RotatingKnocks(d.gate.Name, *d.rotating)
		}
	}
}

func defaultPlan(table string) *plan.Plan { return planOf(table, sshDoor()) }
func sharedPlan(table string) *plan.Plan  { return planOf(table, sshDoor(), adminDoor()) }

// panelDoor is a forward door for a port Docker publishes: 8443/tcp as the
// client addressed it, DNAT'd or served on the input hook.
func panelDoor() testDoor {
	return testDoor{
		gate: plan.Door{Name: "panel", Open: []config.Port{tcp(8443)}, MaxGrants: config.DefaultMaxGrants, Hook: plan.HookForward},
		knocks: []plan.Knock{
			knockOf(tcp(7100), "knock 1 of 2", plan.WatchFirst, 10*time.Second),
			knockOf(udp(8100), "knock 2 of 2", plan.WatchNone, 10*time.Second),
		},
	}
}

// routerDoor is a router's forward door: a port forward on its public
// addresses (to), a range, and hosts behind it by their own addresses,
// with always_allow networks.
func routerDoor() testDoor {
	return testDoor{
		gate: plan.Door{
			Name: "lan", MaxGrants: 1024, Hook: plan.HookForward,
			Open:        []config.Port{tcp(2222), {Num: 60000, Last: 61000, Proto: config.UDP}},
			To:          []netip.Addr{mustAddr("203.0.113.5"), mustAddr("2001:db8::5")},
			ForwardTo:   []config.Dest{{Addr: mustAddr("192.168.1.10"), Port: tcp(22)}, {Addr: mustAddr("2001:db8:1::10"), Port: tcp(22)}},
			AlwaysAllow: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8:2::/48")},
		},
		datagram: func() *config.Port { p := udp(62202); return &p }(),
	}
}

// anyoneForwardDoor is an open_to = "anyone" forward door.
func anyoneForwardDoor() testDoor {
	return testDoor{
		gate:     plan.Door{Name: "pub", Open: []config.Port{tcp(8080)}, Anyone: true, MaxGrants: 2, Hook: plan.HookForward},
		datagram: func() *config.Port { p := udp(62203); return &p }(),
	}
}

// forwardPlan has an input door and forward doors of every shape.
func forwardPlan(table string) *plan.Plan {
	return planOf(table, sshDoor(), panelDoor(), routerDoor(), anyoneForwardDoor())
}

// attachedPlan is forwardPlan laid out for attach mode.
func attachedPlan(table string) *plan.Plan {
	b := plan.NewBuilder(table, config.DefaultNFLOGGroup, func(door string) string { return door + "/1" })
	b.Attach()
	addDoors(b, sshDoor(), panelDoor(), routerDoor(), anyoneForwardDoor())
	return b.Build()
}
