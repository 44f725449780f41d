package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nftknock/nftknock/integration/lab"
)

// scanDoors are two doors whose knocks ascend, so that a scan walking the
// ports in order hits every step in order: one all TCP, one all UDP (on
// the same port numbers). knockd opens both to such a scan.
const scanDoors = `
[[door]]
name = "tcp"
sequence = ["7000:tcp", "8000:tcp", "9000:tcp"]
seq_timeout = "5s"
open = ["22:tcp"]
open_for = "30s"

[[door]]
name = "udp"
sequence = ["7000:udp", "8000:udp", "9000:udp"]
seq_timeout = "5s"
open = ["22:tcp"]
open_for = "30s"
`

// TestOrderedScanDoesNotOpen: port scanners and packet generators
// that walk 6990-9010 in ascending order — and so reach 7000, 8000 and
// 9000 in order, within seq_timeout — open nothing, over TCP and UDP, IPv4
// and IPv6: each scan's first probe to a port past 7000 resets the
// source's knock. A real knock afterwards opens as usual.
func TestOrderedScanDoesNotOpen(t *testing.T) {
	needTools(t, "nmap", "hping3")
	l := newLab(t)
	// The kernel's ICMP rate limits would slow nmap's UDP scans (it backs
	// off when port unreachables go missing) and make it lump most ports
	// together as open|filtered; these sysctls are the lab namespace's.
	if _, err := lab.Run(l.Server, "sysctl", "-q", "-w", "net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0",
		"net.ipv4.icmp_msgs_per_sec=1000000", "net.ipv4.icmp_msgs_burst=1000000"); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, l, writeConfig(t, "", scanDoors))

	s4, s6 := lab.ServerV4.String(), lab.ServerV6.String()
	nmap := func(args ...string) []string {
		return append([]string{"nmap", "-n", "-Pn", "-r", "--max-retries", "0", "-T4", "-p", "6990-9010"}, args...)
	}
	for _, sc := range []struct {
		name string
		door string
		v6   bool
		argv []string
		// filtered is how the scanner reports a knock port, if it
		// reports one (it must not see it closed or open).
		filtered string
	}{
		{"nmap SYN scan", "tcp", false, nmap("-sS", s4), "filtered"},
		{"nmap connect scan", "tcp", false, nmap("-sT", s4), "filtered"},
		{"hping3 SYNs to ascending ports", "tcp", false, []string{"hping3", "-q", "-S", "-p", "++6990", "-c", "2021", "-i", "u400", s4}, ""},
		{"nmap SYN scan, IPv6", "tcp", true, nmap("-6", "-sS", s6), "filtered"},
		{"nmap connect scan, IPv6", "tcp", true, nmap("-6", "-sT", s6), "filtered"},
		{"nmap UDP scan", "udp", false, nmap("-sU", s4), "open|filtered"},
		{"nmap UDP scan, IPv6", "udp", true, nmap("-6", "-sU", s6), "open|filtered"},
		{"hping3 UDP to ascending ports", "udp", false, []string{"hping3", "-q", "--udp", "-p", "++6990", "-c", "2021", "-i", "u400", s4}, ""},
	} {
		t.Run(strings.ReplaceAll(sc.name, " ", "_"), func(t *testing.T) {
			src, ssh := lab.ClientV4, ssh4
			if sc.v6 {
				src, ssh = lab.ClientV6, ssh6
			}
			proto := sc.door // the doors are named after their protocol
			m := markLog(d)
			out := runClient(t, l, sc.argv...)
			if sc.filtered != "" {
				for _, port := range []string{"7000", "8000", "9000"} {
					re := regexp.MustCompile(`(?m)^` + port + "/" + proto + `\s+(\S+)`)
					if got := re.FindStringSubmatch(out); got == nil || got[1] != sc.filtered {
						t.Errorf("%s reports knock port %s/%s as %v, want %s:\n%s", sc.argv[0], port, proto, got, sc.filtered, out)
					}
				}
			}
			// The scan did knock: its probe to 7000 was step 1 (else
			// this test would prove nothing: "after_steps": 1), and the
			// next probe, to 7001, broke the knock off.
			m.wait(t, 2*time.Second, "knock reset: connection to another port", fmt.Sprintf(`"door": %q`, sc.door),
				fmt.Sprintf(`"source": %q`, src), fmt.Sprintf(`"got": "7001:%s"`, proto), `"after_steps": 1`)
			mustFiltered(t, l, src, ssh)
			if opened := m.lines("door opened"); len(opened) > 0 {
				t.Errorf("the scan opened a door: %q", opened)
			}
			if reached := m.lines("knock stage reached", `"step": "2/3"`); len(reached) > 0 {
				t.Errorf("the scan got past step 1: %q", reached)
			}
			for _, set := range []string{"tcp_v4", "tcp_v6", "udp_v4", "udp_v6"} {
				noElements(t, l, set)
			}
		})
	}

	// A real knock still opens, on either door, from the scanning source.
	mustKnock(t, l, false, 0, "7000", "8000", "9000")
	mustOpen(t, l, lab.ClientV4, ssh4)
	element(t, l, "tcp_v4", lab.ClientV4)
	mustKnock(t, l, true, 0, "7000:udp", "8000:udp", "9000:udp")
	mustOpen(t, l, lab.ClientV6, ssh6)
	element(t, l, "udp_v6", lab.ClientV6)
}

