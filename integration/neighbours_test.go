package integration

// Today's gate (a base chain on the input hook, in nftknock's own table)
// next to what real servers run: Docker publishing a port, firewalld, ufw,
// an admin's own ruleset with `policy drop`. These tests establish what
// holds and what does not, with real clients; where a later change is to
// alter the outcome, the expectation is one named constant.

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/integration/lab"
	"github.com/nftknock/nftknock/integration/neighbours"
	"github.com/nftknock/nftknock/integration/nstest"
	"github.com/nftknock/nftknock/nft"
)

// panelDoor opens a containerised admin panel's published port; on the
// input hook (hook = "input") Docker's DNAT bypasses it, on the forward
// hook it gates both paths Docker serves the port by. otherDoor opens
// another port published from the same container port.
func panelDoor(hook, openFor string) string {
	return fmt.Sprintf(`
[[door]]
name = "panel"
hook = %q
sequence = ["7000:tcp", "8000:udp", "9000:tcp"]
seq_timeout = "5s"
open = ["8443:tcp"]
open_for = %q
`, hook, openFor)
}

const otherDoor = `
[[door]]
name = "other"
hook = "forward"
sequence = ["7100:tcp", "8100:udp", "9100:tcp"]
seq_timeout = "5s"
open = ["9443:tcp"]
open_for = "30s"
`

var (
	panel4 = netip.AddrPortFrom(lab.ServerV4, 8443)
	panel6 = netip.AddrPortFrom(lab.ServerV6, 8443)
	other4 = netip.AddrPortFrom(lab.ServerV4, 9443)
)

// TestDockerPublishedPortBehindForwardDoor: Docker publishes a container's
// 8080 as 8443 and as 9443. A door on the input hook for 8443 gates
// nothing over IPv4 — Docker DNATs the connection to the container and
// forwards it, nftknock's rules count no packet while Docker's DNAT counts
// every connection — and `nftknockd -check` and the daemon say so, naming
// Docker's rule and the fix. Reloaded with hook = "forward", the door
// gates 8443 on both paths Docker uses: IPv4 through DNAT and the forward
// hook, IPv6 through docker-proxy on the input hook. Filtered before a
// knock, open to the knocking source after it (and to no one else), an
// established connection outlives the grant, closed again after
// open_for; a grant for 8443 does not open 9443, which maps to the same
// container port. All the same after `docker restart` of the container
// and a restart of dockerd.
func TestDockerPublishedPortBehindForwardDoor(t *testing.T) {
	l := newLab(t)
	needTools(t, neighbours.DockerTools...)
	docker, containerIP := startDockerPanel(t, l, "8443:8080", "9443:8080")
	// The container answers on every path before the gate goes up.
	waitEchoes(t, l, lab.ClientV4, panel4)
	waitEchoes(t, l, lab.ClientV6, panel6)
	waitEchoes(t, l, lab.ClientV4, other4)

	// An input door: -check warns, naming Docker's rule and the fix.
	cfg := writeConfig(t, "", panelDoor("input", "3s")+otherDoor)
	out, err := lab.Run(l.Server, daemonBin, "-check", "-config", cfg)
	if err != nil {
		t.Fatal(err)
	}
	handle := dockerDNATHandle(t, l, containerIP, 8443)
	wantWarning := fmt.Sprintf(`warning: %s: door "panel": open 8443:tcp: table ip nat chain DOCKER handle %d: tcp dport 8443 dnat to %s:8080 (an iptables DNAT rule): connections to 8443:tcp are DNAT'd and forwarded, never reaching the input hook this door gates, so it gates nothing for them: set hook = "forward" on the door`,
		cfg, handle, containerIP)
	if !strings.Contains(out, wantWarning+"\n") || strings.Count(out, "warning:") != 1 {
		t.Errorf("nftknockd -check:\n%s\nwant the one warning\n%s", out, wantWarning)
	}
	d := startDaemon(t, l, cfg)
	if !strings.Contains(d.Log(), `set hook = "forward" on the door`) {
		t.Errorf("the daemon did not warn at start:\n%s", d.Log())
	}
	dnatBefore := dockerDNATPackets(t, l, containerIP)
	const attempts = 3
	for range attempts {
		if err := echoes(l, lab.ClientV4, panel4); err != nil {
			t.Errorf("input door, IPv4, never knocked: %v (want the container to answer: the input hook never sees a DNAT'd connection)", err)
		}
	}
	if n := nftknockPackets(t, l, "dport 8443"); n != 0 {
		t.Errorf("nftknock's 8443 rules counted %d packets, want 0: the connections were forwarded", n)
	}
	if n := dockerDNATPackets(t, l, containerIP) - dnatBefore; n != attempts {
		t.Errorf("Docker's DNAT to %s:8080 counted %d connections, want %d", containerIP, n, attempts)
	}
	mustFiltered(t, l, lab.ClientV6, panel6) // docker-proxy, on the input hook

	// The same door on the forward hook.
	mark := markLog(d)
	writeConfig(t, cfg, panelDoor("forward", "3s")+otherDoor)
	if err := d.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	mark.wait(t, 5*time.Second, "reloaded")
	if strings.Contains(mark.since(), "gates nothing") {
		t.Errorf("a forward door was warned about:\n%s", mark.since())
	}
	mustForwardDoorCycle(t, l, "the reload")
	if n := rulePackets(t, l, []string{"inet", "nftknock", "forward"}, "proto-dst 8443", "@panel_v4", "accept"); n == 0 {
		t.Error("nftknock's forward rule for knocked IPv4 sources counted no packet")
	}
	if n := nftknockPackets(t, l, "dport 8443", "@panel_v6", "accept"); n == 0 {
		t.Error("nftknock's input rule for knocked IPv6 sources (docker-proxy) counted no packet")
	}

	start := time.Now()
	if err := docker.RestartContainer("panel"); err != nil {
		t.Fatal(err)
	}
	t.Logf("docker restart: %s", time.Since(start).Round(time.Millisecond))
	waitFiltered(t, l, lab.Client2V4, panel4, 10*time.Second)
	mustForwardDoorCycle(t, l, "docker restart panel")
	start = time.Now()
	if err := docker.RestartDaemon("panel"); err != nil {
		t.Fatal(err)
	}
	t.Logf("dockerd restart: %s", time.Since(start).Round(time.Millisecond))
	waitFiltered(t, l, lab.Client2V4, panel4, 10*time.Second)
	mustForwardDoorCycle(t, l, "a restart of dockerd")
	mustFindDockerDNAT(t, l, containerIP)
}

