package integration

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nftknock/nftknock/integration/lab"
)

// knockClientConfig has three doors on port 22: "mix" mixes TCP, UDP and
// ICMP steps (which knock(1) cannot send), "udp" is UDP only (knock -u),
// "plain" is what knock(1) can send without -u.
const knockClientConfig = `
[[door]]
name = "mix"
sequence = ["7000:tcp", "8000:udp", "900:icmp", "9000:tcp"]
seq_timeout = "5s"
open = ["22:tcp"]
open_for = "30s"

[[door]]
name = "udp"
sequence = ["7100:udp", "7200:udp", "7300:udp"]
seq_timeout = "5s"
open = ["22:tcp"]
open_for = "30s"

[[door]]
name = "plain"
sequence = ["7400:tcp", "7500:udp", "7600:tcp"]
seq_timeout = "5s"
open = ["22:tcp"]
open_for = "30s"
`

type knockFamily struct {
	name   string
	server netip.Addr
	client netip.Addr
	ssh    netip.AddrPort
	sfx    string // of the door's set
	flag   string // the family flag, long or short: both are knock(1)'s
}

var knockFamilies = []knockFamily{
	{"v4", lab.ServerV4, lab.ClientV4, ssh4, "_v4", "-4"},
	{"v6", lab.ServerV6, lab.ClientV6, ssh6, "_v6", "--ipv6"},
}

