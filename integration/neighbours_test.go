package integration

// Today's gate (a base chain on the input hook, in nftknock's own table)
// next to what real servers run: Docker publishing a port, firewalld, ufw,
// an admin's own ruleset with `policy drop`. These tests establish what
// holds and what does not, with real clients; where a later change is to
// alter the outcome, the expectation is one named constant.

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/integration/lab"
	"github.com/nftknock/nftknock/integration/neighbours"
	"github.com/nftknock/nftknock/integration/nstest"
	"github.com/nftknock/nftknock/nft"
)

// What today's input-hook door does to a port Docker publishes (-p
// 8443:8080), on each of the paths Docker serves it by.
const (
	// IPv4: Docker DNATs 8443 to the container in prerouting; the
	// connection is forwarded, and never meets the input hook. Forward
	// doors (hook = "forward") are to make this true.
	dockerV4Gated = false
	// IPv6: Docker without ip6tables (its default) serves [::]:8443
	// through docker-proxy, a local socket: the input hook sees it.
	dockerV6Gated = true
)

// panelDoor opens a containerised admin panel's published port.
const panelDoor = `
[[door]]
name = "panel"
sequence = ["7000:tcp", "8000:udp", "9000:tcp"]
seq_timeout = "5s"
open = ["8443:tcp"]
open_for = "30s"
`

var (
	panel4 = netip.AddrPortFrom(lab.ServerV4, 8443)
	panel6 = netip.AddrPortFrom(lab.ServerV6, 8443)
)

// TestDockerPublishedPortBypassesInputGate: with a door opening 8443:tcp
// and Docker publishing 8443 from a container, a client that never
// knocked reaches the container over IPv4 — nftknock's 8443 rules count
// no packet while Docker's DNAT counts every connection, and FindDNAT
// names that rule — while over IPv6 the door gates it. Both stay so after
// `docker restart` of the container and a restart of dockerd.
func TestDockerPublishedPortBypassesInputGate(t *testing.T) {
	l := newLab(t)
	needTools(t, neighbours.DockerTools...)
	docker, containerIP := startDockerPanel(t, l)
	// The container answers on both paths before the gate goes up.
	waitEchoes(t, l, lab.ClientV4, panel4)
	waitEchoes(t, l, lab.ClientV6, panel6)
	dnatBefore := dockerDNATPackets(t, l, containerIP)
	d := startDaemon(t, l, writeConfig(t, "", panelDoor))

	// IPv4, from a source that never knocked.
	const attempts = 3
	for range attempts {
		if dockerV4Gated {
			mustFiltered(t, l, lab.ClientV4, panel4)
		} else if err := echoes(l, lab.ClientV4, panel4); err != nil {
			t.Errorf("IPv4, never knocked: %v (want the container to answer: the input hook never sees a DNAT'd connection)", err)
		}
	}
	if !dockerV4Gated {
		if n := nftknockPackets(t, l, "dport 8443"); n != 0 {
			t.Errorf("nftknock's 8443 rules counted %d packets, want 0: the connections were forwarded", n)
		}
		if n := dockerDNATPackets(t, l, containerIP) - dnatBefore; n != attempts {
			t.Errorf("Docker's DNAT to %s:8080 counted %d connections, want %d", containerIP, n, attempts)
		}
	}
	// The warning's finder names Docker's rule, as iptables-nft wrote it.
	mustFindDockerDNAT(t, l, containerIP)

	// IPv6, from a source that never knocked, then after a knock.
	if dockerV6Gated {
		mustFiltered(t, l, lab.ClientV6, panel6)
		mustKnock(t, l, true, 0, "7000", "8000:udp", "9000")
		mustOpen(t, l, lab.ClientV6, panel6)
		mustFiltered(t, l, lab.Client2V6, panel6)
		if n := nftknockPackets(t, l, "dport 8443", "@panel_v6"); n == 0 {
			t.Error("nftknock's rule for knocked IPv6 sources counted no packet")
		}
	} else if err := echoes(l, lab.ClientV6, panel6); err != nil {
		t.Errorf("IPv6, never knocked: %v", err)
	}

	// An IPv4 knock opens the door, as the log says; today that changes
	// nothing, since the port was never closed over IPv4.
	mark := markLog(d)
	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	mark.wait(t, 2*time.Second, "door opened", `"door": "panel"`, lab.ClientV4.String())
	element(t, l, "panel_v4", lab.ClientV4)
	if dockerV4Gated {
		mustOpen(t, l, lab.ClientV4, panel4)
	}

	// The same after a restart of the container, and of dockerd, from the
	// second addresses, which never knocked.
	checkNeverKnocked := func(after string) {
		t.Helper()
		if dockerV4Gated {
			mustFiltered(t, l, lab.Client2V4, panel4)
		} else {
			waitEchoes(t, l, lab.Client2V4, panel4)
		}
		if dockerV6Gated {
			mustFiltered(t, l, lab.Client2V6, panel6)
		} else {
			waitEchoes(t, l, lab.Client2V6, panel6)
		}
		if t.Failed() {
			t.Logf("after %s", after)
		}
	}
	checkNeverKnocked("the knock")
	start := time.Now()
	if err := docker.RestartContainer("panel"); err != nil {
		t.Fatal(err)
	}
	checkNeverKnocked("docker restart panel")
	t.Logf("docker restart: %s", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	if err := docker.RestartDaemon("panel"); err != nil {
		t.Fatal(err)
	}
	checkNeverKnocked("a restart of dockerd")
	mustFindDockerDNAT(t, l, containerIP)
	t.Logf("dockerd restart: %s", time.Since(start).Round(time.Millisecond))
}

// startDockerPanel starts dockerd in the server namespace with a container
// "panel" that publishes 8443 (-p 8443:8080) and echoes; it returns
// Docker and the container's address. Docker is stopped when the test
// ends.
func startDockerPanel(t *testing.T, l *lab.Lab) (*neighbours.Docker, string) {
	t.Helper()
	start := time.Now()
	docker, err := neighbours.StartDocker(l.Server)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("dockerd log:\n%s", docker.Log())
		}
		if err := docker.Close(); err != nil {
			t.Error(err)
		}
	})
	if err := docker.ImportBusybox("nftknock-busybox"); err != nil {
		t.Fatal(err)
	}
	ip, err := docker.RunEcho("panel", "nftknock-busybox", "8443:8080")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("dockerd and the container up in %s", time.Since(start).Round(time.Millisecond))
	return docker, ip
}