// mustForwardDoorCycle walks the forward panel door's cycle (open_for 3s)
// for IPv4 (DNAT and forward) and IPv6 (docker-proxy on the input hook).
func mustForwardDoorCycle(t *testing.T, l *lab.Lab, after string) {
	t.Helper()
	defer func() {
		if t.Failed() {
			t.Logf("the forward door broke after %s", after)
		}
	}()
	mustFiltered(t, l, lab.ClientV4, panel4)
	mustFiltered(t, l, lab.ClientV6, panel6)
	mustFiltered(t, l, lab.ClientV4, other4)
	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	mustKnock(t, l, true, 0, "7000", "8000:udp", "9000")
	waitEchoes(t, l, lab.ClientV4, panel4)
	waitEchoes(t, l, lab.ClientV6, panel6)
	// Another published port of the same container port stays shut.
	mustFiltered(t, l, lab.ClientV4, other4)
	mustFiltered(t, l, lab.Client2V4, panel4)
	mustFiltered(t, l, lab.Client2V6, panel6)
	// A connection let in outlives the grant.
	c, err := l.Dial(lab.ClientV4, panel4, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(3500 * time.Millisecond)
	noElements(t, l, "panel_v4")
	noElements(t, l, "panel_v6")
	if err := echoOn(c, "after the grant ran out"); err != nil {
		t.Errorf("the established connection: %v", err)
	}
	mustFiltered(t, l, lab.ClientV4, panel4)
	mustFiltered(t, l, lab.ClientV6, panel6)
}

// echoOn sends msg on c and checks it comes back.
func echoOn(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echoed %q, want %q", buf, msg)
	}
	return nil
}