// runKnock runs argv in the client namespace and returns its combined
// output and exit code.
func runKnock(t *testing.T, l *lab.Lab, argv ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := lab.Command(ctx, l.Client, argv...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	return "", 0
}

// opensAndRevoke checks that the door let the family's client in, then
// takes the grant away so that the next knock starts from closed.
func opensAndRevoke(t *testing.T, l *lab.Lab, f knockFamily, door string) {
	t.Helper()
	mustOpen(t, l, f.client, f.ssh)
	element(t, l, door+f.sfx, f.client)
	revoke(t, l, door+f.sfx, f.client)
	mustFiltered(t, l, f.client, f.ssh)
}

// opensNothing checks that no door let the family's client in.
func opensNothing(t *testing.T, l *lab.Lab, f knockFamily) {
	t.Helper()
	mustFiltered(t, l, f.client, f.ssh)
	for _, door := range []string{"mix", "udp", "plain"} {
		noElements(t, l, door+f.sfx)
	}
}

// TestKnockClient: `nftknock knock` opens doors over IPv4 and IPv6 with
// TCP, UDP and ICMP steps mixed, -u makes bare ports UDP, a wrong order
// opens nothing, knock(1)'s command lines open the same doors with it as
// with knock(1), and without a raw socket an ICMP step goes through a ping
// socket when net.ipv4.ping_group_range allows one.
func TestKnockClient(t *testing.T) {
	l := newLab(t)
	d := startDaemon(t, l, writeConfig(t, "", knockClientConfig))
	bin := nftknockBin(t)
	nftknock := func(args ...string) []string { return append([]string{bin, "knock"}, args...) }

	for _, f := range knockFamilies {
		t.Run("tcp udp icmp mixed/"+f.name, func(t *testing.T) {
			opensNothing(t, l, f)
			out := runClient(t, l, nftknock("-v", f.flag, f.server.String(), "7000", "8000:udp", "900:icmp", "9000:tcp")...)
			hit := func(proto string, port uint16) string {
				return fmt.Sprintf("hitting %s %s", proto, netip.AddrPortFrom(f.server, port))
			}
			want := strings.Join([]string{hit("tcp", 7000), hit("udp", 8000),
				fmt.Sprintf("hitting icmp %s echo request, 900 bytes of payload", f.server), hit("tcp", 9000)}, "\n") + "\n"
			if out != want {
				t.Errorf("-v printed\n%s\nwant\n%s", out, want)
			}
			opensAndRevoke(t, l, f, "mix")
		})
	}

	for _, f := range knockFamilies {
		t.Run("-u makes bare ports udp/"+f.name, func(t *testing.T) {
			// Without -u the same ports are TCP knocks, on no door.
			runClient(t, l, nftknock(f.server.String(), "7100", "7200", "7300")...)
			opensNothing(t, l, f)
			runClient(t, l, nftknock("-u", f.server.String(), "7100", "7200", "7300")...)
			opensAndRevoke(t, l, f, "udp")
			// A step that names its protocol keeps it under -u.
			runClient(t, l, nftknock("-u", f.server.String(), "7400:tcp", "7500", "7600:tcp")...)
			opensAndRevoke(t, l, f, "plain")
		})
	}

	for _, f := range knockFamilies {
		t.Run("wrong order opens nothing/"+f.name, func(t *testing.T) {
			m := markLog(d)
			for _, seq := range [][]string{
				{"9000", "900:icmp", "8000:udp", "7000"},
				{"7000", "8000:udp", "901:icmp", "9000"}, // an echo one byte too big is no knock
				{"7000", "8000:tcp", "900:icmp", "9000"}, // right port, wrong protocol
				{"7000", "8000:udp", "9000", "900:icmp"},
			} {
				runClient(t, l, nftknock(append([]string{f.server.String()}, seq...)...)...)
				opensNothing(t, l, f)
			}
			m.wait(t, time.Second, "knock reset: wrong knock", `"door": "mix"`, f.client.String(), `"got": "9000:tcp"`, `"want": "900:icmp"`)
			if got := m.lines("door opened"); len(got) > 0 {
				t.Errorf("door opened: %q", got)
			}
		})
	}

	// The same command line, for knock(1) and for `nftknock knock`: each
	// opens the door, or neither does. -v prints the same, but that
	// knock(1) leaves an IPv6 address unbracketed before ":port".
	for _, f := range knockFamilies {
		t.Run("same as knock(1)/"+f.name, func(t *testing.T) {
			host := f.server.String()
			for _, c := range []struct {
				door string // "" for none
				args []string
			}{
				{"plain", []string{host, "7400", "7500:udp", "7600"}},
				{"plain", []string{"-d", "100", host, "7400:tcp", "7500:udp", "7600:tcp"}},
				{"plain", []string{host, "--delay", "100", "7400", "7500:udp", "7600"}},
				{"udp", []string{"-u", host, "7100", "7200", "7300"}},
				{"udp", []string{"--udp", f.flag, host, "7100", "7200:udp", "7300"}},
				{"", []string{host, "7600", "7500:udp", "7400"}},
				{"", []string{host, "7400", "7500", "7600"}}, // 7500 is TCP
			} {
				var outs []string
				for _, argv := range [][]string{
					append([]string{"knock", "-v"}, c.args...),
					nftknock(append([]string{"-v"}, c.args...)...),
				} {
					outs = append(outs, runClient(t, l, argv...))
					if c.door == "" {
						opensNothing(t, l, f)
					} else {
						opensAndRevoke(t, l, f, c.door)
					}
				}
				stock := outs[0]
				if f.server.Is6() {
					stock = strings.ReplaceAll(stock, " "+host+":", " ["+host+"]:")
				}
				if stock != outs[1] || strings.Count(outs[1], "hitting") != 3 {
					t.Errorf("%v: knock -v printed\n%s\nnftknock knock -v printed\n%s", c.args, outs[0], outs[1])
				}
			}
		})
	}

	// Without CAP_NET_RAW (setpriv drops it from root's bounding set, so
	// the client runs as root without it), an ICMP step needs a ping
	// socket: refused while the client namespace's ping_group_range
	// (default "1 0") lets no group open one, used once it lets root's.
	t.Run("icmp through a ping socket", func(t *testing.T) {
		needTools(t, "setpriv", "sysctl")
		noRaw := func(f knockFamily) []string {
			return append([]string{"setpriv", "--bounding-set", "-net_raw"},
				nftknock(f.server.String(), "7000", "8000:udp", "900:icmp", "9000")...)
		}
		for _, f := range knockFamilies {
			out, code := runKnock(t, l, noRaw(f)...)
			if code != 1 || !strings.Contains(out, "knock 3 of 4 (900:icmp)") || !strings.Contains(out, "net.ipv4.ping_group_range") {
				t.Errorf("%s without a raw or ping socket: exit %d, %q; want exit 1 and what to do", f.name, code, out)
			}
			opensNothing(t, l, f)
		}
		runClient(t, l, "sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 0")
		for _, f := range knockFamilies {
			runClient(t, l, noRaw(f)...)
			opensAndRevoke(t, l, f, "mix")
		}
	})
}
