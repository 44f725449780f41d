package integration

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nftknock/nftknock/integration/lab"
	"github.com/nftknock/nftknock/integration/neighbours"
	"github.com/nftknock/nftknock/integration/nstest"
)

// The lab's server as a router: a LAN namespace behind it, reached from
// the client through it (RFC 5737's second range and an RFC 3849 /64).
var (
	routerLAN4 = netip.MustParseAddr("198.51.100.1")
	routerLAN6 = netip.MustParseAddr("2001:db8:1::1")
	lanHost4   = netip.MustParseAddr("198.51.100.10")
	lanHost6   = netip.MustParseAddr("2001:db8:1::10")
)

// addLAN puts a host behind the lab's server, which routes for it: a
// namespace joined to the server by a veth pair, forwarding on in the
// server, routes both ways. It serves TCP echo on 22. All of it goes when
// the test ends.
func addLAN(t *testing.T, l *lab.Lab) string {
	t.Helper()
	lan := strings.TrimSuffix(l.Server, "-srv") + "-lan"
	vr, vl := fmt.Sprintf("nkr%d", os.Getpid()%100000), fmt.Sprintf("nkl%d", os.Getpid()%100000)
	t.Cleanup(func() {
		if _, err := os.Stat("/run/netns/" + lan); err == nil {
			if out, err := exec.Command("ip", "netns", "del", lan).CombinedOutput(); err != nil {
				t.Errorf("ip netns del %s: %v: %s", lan, err, out)
			}
		}
	})
	for _, args := range [][]string{
		{"netns", "add", lan},
		{"link", "add", vr, "netns", l.Server, "type", "veth", "peer", "name", vl, "netns", lan},
		{"-n", lan, "link", "set", "lo", "up"},
		{"-n", l.Server, "addr", "add", routerLAN4.String() + "/24", "dev", vr},
		{"-n", l.Server, "addr", "add", routerLAN6.String() + "/64", "dev", vr, "nodad"},
		{"-n", lan, "addr", "add", lanHost4.String() + "/24", "dev", vl},
		{"-n", lan, "addr", "add", lanHost6.String() + "/64", "dev", vl, "nodad"},
		{"-n", l.Server, "link", "set", vr, "up"},
		{"-n", lan, "link", "set", vl, "up"},
		{"-n", lan, "route", "add", "default", "via", routerLAN4.String()},
		{"-n", lan, "-6", "route", "add", "default", "via", routerLAN6.String()},
		{"-n", l.Client, "route", "add", "198.51.100.0/24", "via", lab.ServerV4.String()},
		{"-n", l.Client, "-6", "route", "add", "2001:db8:1::/64", "via", lab.ServerV6.String()},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	for _, s := range []string{"net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"} {
		if _, err := lab.Run(l.Server, "sysctl", "-w", s); err != nil {
			t.Fatal(err)
		}
	}
	echoIn(t, lan, 22)
	return lan
}

// portForward is a router's own port forward, in nft's native form:
// 2222 on its public address to the LAN host's 22.
const portForward = `table ip nat {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 192.0.2.1 tcp dport 2222 dnat to 198.51.100.10:22
	}
}
`

func routerDoor(hook string) string {
	return fmt.Sprintf(`
[[door]]
name = "lan"
hook = %q
sequence = ["7000:tcp", "8000:udp", "9000:tcp"]
seq_timeout = "5s"
open = ["2222:tcp"]
open_for = "3s"
`, hook)
}

// TestRouterForwardDoor: the lab's server routes for a LAN host and
// forwards its public 2222 to the host's 22 (a native nft DNAT rule). An
// input door for 2222: -check names the router's DNAT rule and the fix.
// A forward door with to = the public address and forward_to = the LAN
// host's own addresses: the forwarded port and the host's 22, over IPv4
// and IPv6, filtered before a knock, open to the knocking source after it
// and to no one else, closed after open_for; the LAN host's own
// connections out are not gated.
func TestRouterForwardDoor(t *testing.T) {
	l := newLab(t)
	nstest.Require(t, "sysctl")
	lan := addLAN(t, l)
	echoIn(t, l.Client, 2222) // for the LAN host's connections out
	host4, host6 := netip.AddrPortFrom(lanHost4, 22), netip.AddrPortFrom(lanHost6, 22)
	fwd4 := netip.AddrPortFrom(lab.ServerV4, 2222)
	waitOpen := func(from netip.Addr, to netip.AddrPort) {
		t.Helper()
		if _, err := l.WaitOpen(from, to, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	waitOpen(lab.ClientV4, host4)
	waitOpen(lab.ClientV6, host6)
	if err := neighbours.LoadRuleset(l.Server, portForward); err != nil {
		t.Fatal(err)
	}
	waitOpen(lab.ClientV4, fwd4)

	cfg := writeConfig(t, "", routerDoor("input"))
	out, err := lab.Run(l.Server, daemonBin, "-check", "-config", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if want := `door "lan": open 2222:tcp: table ip nat chain prerouting handle `; !strings.Contains(out, want) ||
		!strings.Contains(out, "tcp dport 2222 dnat to 198.51.100.10:22: connections to 2222:tcp are DNAT'd and forwarded") ||
		!strings.Contains(out, `set hook = "forward" on the door`) {
		t.Errorf("nftknockd -check:\n%s\nwant the warning about the router's DNAT", out)
	}

	writeConfig(t, cfg, strings.Replace(routerDoor("forward"), `open = ["2222:tcp"]`,
		`to = ["192.0.2.1"]
open = ["2222:tcp"]
forward_to = ["198.51.100.10:22", "[2001:db8:1::10]:22"]`, 1))
	if out, err := lab.Run(l.Server, daemonBin, "-check", "-config", cfg); err != nil || strings.Contains(out, "warning") {
		t.Errorf("nftknockd -check of the forward door: %v\n%s", err, out)
	}
	startDaemon(t, l, cfg)
	for _, to := range []netip.AddrPort{host4, fwd4} {
		mustFiltered(t, l, lab.ClientV4, to)
	}
	mustFiltered(t, l, lab.ClientV6, host6)
	// The LAN host's own connections out are none of the door's.
	if err := lab.InNS(lan, func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(lab.ClientV4, 2222).String(), time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		t.Errorf("the LAN host connecting out: %v", err)
	}

	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	mustOpen(t, l, lab.ClientV4, host4)
	mustOpen(t, l, lab.ClientV4, fwd4)
	mustFiltered(t, l, lab.ClientV6, host6)
	mustFiltered(t, l, lab.Client2V4, host4)
	mustFiltered(t, l, lab.Client2V4, fwd4)
	mustKnock(t, l, true, 0, "7000", "8000:udp", "9000")
	mustOpen(t, l, lab.ClientV6, host6)
	mustFiltered(t, l, lab.Client2V6, host6)
	if n := rulePackets(t, l, []string{"inet", "nftknock", "forward"}, "ct original ip daddr 192.0.2.1", "proto-dst 2222", "@lan_v4", "accept"); n == 0 {
		t.Error("the forward rule for the port forward counted no packet")
	}

	time.Sleep(3500 * time.Millisecond)
	noElements(t, l, "lan_v4")
	noElements(t, l, "lan_v6")
	for _, to := range []netip.AddrPort{host4, fwd4} {
		mustFiltered(t, l, lab.ClientV4, to)
	}
	mustFiltered(t, l, lab.ClientV6, host6)
}
