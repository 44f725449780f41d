package integration

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nftknock/nftknock/integration/lab"
)

// everyModeConfig has a door of each of knockd's kinds, each with knock
// ports of its own: a close sequence, tcp_flags, a one-time file,
// open_to = "anyone", always_allow, an interface, ICMP steps, a port range.
func everyModeConfig(t *testing.T) string {
	oneTime := filepath.Join(t.TempDir(), "one-time")
	// The probes below must not use the sequence up (the door would then
	// stop knocking on those ports): its last step is a ping they do not send.
	if err := os.WriteFile(oneTime, []byte("7300:tcp,7400:udp,1200:icmp\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`
[[door]]
name = "plain"
sequence = ["7000:tcp", "8000:udp", "9000:tcp"]
close_sequence = ["9100:tcp", "9200:udp"]
seq_timeout = "5s"
open = ["22:tcp", "60000-61000:udp"]
open_for = "30s"
always_allow = ["192.0.2.3/32", "2001:db8::3"]

[[door]]
name = "fin"
sequence = ["7100:tcp", "7200:tcp"]
tcp_flags = "fin"
seq_timeout = "5s"
open = ["22:tcp"]
open_for = "30s"

[[door]]
name = "ot"
one_time_sequences = %q
seq_timeout = "5s"
open = ["22:tcp"]
open_for = "30s"

[[door]]
name = "anyone"
sequence = ["7500:udp", "7600:tcp"]
seq_timeout = "5s"
open = ["23:tcp"]
open_to = "anyone"
open_for = "30s"

[[door]]
name = "iface"
sequence = ["7700:tcp", "7800:udp"]
interface = "nosuch0"
seq_timeout = "5s"
open = ["22:tcp"]
open_for = "30s"

[[door]]
name = "icmp"
sequence = ["1000:icmp", "7900:tcp", "700:icmp"]
seq_timeout = "5s"
open = ["22:tcp"]
open_for = "30s"
`, oneTime)
}

// The knock ports of everyModeConfig.
var (
	silentTCP  = []uint16{7000, 9000, 9100, 7100, 7200, 7300, 7600, 7700, 7900}
	silentUDP  = []uint16{8000, 9200, 7400, 7500, 7800}
	silentICMP = []int{1000, 700}
)

// TestKnockPortsNeverAnswer: a knock port looks filtered, never
// closed, whatever the door's mode: a TCP connect gets no reset (it times
// out), a UDP datagram no ICMP port unreachable, an ICMP knock no echo
// reply — over IPv4 and IPv6, to a source with no grant and to one the
// door has just opened to; nmap's SYN, ACK, FIN and UDP scans call the
// ports filtered. The same probes to ports next to them, which no rule
// covers, are answered: the probes can tell.
func TestKnockPortsNeverAnswer(t *testing.T) {
	needTools(t, "nmap", "ping")
	l := newLab(t)
	d := startDaemon(t, l, writeConfig(t, "", everyModeConfig(t)))

	probe := func(t *testing.T) {
		var wg sync.WaitGroup
		for _, v6 := range []bool{false, true} {
			src, dst := lab.ClientV4, lab.ServerV4
			if v6 {
				src, dst = lab.ClientV6, lab.ServerV6
			}
			for _, p := range silentTCP {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := l.Filtered(src, netip.AddrPortFrom(dst, p), time.Second); err != nil {
						t.Errorf("knock port %d/tcp: %v", p, err)
					}
				}()
			}
			for _, p := range silentUDP {
				wg.Add(1)
				go func() {
					defer wg.Done()
					got, err := l.UDPExchange(src, netip.AddrPortFrom(dst, p), time.Second)
					if err != nil || got != lab.UDPNoAnswer {
						t.Errorf("knock port %d/udp from %s: %v %v, want no answer", p, src, got, err)
					}
				}()
			}
			for _, size := range silentICMP {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if replied, err := l.Ping(v6, size, time.Second); err != nil || replied {
						t.Errorf("ping -s %d (v6 %v), an ICMP knock: reply %v %v, want none", size, v6, replied, err)
					}
				}()
			}
			// Controls: neighbours of knock ports that no rule covers
			// answer (reset, port unreachable, echo reply).
			wg.Add(3)
			go func() {
				defer wg.Done()
				if err := l.Filtered(src, netip.AddrPortFrom(dst, 7001), time.Second); err == nil || !strings.Contains(err.Error(), "refused") {
					t.Errorf("control 7001/tcp: %v, want refused", err)
				}
			}()
			go func() {
				defer wg.Done()
				if got, err := l.UDPExchange(src, netip.AddrPortFrom(dst, 8001), 2*time.Second); err != nil || got != lab.UDPRefused {
					t.Errorf("control 8001/udp: %v %v, want refused", got, err)
				}
			}()
			go func() {
				defer wg.Done()
				if replied, err := l.Ping(v6, 1001, 2*time.Second); err != nil || !replied {
					t.Errorf("control ping -s 1001 (v6 %v): reply %v %v, want one", v6, replied, err)
				}
			}()
		}
		wg.Wait()
	}

	t.Run("no_grant", probe)

	// nmap's view; 7001/tcp and 8001/udp are controls.
	var ports []string
	for _, p := range silentTCP {
		ports = append(ports, fmt.Sprintf("T:%d", p))
	}
	for _, p := range silentUDP {
		ports = append(ports, fmt.Sprintf("U:%d", p))
	}
	ports = append(ports, "T:7001", "U:8001")
	for _, sc := range []struct {
		scans []string
		v6    bool
		// what nmap calls a knock port, and the control, per protocol
		tcp, tcpControl, udp, udpControl string
	}{
		{[]string{"-sS", "-sU"}, false, "filtered", "closed", "open|filtered", "closed"},
		{[]string{"-sS", "-sU"}, true, "filtered", "closed", "open|filtered", "closed"},
		{[]string{"-sA"}, false, "filtered", "unfiltered", "", ""},
		{[]string{"-sF"}, false, "open|filtered", "closed", "", ""},
	} {
		t.Run(fmt.Sprintf("nmap%s_v6=%v", strings.Join(sc.scans, ""), sc.v6), func(t *testing.T) {
			argv := append([]string{"nmap", "-n", "-Pn", "--max-retries", "1", "--max-rtt-timeout", "300ms", "--host-timeout", "20s", "-T4",
				"-p", strings.Join(ports, ",")}, sc.scans...)
			target := lab.ServerV4.String()
			if sc.v6 {
				argv, target = append(argv, "-6"), lab.ServerV6.String()
			}
			out := runClient(t, l, append(argv, target)...)
			check := func(port, proto, want string) {
				if got := nmapState(out, port, proto); got != want {
					t.Errorf("nmap %s: port %s/%s is %q, want %q", sc.scans, port, proto, got, want)
				}
			}
			for _, p := range silentTCP {
				check(fmt.Sprint(p), "tcp", sc.tcp)
			}
			check("7001", "tcp", sc.tcpControl)
			if sc.udp != "" {
				for _, p := range silentUDP {
					check(fmt.Sprint(p), "udp", sc.udp)
				}
				check("8001", "udp", sc.udpControl)
			}
			if t.Failed() {
				t.Log(out)
			}
		})
	}

	// Knock the plain door open for both families (and wait out the
	// per-source knock rate limit the probes above may have used up).
	time.Sleep(time.Second)
	m := markLog(d)
	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	mustKnock(t, l, true, 0, "7000", "8000:udp", "9000")
	mustOpen(t, l, lab.ClientV4, ssh4)
	mustOpen(t, l, lab.ClientV6, ssh6)
	m.wait(t, time.Second, "door opened", `"door": "plain"`)
	t.Run("granted", probe)
}

// nmapState is the state nmap's normal output gives port/proto, or "".
func nmapState(out, port, proto string) string {
	m := regexp.MustCompile(`(?m)^` + port + "/" + proto + `\s+(\S+)`).FindStringSubmatch(out)
	if m == nil {
		return ""
	}
	return m[1]
}
