package integration

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nftknock/nftknock/integration/lab"
	"github.com/nftknock/nftknock/integration/nstest"
)

// fwknopAccessConf is an fwknopd access.conf of two stanzas with their own
// keys and ports, as an admin who switches has it.
func fwknopAccessConf(a, b lab.FwknopKeys) string {
	return fmt.Sprintf(`# Two stanzas, two key pairs, two ports.
SOURCE                  ANY
OPEN_PORTS              tcp/22
KEY_BASE64              %s
HMAC_KEY_BASE64         %s
FW_ACCESS_TIMEOUT       3
MAX_FW_TIMEOUT          10
REQUIRE_SOURCE_ADDRESS  Y

SOURCE                  ANY
OPEN_PORTS              tcp/2222
KEY_BASE64              %s
HMAC_KEY_BASE64         %s
FW_ACCESS_TIMEOUT       3
`, a.Enc, a.HMAC, b.Enc, b.HMAC)
}

const fwknopdConf = "PCAP_FILTER                 udp port 62201;\nMAX_SPA_PACKET_AGE          60;\n"

// migrateFwknop runs `nftknock migrate -fwknop` on access and fwknopd.conf
// texts, with its keys in dir, and returns the config it printed, written
// to a 0600 file that `nftknockd -check` accepts.
func migrateFwknop(t *testing.T, dir, access, daemon string) string {
	t.Helper()
	accessPath, daemonPath := filepath.Join(dir, "access.conf"), filepath.Join(dir, "fwknopd.conf")
	for p, text := range map[string]string{accessPath: access, daemonPath: daemon} {
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(nftknockBin(t), "migrate", "-fwknop", accessPath, "-fwknopd-conf", daemonPath, "-keys-dir", filepath.Join(dir, "keys"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nftknock migrate -fwknop: %v\n%s", err, stderr.String())
	}
	t.Logf("nftknock migrate -fwknop: stderr:\n%s", stderr.String())
	cfg := writeConfig(t, filepath.Join(dir, "nftknock.toml"), string(out))
	if out, err := exec.Command(daemonBin, "-check", "-config", cfg).CombinedOutput(); err != nil {
		t.Fatalf("nftknockd -check on the migrated config: %v\n%s", err, out)
	}
	return cfg
}

var portElementRE = regexp.MustCompile(`([0-9a-f.:]+ \. (?:tcp|udp) \. \d+) timeout ([0-9a-z]+) expires`)

// portElements lists a per-port grant set's live elements as `nft list
// set` shows them: "192.0.2.2 . tcp . 22 timeout 3s".
func portElements(t *testing.T, l *lab.Lab, set string) []string {
	t.Helper()
	out, err := lab.Run(l.Server, "nft", "list", "set", "inet", "nftknock", set)
	if err != nil {
		t.Fatal(err)
	}
	var els []string
	for _, m := range portElementRE.FindAllStringSubmatch(out, -1) {
		els = append(els, m[1]+" timeout "+m[2])
	}
	return els
}

// waitFiltered waits until from can no longer reach to: a grant ran out,
// or a restarted Docker put its rules back.
func waitFiltered(t *testing.T, l *lab.Lab, from netip.Addr, to netip.AddrPort, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for l.Filtered(from, to, filteredWait) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("%s → %s still open after %s", from, to, within)
		}
	}
}