// mustFindDockerDNAT checks that nft.FindDNAT reports Docker's rule for
// the panel door's port, with the handle nft shows for it.
func mustFindDockerDNAT(t *testing.T, l *lab.Lab, containerIP string) {
	t.Helper()
	ns, err := os.Open("/run/netns/" + l.Server)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	found, err := nft.FindDNAT([]config.Port{{Num: 8443, Proto: config.TCP}, {Num: 22, Proto: config.TCP}},
		nftables.WithNetNSFd(int(ns.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	listing, err := lab.Run(l.Server, "nft", "-a", "list", "chain", "ip", "nat", "DOCKER")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`tcp dport 8443 .*dnat to ` + regexp.QuoteMeta(containerIP) + `:8080 # handle (\d+)`).FindStringSubmatch(listing)
	if m == nil {
		t.Fatalf("no DNAT rule for 8443 in:\n%s", listing)
	}
	handle, _ := strconv.ParseUint(m[1], 10, 64)
	want := nft.DNAT{
		Family: "ip", Table: "nat", Chain: "DOCKER", Handle: handle,
		Port:  config.Port{Num: 8443, Proto: config.TCP},
		Match: "tcp dport 8443",
		To:    nft.NATTarget{Addr: netip.MustParseAddr(containerIP), Port: 8080},
		XT:    true,
	}
	if len(found) != 1 || found[0] != want {
		t.Errorf("FindDNAT found %v, want exactly %v", found, want)
	}
}

// echoes connects from from to to and checks that what it sends comes back.
func echoes(l *lab.Lab, from netip.Addr, to netip.AddrPort) error {
	c, err := l.Dial(from, to, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	msg := fmt.Sprintf("hello from %s", from)
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Errorf("connect %s → %s: no echo: %w", from, to, err)
	}
	if string(buf) != msg {
		return fmt.Errorf("connect %s → %s: echoed %q, want %q", from, to, buf, msg)
	}
	return nil
}

// waitEchoes waits until to echoes: a container comes up a moment after
// docker run (or restart) returns.
func waitEchoes(t *testing.T, l *lab.Lab, from netip.Addr, to netip.AddrPort) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := echoes(l, from, to)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%v (for 10s)", err)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var counterRE = regexp.MustCompile(`counter packets (\d+)`)

// rulePackets sums the packet counters of the rules in `nft list chain
// args...` output whose line holds every one of parts.
func rulePackets(t *testing.T, l *lab.Lab, chain []string, parts ...string) int {
	t.Helper()
	out, err := lab.Run(l.Server, append([]string{"nft", "list", "chain"}, chain...)...)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(out, "\n") {
		if m := counterRE.FindStringSubmatch(line); m != nil && containsAll(line, parts...) {
			p, _ := strconv.Atoi(m[1])
			n += p
		}
	}
	return n
}

func nftknockPackets(t *testing.T, l *lab.Lab, parts ...string) int {
	t.Helper()
	return rulePackets(t, l, []string{"inet", "nftknock", "input"}, parts...)
}

// dockerDNATPackets is the counter of Docker's DNAT rule for 8443: the nat
// table sees the first packet of each connection only.
func dockerDNATPackets(t *testing.T, l *lab.Lab, containerIP string) int {
	t.Helper()
	return rulePackets(t, l, []string{"ip", "nat", "DOCKER"}, "dport 8443", "dnat to "+containerIP+":8080")
}

// mustGateHolds walks the ssh door's whole cycle for IPv4 and IPv6: port 22
// filtered before a knock, open to the knocking source after it (and only
// to it), filtered again once open_for (3s) is over.
func mustGateHolds(t *testing.T, l *lab.Lab, after string) {
	t.Helper()
	defer func() {
		if t.Failed() {
			t.Logf("the gate broke after %s", after)
		}
	}()
	mustFiltered(t, l, lab.ClientV4, ssh4)
	mustFiltered(t, l, lab.ClientV6, ssh6)
	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	mustKnock(t, l, true, 0, "7000", "8000:udp", "9000")
	mustOpen(t, l, lab.ClientV4, ssh4)
	mustOpen(t, l, lab.ClientV6, ssh6)
	mustFiltered(t, l, lab.Client2V4, ssh4)
	mustFiltered(t, l, lab.Client2V6, ssh6)
	time.Sleep(3500 * time.Millisecond)
	noElements(t, l, "ssh_v4")
	noElements(t, l, "ssh_v6")
	mustFiltered(t, l, lab.ClientV4, ssh4)
	mustFiltered(t, l, lab.ClientV6, ssh6)
}

// TestGateHoldsWithFirewalld: firewalld (nftables backend, default zone
// public, which allows ssh) and today's gate: port 22 filtered before a
// knock, open after, closed after open_for, before and after `firewall-cmd
// --reload`, which rebuilds firewalld's table and leaves nftknock's alone.
// A door's port that firewalld does not allow stays closed after a knock
// (firewalld rejects it) until firewalld allows it.
func TestGateHoldsWithFirewalld(t *testing.T) {
	l := newLab(t)
	needTools(t, neighbours.FirewalldTools...)
	stop, err := l.Echo(8443)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	start := time.Now()
	fw, err := neighbours.StartFirewalld(l.Server)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("firewalld log:\n%s", fw.Log())
		}
		if err := fw.Close(); err != nil {
			t.Error(err)
		}
	})
	t.Logf("firewalld running in %s", time.Since(start).Round(time.Millisecond))
	startDaemon(t, l, writeConfig(t, "", sshDoor("5s", "3s")+`
[[door]]
name = "panel"
sequence = ["7100:tcp", "8100:udp", "9100:tcp"]
seq_timeout = "5s"
open = ["8443:tcp"]
open_for = "30s"
`))

	mustGateHolds(t, l, "firewalld started")
	start = time.Now()
	if err := fw.Reload(); err != nil {
		t.Fatal(err)
	}
	t.Logf("firewall-cmd --reload: %s", time.Since(start).Round(time.Millisecond))
	tables, err := lab.Run(l.Server, "nft", "list", "tables")
	if err != nil || !containsAll(tables, "table inet firewalld", "table inet nftknock") {
		t.Errorf("after the reload, nft list tables: %q, %v", tables, err)
	}
	mustGateHolds(t, l, "firewall-cmd --reload")

	// 8443 is in no firewalld zone: a knock lets the source past
	// nftknock's gate, and firewalld's own chain rejects it.
	mustFiltered(t, l, lab.ClientV4, panel4)
	mustKnock(t, l, false, 0, "7100", "8100:udp", "9100")
	element(t, l, "panel_v4", lab.ClientV4)
	mustRejected(t, l, lab.ClientV4, panel4)
	if err := fw.AddPort("8443/tcp"); err != nil {
		t.Fatal(err)
	}
	mustOpen(t, l, lab.ClientV4, panel4)
	mustFiltered(t, l, lab.Client2V4, panel4)
}