// dockerDNATHandle is the handle of Docker's DNAT rule for port.
func dockerDNATHandle(t *testing.T, l *lab.Lab, containerIP string, port int) uint64 {
	t.Helper()
	listing, err := lab.Run(l.Server, "nft", "-a", "list", "chain", "ip", "nat", "DOCKER")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(fmt.Sprintf(`tcp dport %d .*dnat to %s:8080 # handle (\d+)`, port, regexp.QuoteMeta(containerIP))).FindStringSubmatch(listing)
	if m == nil {
		t.Fatalf("no DNAT rule for %d in:\n%s", port, listing)
	}
	handle, _ := strconv.ParseUint(m[1], 10, 64)
	return handle
}

// startDockerPanel starts dockerd in the server namespace with a container
// "panel" that publishes its 8080 (-p 8443:8080 ...) and echoes; it
// returns Docker and the container's address. Docker is stopped when the
// test ends.
func startDockerPanel(t *testing.T, l *lab.Lab, publish ...string) (*neighbours.Docker, string) {
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
	ip, err := docker.RunEcho("panel", "nftknock-busybox", publish...)
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
	handle := dockerDNATHandle(t, l, containerIP, 8443)
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
	echo(t, l, 8443)
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

// attachedSSH is the ssh door attached to the admin's ruleset.
func attachedSSH(openFor string) string {
	return "attach = \"inet filter input\"\n" + sshDoor("5s", openFor)
}

// attachedElement returns the element for addr in the daemon's set (its
// name in the admin's table: nftknock_<set>).
func attachedElement(t *testing.T, l *lab.Lab, set string, addr netip.Addr) lab.Element {
	t.Helper()
	return elementIn(t, l, "filter", "nftknock_"+set, addr)
}

// TestAttachedToAdminPolicyDrop: attached (attach = "inet filter
// input"), the daemon's rules sit in chain nftknock of the admin's own
// table, which its input chain jumps to first, past its `policy drop`
// that does not allow 22: port 22 filtered before a knock, open to the
// knocking source after it, over IPv4 and IPv6, and to no one else; the
// admin's chains are as they wrote them. `nft -f` of their file (which
// flushes the ruleset) is healed with the grants kept, for the time they
// had left; a restart of the daemon keeps them too. A ruleset without the
// jump (at start, or loaded later): the daemon and `nftknock status` say
// so, and a knock then is not heard; with the jump back, the gate works
// again. Closed again after open_for.
func TestAttachedToAdminPolicyDrop(t *testing.T) {
	l := newLab(t)
	nstest.Require(t, "nft")
	// Started on a ruleset without the jump, the daemon says so.
	noJump := strings.Replace(neighbours.AttachedAdminRuleset, "\t\tjump nftknock\n", "", 1)
	if err := neighbours.LoadRuleset(l.Server, noJump); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, "", attachedSSH("12s"))
	// -check says it first, before anything is installed.
	if out, err := lab.Run(l.Server, daemonBin, "-check", "-config", cfg); err != nil || !strings.Contains(out, "warning: "+cfg+": attach: no `jump nftknock` in chain input") {
		t.Errorf("-check on a ruleset without the jump: %v\n%s", err, out)
	}
	d := startDaemonToKill(t, l, daemonBin, cfg)
	if !containsAll(d.Log(), "your ruleset does not jump to nftknock's chain", `"chain": "nftknock"`, `"from": "input"`) {
		t.Errorf("started without the jump, the daemon did not say so:\n%s", d.Log())
	}
	mark := markLog(d)
	if err := neighbours.LoadRuleset(l.Server, neighbours.AttachedAdminRuleset); err != nil {
		t.Fatal(err)
	}
	mark.wait(t, 5*time.Second, "your ruleset jumps to nftknock's chain again")
	if out, err := lab.Run(l.Server, daemonBin, "-check", "-config", cfg); err != nil || strings.Contains(out, "attach:") {
		t.Errorf("-check on a ruleset with the jump: %v\n%s", err, out)
	}
	adminChain := func() string {
		out, err := lab.Run(l.Server, "nft", "list", "chain", "inet", "filter", "input")
		if err != nil {
			t.Fatal(err)
		}
		return counterRE.ReplaceAllString(out, "")
	}
	before := adminChain()
	if tables, _ := lab.Run(l.Server, "nft", "list", "tables"); strings.TrimSpace(tables) != "table inet filter" {
		t.Errorf("nft list tables: %q, want the admin's table alone", tables)
	}

	mustFiltered(t, l, lab.ClientV4, ssh4)
	mustFiltered(t, l, lab.ClientV6, ssh6)
	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	mustKnock(t, l, true, 0, "7000", "8000:udp", "9000")
	mustOpen(t, l, lab.ClientV4, ssh4)
	mustOpen(t, l, lab.ClientV6, ssh6)
	mustFiltered(t, l, lab.Client2V4, ssh4)
	mustFiltered(t, l, lab.Client2V6, ssh6)
	if got := adminChain(); got != before {
		t.Errorf("the admin's input chain changed:\n%s\nwant\n%s", got, before)
	}
	if n := rulePackets(t, l, []string{"inet", "filter", "nftknock"}, "dport 22", "@nftknock_ssh_v4", "accept"); n == 0 {
		t.Error("nftknock's accept for knocked IPv4 sources counted no packet")
	}
	status, code := runNftknock(t, l, "status", "-config", cfg)
	if code != 0 || !strings.Contains(status, "chain nftknock in table inet filter: installed; doors: ssh") ||
		!strings.Contains(status, "jump: `jump nftknock` is rule 1 of") || !strings.Contains(status, lab.ClientV4.String()) {
		t.Errorf("nftknock status: exit %d:\n%s", code, status)
	}

	// nft -f of the admin's file: healed, grants kept.
	left := attachedElement(t, l, "ssh_v4", lab.ClientV4).Expires
	mark = markLog(d)
	if err := neighbours.LoadRuleset(l.Server, neighbours.AttachedAdminRuleset); err != nil {
		t.Fatal(err)
	}
	mark.wait(t, 5*time.Second, "re-installed with 2 live grants restored")
	if e := attachedElement(t, l, "ssh_v4", lab.ClientV4); e.Expires > left || e.Timeout != 12*time.Second {
		t.Errorf("after nft -f: %+v, want the 12s grant with at most %v left", e, left)
	}
	attachedElement(t, l, "ssh_v6", lab.ClientV6)
	mustOpen(t, l, lab.ClientV4, ssh4)
	mustOpen(t, l, lab.ClientV6, ssh6)
	mustFiltered(t, l, lab.Client2V4, ssh4)

	// A restart keeps the grants, with the time they had left.
	left = attachedElement(t, l, "ssh_v4", lab.ClientV4).Expires
	if err := d.Stop(); err != nil {
		t.Fatalf("SIGTERM: want exit 0: %v", err)
	}
	d = startDaemon(t, l, cfg)
	if e := attachedElement(t, l, "ssh_v4", lab.ClientV4); e.Expires > left || e.Timeout != 12*time.Second {
		t.Errorf("after a restart: %+v, want the 12s grant with at most %v left", e, left)
	}
	mustOpen(t, l, lab.ClientV4, ssh4)

	// Their file without the jump: the daemon and status say so, and
	// nothing is gated or heard (22 is dropped by their policy, the knock
	// opens nothing).
	mark = markLog(d)
	if err := neighbours.LoadRuleset(l.Server, noJump); err != nil {
		t.Fatal(err)
	}
	mark.wait(t, 5*time.Second, "your ruleset does not jump to nftknock's chain", `"from": "input"`)
	status, _ = runNftknock(t, l, "status", "-config", cfg)
	if !strings.Contains(status, "jump MISSING: no `jump nftknock` in chain input") {
		t.Errorf("nftknock status without the jump:\n%s", status)
	}
	mark = markLog(d)
	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	time.Sleep(300 * time.Millisecond)
	if strings.Contains(mark.since(), "knock stage reached") {
		t.Errorf("a knock was heard without the jump:\n%s", mark.since())
	}
	mark = markLog(d)
	if err := neighbours.LoadRuleset(l.Server, neighbours.AttachedAdminRuleset); err != nil {
		t.Fatal(err)
	}
	mark.wait(t, 5*time.Second, "your ruleset jumps to nftknock's chain again")
	mustOpen(t, l, lab.ClientV4, ssh4)

	// After open_for, closed again.
	time.Sleep(attachedElement(t, l, "ssh_v4", lab.ClientV4).Expires + 500*time.Millisecond)
	mustFiltered(t, l, lab.ClientV4, ssh4)
}