// TestFwknopClient: an fwknopd access.conf of two stanzas, converted with
// `nftknock migrate -fwknop`, serves the stock fwknop client (Debian's
// fwknop-client 2.6.10) unchanged: each stanza's key opens its own port,
// for the address the request names, alone, for FW_ACCESS_TIMEOUT or the
// client's -f capped at MAX_FW_TIMEOUT; and each packet that must open
// nothing opens nothing and is logged with its reason.
func TestFwknopClient(t *testing.T) {
	nstest.Require(t, "fwknop")
	l := newLab(t)
	echo(t, l, 2222)
	dir := t.TempDir()
	home := filepath.Join(dir, "home") // the client's HOME
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	var keys [3]lab.FwknopKeys
	for i := range keys {
		var err error
		if keys[i], err = lab.FwknopKeyGen(home); err != nil {
			t.Fatal(err)
		}
	}
	a, b, stranger := keys[0], keys[1], keys[2]
	d := startDaemon(t, l, migrateFwknop(t, dir, fwknopAccessConf(a, b), fwknopdConf))
	// fwknop's timestamps are whole seconds; one from the second the daemon
	// started in may be from before it, which the replay cache refuses.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(1100 * time.Millisecond)))

	server := lab.ServerV4.String()
	fwknop := func(t *testing.T, k lab.FwknopKeys, args ...string) {
		t.Helper()
		if out, err := l.Fwknop(home, append(append(args, "-D", server), k.Args()...)...); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	ssh2222 := netip.AddrPortFrom(lab.ServerV4, 2222)
	spa4 := netip.AddrPortFrom(lab.ServerV4, 62201)

	t.Run("each stanza's key opens its own port", func(t *testing.T) {
		mustFiltered(t, l, lab.ClientV4, ssh4)
		mustFiltered(t, l, lab.ClientV4, ssh2222)
		m := markLog(d)
		fwknop(t, a, "-A", "tcp/22", "-a", lab.ClientV4.String())
		mustOpen(t, l, lab.ClientV4, ssh4)
		mustFiltered(t, l, lab.ClientV4, ssh2222)
		m.wait(t, time.Second, "fwknop SPA request accepted", `"door": "fw"`, `"user": "root"`, `"for": "192.0.2.2"`, `"ports": ["22:tcp"]`)
		if got := portElements(t, l, "fw_v4"); len(got) != 1 || got[0] != "192.0.2.2 . tcp . 22 timeout 3s" {
			t.Errorf("fw_v4 holds %q", got)
		}

		fwknop(t, b, "-A", "tcp/2222", "-a", lab.Client2V4.String())
		mustOpen(t, l, lab.Client2V4, ssh2222)
		mustFiltered(t, l, lab.Client2V4, ssh4)
		if got := portElements(t, l, "fw_2_v4"); len(got) != 1 || got[0] != "192.0.2.3 . tcp . 2222 timeout 3s" {
			t.Errorf("fw_2_v4 holds %q", got)
		}
		out, _ := runNftknock(t, l, "status")
		if !regexp.MustCompile(`fw +192\.0\.2\.2 +22:tcp +\d`).MatchString(out) || !regexp.MustCompile(`fw_2 +192\.0\.2\.3 +2222:tcp +\d`).MatchString(out) {
			t.Errorf("nftknock status:\n%s", out)
		}
		// FW_ACCESS_TIMEOUT: the kernel closes them again.
		waitFiltered(t, l, lab.ClientV4, ssh4, 5*time.Second)
		waitFiltered(t, l, lab.Client2V4, ssh2222, 2*time.Second)
	})

	t.Run("-f is capped by MAX_FW_TIMEOUT", func(t *testing.T) {
		fwknop(t, a, "-A", "tcp/22", "-a", lab.ClientV4.String(), "-f", "60")
		mustOpen(t, l, lab.ClientV4, ssh4)
		if got := portElements(t, l, "fw_v4"); len(got) != 1 || got[0] != "192.0.2.2 . tcp . 22 timeout 10s" {
			t.Errorf("-f 60 with MAX_FW_TIMEOUT 10: fw_v4 holds %q", got)
		}
		fwknop(t, b, "-A", "tcp/2222", "-a", lab.ClientV4.String(), "-f", "5")
		mustOpen(t, l, lab.ClientV4, ssh2222)
		if got := portElements(t, l, "fw_2_v4"); len(got) != 1 || got[0] != "192.0.2.2 . tcp . 2222 timeout 5s" {
			t.Errorf("-f 5 under MAX_FW_TIMEOUT's default 300: fw_2_v4 holds %q", got)
		}
		waitFiltered(t, l, lab.ClientV4, ssh4, 12*time.Second)
		waitFiltered(t, l, lab.ClientV4, ssh2222, time.Second)
	})

	t.Run("a captured packet resent opens nothing", func(t *testing.T) {
		p, err := l.FwknopPacket(home, append([]string{"-A", "tcp/2222", "-a", lab.ClientV4.String(), "-D", server}, b.Args()...)...)
		if err != nil {
			t.Fatal(err)
		}
		sendDatagram(t, l, lab.ClientV4, spa4, p)
		mustOpen(t, l, lab.ClientV4, ssh2222)
		waitFiltered(t, l, lab.ClientV4, ssh2222, 5*time.Second)
		m := markLog(d)
		sendDatagram(t, l, lab.ClientV4, spa4, p)
		m.wait(t, 2*time.Second, "fwknop SPA packet rejected: replay", `"door": "fw_2"`, `"user": "root"`, `"requested": ["tcp/2222"]`)
		mustFiltered(t, l, lab.ClientV4, ssh2222)
		if got := portElements(t, l, "fw_2_v4"); len(got) != 0 {
			t.Errorf("fw_2_v4 holds %q after the replay", got)
		}
	})

	flipped, err := l.FwknopPacket(home, append([]string{"-A", "tcp/22", "-a", lab.ClientV4.String(), "-D", server}, a.Args()...)...)
	if err != nil {
		t.Fatal(err)
	}
	// One bit of the ciphertext flipped: the base64 digit whose value
	// differs in its lowest bit.
	const b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	flipped[60] = b64[strings.IndexByte(b64, flipped[60])^1]
	wrongHMAC := lab.FwknopKeys{Enc: a.Enc, HMAC: stranger.HMAC}
	for _, c := range []struct {
		name   string
		keys   lab.FwknopKeys
		args   []string
		packet []byte // sent as it is, instead of running the client
		want   []string
	}{
		{"a port not in OPEN_PORTS", a, []string{"-A", "tcp/2222", "-a", lab.ClientV4.String()}, nil,
			[]string{"rejected: port not in open (OPEN_PORTS)", `"door": "fw"`, `"requested": ["tcp/2222"]`}},
		{"another stanza's port", b, []string{"-A", "tcp/22", "-a", lab.ClientV4.String()}, nil,
			[]string{"rejected: port not in open (OPEN_PORTS)", `"door": "fw_2"`, `"requested": ["tcp/22"]`}},
		{"one port of two not in OPEN_PORTS", a, []string{"-A", "tcp/22,tcp/2222", "-a", lab.ClientV4.String()}, nil,
			[]string{"rejected: port not in open (OPEN_PORTS)", `"door": "fw"`, `"requested": ["tcp/22", "tcp/2222"]`}},
		{"a wrong HMAC key", wrongHMAC, []string{"-A", "tcp/22", "-a", lab.ClientV4.String()}, nil,
			[]string{"rejected: HMAC mismatch", `"door": "fw,fw_2"`}},
		{"a key of no stanza", stranger, []string{"-A", "tcp/22", "-a", lab.ClientV4.String()}, nil,
			[]string{"rejected: HMAC mismatch", `"door": "fw,fw_2"`}},
		{"a flipped bit", a, nil, flipped, []string{"rejected: HMAC mismatch"}},
		{"a stale packet", a, []string{"-A", "tcp/22", "-a", lab.ClientV4.String(), "--time-offset-minus", "10m"}, nil,
			[]string{"rejected: stale", `"door": "fw"`, `"user": "root"`, `"sent": "`}},
		{"a packet from the future", a, []string{"-A", "tcp/22", "-a", lab.ClientV4.String(), "--time-offset-plus", "10m"}, nil,
			[]string{"rejected: stale", `"door": "fw"`}},
		{"a command message", a, []string{"--server-cmd", "touch /tmp/nftknock-fwknop-ran", "-a", lab.ClientV4.String()}, nil,
			[]string{"rejected: command message (--server-cmd): never run", `"door": "fw"`, `"user": "root"`}},
		{"a NAT message", a, []string{"-A", "tcp/22", "-a", lab.ClientV4.String(), "-N", "10.0.0.5:22"}, nil,
			[]string{"rejected: NAT access message", `"door": "fw"`}},
		{"-s where REQUIRE_SOURCE_ADDRESS", a, []string{"-A", "tcp/22", "-s"}, nil,
			[]string{"rejected: no address in the request (-s)", `"door": "fw"`}},
		{"-a not the source where REQUIRE_SOURCE_ADDRESS", a, []string{"-A", "tcp/22", "-a", lab.Client2V4.String()}, nil,
			[]string{"rejected: the requested address (-a) is not the packet's source", `"door": "fw"`, `"allow": "192.0.2.3"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := markLog(d)
			if c.packet != nil {
				sendDatagram(t, l, lab.ClientV4, spa4, c.packet)
			} else {
				fwknop(t, c.keys, c.args...)
			}
			m.wait(t, 2*time.Second, append([]string{"fwknop SPA packet rejected"}, c.want...)...)
			for _, from := range []netip.Addr{lab.ClientV4, lab.Client2V4} {
				mustFiltered(t, l, from, ssh4)
				mustFiltered(t, l, from, ssh2222)
			}
			if got := append(portElements(t, l, "fw_v4"), portElements(t, l, "fw_2_v4")...); len(got) != 0 {
				t.Errorf("the sets hold %q", got)
			}
			if n := len(m.lines("fwknop SPA request accepted")); n != 0 {
				t.Errorf("%d requests accepted", n)
			}
		})
	}
	if _, err := os.Stat("/tmp/nftknock-fwknop-ran"); err == nil {
		t.Error("a command message's command ran")
	}

	t.Run("IPv6", func(t *testing.T) {
		// The stock client refuses to send to an IPv6 address.
		out, err := l.Fwknop(home, append([]string{"-A", "tcp/2222", "-s", "-D", lab.ServerV6.String()}, b.Args()...)...)
		if err == nil || !strings.Contains(out, "Address family for hostname not supported") {
			t.Errorf("fwknop -D %s: %v\n%s", lab.ServerV6, err, out)
		}
		t.Logf("fwknop -D %s: %s", lab.ServerV6, strings.TrimSpace(out))
		// The packet it makes arrives over IPv6 all the same when sent
		// there: -s opens for the IPv6 source.
		p, err := l.FwknopPacket(home, append([]string{"-A", "tcp/2222", "-s", "-D", server}, b.Args()...)...)
		if err != nil {
			t.Fatal(err)
		}
		ssh2222v6 := netip.AddrPortFrom(lab.ServerV6, 2222)
		mustFiltered(t, l, lab.ClientV6, ssh2222v6)
		sendDatagram(t, l, lab.ClientV6, netip.AddrPortFrom(lab.ServerV6, 62201), p)
		mustOpen(t, l, lab.ClientV6, ssh2222v6)
		mustFiltered(t, l, lab.ClientV4, ssh2222)
		if got := portElements(t, l, "fw_2_v6"); len(got) != 1 || got[0] != "2001:db8::2 . tcp . 2222 timeout 3s" {
			t.Errorf("fw_2_v6 holds %q", got)
		}
	})
}