// mustRejected checks that a connection is refused at once (an ICMP error
// or a reset), not dropped.
func mustRejected(t *testing.T, l *lab.Lab, from netip.Addr, to netip.AddrPort) {
	t.Helper()
	start := time.Now()
	c, err := l.Dial(from, to, 2*time.Second)
	switch {
	case err == nil:
		c.Close()
		t.Errorf("connect %s → %s succeeded, want it rejected", from, to)
	case time.Since(start) >= 2*time.Second:
		t.Errorf("connect %s → %s: %v, want it rejected at once", from, to, err)
	}
}

// TestGateHoldsWithUFW: ufw enabled with `ufw allow 22/tcp` and today's
// gate: port 22 filtered before a knock, open after, closed after
// open_for, before and after `ufw reload`.
func TestGateHoldsWithUFW(t *testing.T) {
	l := newLab(t)
	needTools(t, neighbours.UFWTools...)
	start := time.Now()
	ufw, err := neighbours.StartUFW(l.Server, "22/tcp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ufw.Close(); err != nil {
			t.Error(err)
		}
	})
	t.Logf("ufw enabled in %s", time.Since(start).Round(time.Millisecond))
	startDaemon(t, l, writeConfig(t, "", sshDoor("5s", "3s")))

	mustGateHolds(t, l, "ufw enable")
	start = time.Now()
	if err := ufw.Reload(); err != nil {
		t.Fatal(err)
	}
	t.Logf("ufw reload: %s", time.Since(start).Round(time.Millisecond))
	mustGateHolds(t, l, "ufw reload")
}