// TestOrderedScanDuringFlood: the same ordered scan opens nothing
// when a flood of spoofed sources has just hit the first knock port — the
// hostile network the issue describes can do both. A 3 s burst of hping3
// --flood --rand-source (about 60k sources a second) fills the kernel's
// set of knocking sources, whose elements then live for seq_timeout; the
// flood is stopped and the daemon left to catch up, so that the scan that
// follows reaches it whole. A scan whose probe to 7000 the daemon counted
// as a first step must also have its next probe, to 7001, seen as a
// reset, and must not open the door.
func TestOrderedScanDuringFlood(t *testing.T) {
	needTools(t, "nmap", "hping3")
	l := newLab(t)
	d := startDaemon(t, l, writeConfig(t, "", `
[[door]]
name = "tcp"
sequence = ["7000:tcp", "8000:tcp", "9000:tcp"]
seq_timeout = "20s"
open = ["22:tcp"]
open_for = "30s"
`))
	stopFlood := startFlood(t, l, 7000)
	time.Sleep(3 * time.Second)
	t.Logf("flood: %s", stopFlood())
	time.Sleep(2 * time.Second) // for the daemon to work through its backlog
	knocking, err := lab.Run(l.Server, "nft", "list", "set", "inet", "nftknock", "knocking_v4")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("knocking_v4 holds %d sources after the flood", strings.Count(knocking, "expires"))

	scanner := fmt.Sprintf(`"source": %q`, lab.ClientV4)
	m := markLog(d)
	out := runClient(t, l, "nmap", "-n", "-Pn", "-r", "--max-retries", "0", "-T4", "-p", "6990-9010", "-sS", lab.ServerV4.String())
	if !strings.Contains(out, "7000/tcp filtered") {
		t.Fatalf("nmap did not reach 7000 (the test would prove nothing):\n%s", out)
	}
	time.Sleep(500 * time.Millisecond)
	knocking, _ = lab.Run(l.Server, "nft", "list", "set", "inet", "nftknock", "knocking_v4")
	t.Logf("after the scan: knocking_v4 holds %d sources, the scanner among them: %v; the daemon on the scanner: %q",
		strings.Count(knocking, "expires"), strings.Contains(knocking, lab.ClientV4.String()+" "), m.lines(scanner))
	if got := m.lines("door opened", scanner); len(got) > 0 {
		t.Errorf("an ordered scan after a flood opened the door: %q", got)
	}
	if els, err := l.Elements("nftknock", "tcp_v4"); err != nil || len(els) > 0 {
		t.Errorf("an ordered scan after a flood opened the door: tcp_v4 holds %v (%v)", els, err)
	}
	// While the flood keeps knock_first full, the scan's probes between
	// 7000 and 8000 go unwatched; from 8000 on it is in knocking, and its
	// probe to 8001 must break the knock off.
	if len(m.lines("knock stage reached", scanner, `"step": "2/3"`)) > 0 &&
		len(m.lines("knock reset: connection to another port", scanner, `"got": "8001:tcp"`)) == 0 {
		t.Errorf("the scan reached step 2 at 8000, but its probe to 8001 did not reset it")
	}
}

// startFlood starts `hping3 -S --rand-source` at port on the server, from
// the client namespace, for at most 30 s, at rate (hping3's options; by
// default --flood, as fast as it can). The returned
// function stops it (it is also stopped when the test ends) and returns
// hping3's statistics.
func startFlood(t testing.TB, l *lab.Lab, port int, rate ...string) func() string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	argv := []string{"hping3", "-q", "-S", "--rand-source", "-p", fmt.Sprint(port)}
	if len(rate) == 0 {
		rate = []string{"--flood"}
	}
	argv = append(append(argv, rate...), lab.ServerV4.String())
	cmd := lab.Command(ctx, l.Client, argv...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) } // for its statistics
	cmd.WaitDelay = 3 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	stop := sync.OnceValue(func() string {
		cancel()
		cmd.Wait()
		return strings.TrimSpace(out.String())
	})
	t.Cleanup(func() { stop() })
	return stop
}