// TestAdminPolicyDropKeepsGrantedPortClosed: an admin's own table with
// `policy drop` that does not allow 22. A knock opens the door — the
// daemon logs it, the source is in the set, nftknock's accept counts the
// packets — and port 22 stays dropped: an accept in nftknock's table does
// not pass a drop in theirs.
func TestAdminPolicyDropKeepsGrantedPortClosed(t *testing.T) {
	l := newLab(t)
	nstest.Require(t, "nft")
	if err := neighbours.LoadRuleset(l.Server, neighbours.AdminRuleset); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, l, writeConfig(t, "", sshDoor("5s", "30s")))

	mustFiltered(t, l, lab.ClientV4, ssh4)
	mustFiltered(t, l, lab.ClientV6, ssh6)
	for _, v6 := range []bool{false, true} {
		mark := markLog(d)
		mustKnock(t, l, v6, 0, "7000", "8000:udp", "9000")
		src, set := lab.ClientV4, "ssh_v4"
		if v6 {
			src, set = lab.ClientV6, "ssh_v6"
		}
		mark.wait(t, 2*time.Second, "door opened", `"door": "ssh"`, src.String())
		element(t, l, set, src)
		to := ssh4
		if v6 {
			to = ssh6
		}
		mustFiltered(t, l, src, to)
		if n := nftknockPackets(t, l, "dport 22", "@"+set, "accept"); n == 0 {
			t.Errorf("nftknock's accept for %s counted no packet: the SYN should have passed nftknock's chain", set)
		}
	}
}
