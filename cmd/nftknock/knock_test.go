package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/integration/nstest"
)

// TestKnockRefused: what `nftknock knock` refuses, before sending anything
// (-v would have printed a line per knock sent): exit 2, a message that
// names the argument at fault, and the usage line.
func TestKnockRefused(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		stderr string
	}{
		{nil, "give HOST and at least one PORT"},
		{[]string{"192.0.2.1"}, `give at least one PORT to knock on after HOST "192.0.2.1"`},
		{[]string{"", "7000"}, "HOST is empty"},
		{[]string{"192.0.2.1", "7000", "70000"}, `PORT "70000": port 70000 is out of range 1-65535`},
		{[]string{"192.0.2.1", "0"}, `PORT "0": port 0 is out of range`},
		{[]string{"192.0.2.1", "7000", "ssh"}, `PORT "ssh": port is not a number`},
		{[]string{"192.0.2.1", "7000:sctp"}, `PORT "7000:sctp": protocol "sctp" is not tcp, udp or icmp`},
		{[]string{"192.0.2.1", "7000:"}, `PORT "7000:": protocol "" is not`},
		{[]string{"192.0.2.1", "65508:icmp"}, `PORT "65508:icmp": an icmp knock is the payload size of a ping, 0-65507`},
		{[]string{"-4", "2001:db8::1", "7000"}, `-4: HOST "2001:db8::1" is an IPv6 address`},
		{[]string{"--ipv4", "fe80::1%lo", "7000"}, `-4: HOST "fe80::1%lo" is an IPv6 address`},
		{[]string{"-6", "192.0.2.1", "7000"}, `-6: HOST "192.0.2.1" is an IPv4 address`},
		{[]string{"-6", "::ffff:192.0.2.1", "7000"}, `-6: HOST "::ffff:192.0.2.1" is an IPv4 address`},
		{[]string{"-4", "-6", "example.org", "7000"}, "give -4 or -6, not both"},
		{[]string{"-d", "-1", "192.0.2.1", "7000"}, "-d -1 is out of range 0-3600000 (milliseconds)"},
		{[]string{"--delay", "3600001", "192.0.2.1", "7000"}, "-d 3600001 is out of range"},
		{[]string{"-d", "soon", "192.0.2.1", "7000"}, `invalid value "soon" for flag -d`},
		{[]string{"-d", "99999999999999999999", "192.0.2.1", "7000"}, `invalid value "99999999999999999999" for flag -d`},
		{[]string{"-x", "192.0.2.1", "7000"}, "flag provided but not defined: -x"},
		// getopt's bundled short options are not package flag's.
		{[]string{"-uv", "192.0.2.1", "7000"}, "flag provided but not defined: -uv"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, stdout, stderr, _ := run(t, append([]string{"knock", "-v"}, tc.args...)...)
			if code != exitUsage {
				t.Errorf("exit %d, want %d; stderr: %s", code, exitUsage, stderr)
			}
			if !strings.Contains(stderr, tc.stderr) {
				t.Errorf("stderr lacks %q:\n%s", tc.stderr, stderr)
			}
			if !strings.Contains(stderr, "Usage: nftknock knock ") {
				t.Errorf("stderr lacks the usage line:\n%s", stderr)
			}
			if stdout != "" {
				t.Errorf("knocked although the command line is refused: %s", stdout)
			}
		})
	}
}

func TestKnockHelp(t *testing.T) {
	code, stdout, _, _ := run(t, "help", "knock")
	for _, want := range []string{"Usage: nftknock knock [-u] [-d MS] [-4|-6] [-v] HOST PORT[:tcp|udp|icmp]...", "-udp", "-delay", "ping_group_range"} {
		if code != exitOK || !strings.Contains(stdout, want) {
			t.Errorf("help knock: exit %d, lacks %q:\n%s", code, want, stdout)
		}
	}
}

// TestParseSteps: a bare port is TCP, or UDP with -u; a step that names
// its protocol keeps it either way.
func TestParseSteps(t *testing.T) {
	args := []string{"7000", "7001:tcp", "7002:udp", "100:icmp", "7003:UDP", " 7004"}
	tcp := func(n uint16) config.Port { return config.Port{Num: n, Proto: config.TCP} }
	udp := func(n uint16) config.Port { return config.Port{Num: n, Proto: config.UDP} }
	icmp := config.Port{Num: 100, Proto: config.ICMP}
	for _, tc := range []struct {
		udp  bool
		want []config.Port
	}{
		{false, []config.Port{tcp(7000), tcp(7001), udp(7002), icmp, udp(7003), tcp(7004)}},
		{true, []config.Port{udp(7000), tcp(7001), udp(7002), icmp, udp(7003), udp(7004)}},
	} {
		got, err := parseSteps(args, tc.udp)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("-u %v: %v, want %v", tc.udp, got, tc.want)
		}
	}
}

func TestResolveHost(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		host   string
		family int
		want   string // "" for a usage error
	}{
		{"192.0.2.1", 0, "192.0.2.1"},
		{"192.0.2.1", 4, "192.0.2.1"},
		{"2001:db8::1", 0, "2001:db8::1"},
		{"2001:db8::1", 6, "2001:db8::1"},
		{"::ffff:192.0.2.1", 0, "192.0.2.1"},
		{"fe80::1%eth0", 6, "fe80::1%eth0"},
		{"2001:db8::1", 4, ""},
		{"192.0.2.1", 6, ""},
	} {
		got, err := resolveHost(ctx, tc.host, tc.family)
		var uerr usageError
		switch {
		case tc.want == "" && !errors.As(err, &uerr):
			t.Errorf("resolveHost(%q, %d) = %v, %v; want a usage error", tc.host, tc.family, got, err)
		case tc.want != "" && (err != nil || got.String() != tc.want):
			t.Errorf("resolveHost(%q, %d) = %v, %v; want %s", tc.host, tc.family, got, err, tc.want)
		}
	}
	if _, err := resolveHost(ctx, "192.0.2.1", 5); err == nil {
		t.Error("family 5 accepted")
	}
	// A name goes to the resolver, which must not answer for a name
	// under .invalid (RFC 6761); that is a failure, not a usage error.
	ctx2, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var uerr usageError
	if a, err := resolveHost(ctx2, "nftknock-test.invalid", 0); err == nil || errors.As(err, &uerr) || !strings.Contains(err.Error(), "resolve HOST") {
		t.Errorf("resolveHost of an .invalid name = %v, %v; want a resolve error", a, err)
	}
	// localhost comes from /etc/hosts where there is one (nothing here
	// sends a DNS query for it then); -4 must then give its IPv4 address.
	if a, err := resolveHost(ctx2, "localhost", 4); err == nil && (!a.Is4() || !a.IsLoopback()) {
		t.Errorf("resolveHost(localhost, 4) = %v, want an IPv4 loopback address", a)
	}
}

// listenUDP opens a UDP socket on addr, port 0 (any free one).
func listenUDP(t *testing.T, addr string) (*net.UDPConn, uint16) {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(addr), 0)))
	if err != nil {
		t.Skipf("no %s here: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c, c.LocalAddr().(*net.UDPAddr).AddrPort().Port()
}

// listenTCPAndUDP opens a TCP listener and a UDP socket on the same port
// of addr, so that a test sees which protocol a knock on it used.
func listenTCPAndUDP(t *testing.T, addr string) (*net.TCPListener, *net.UDPConn, uint16) {
	t.Helper()
	for range 20 {
		u, port := listenUDP(t, addr)
		ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(addr), port)))
		if err != nil {
			u.Close() // that port is taken for TCP: try another
			continue
		}
		t.Cleanup(func() { ln.Close() })
		return ln, u, port
	}
	t.Fatal("no port free for both TCP and UDP")
	return nil, nil, 0
}

// readDatagram returns the next datagram on c, or nil after wait.
func readDatagram(t *testing.T, c *net.UDPConn, wait time.Duration) ([]byte, netip.AddrPort) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 2048)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil, netip.AddrPort{}
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n], from
}

// accepted reports whether a connection came to ln within wait; the
// client must have sent nothing on it.
func accepted(t *testing.T, ln *net.TCPListener, wait time.Duration) bool {
	t.Helper()
	ln.SetDeadline(time.Now().Add(wait))
	c, err := ln.Accept()
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := c.Read(make([]byte, 16)); n != 0 || (err != io.EOF && !errors.Is(err, syscall.ECONNRESET)) {
		t.Errorf("the TCP knock sent data or did not close: %d bytes, %v", n, err)
	}
	return true
}

// TestKnockLoopback knocks with the command on listeners of the loopback:
// a UDP knock is one datagram holding one zero byte, as knock(1) sends; a
// TCP knock a connection attempt (on the loopback the kernel completes
// the handshake before the client closes); -u turns a bare port to UDP.
func TestKnockLoopback(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "::1"} {
		t.Run(host, func(t *testing.T) {
			ln, u, port := listenTCPAndUDP(t, host)
			p := strconv.Itoa(int(port))
			hostPort := netip.AddrPortFrom(netip.MustParseAddr(host), port).String()
			for _, tc := range []struct {
				args []string
				udp  bool
			}{
				{[]string{host, p}, false},
				{[]string{"-u", host, p}, true},
				{[]string{"--udp", host, p}, true},
				{[]string{host, p + ":udp"}, true},
				{[]string{host, "-u", p + ":tcp"}, false},
			} {
				code, stdout, stderr, _ := run(t, append([]string{"knock", "-v"}, tc.args...)...)
				if code != exitOK || stderr != "" {
					t.Fatalf("%v: exit %d: %s", tc.args, code, stderr)
				}
				proto := map[bool]string{false: "tcp", true: "udp"}[tc.udp]
				if want := "hitting " + proto + " " + hostPort + "\n"; stdout != want {
					t.Errorf("%v: -v printed %q, want %q", tc.args, stdout, want)
				}
				// The protocol not used must see nothing: wait for it
				// second, while the other has already arrived.
				if tc.udp {
					b, from := readDatagram(t, u, 2*time.Second)
					if string(b) != "\x00" || from.Addr().String() != host {
						t.Errorf("%v: datagram %q from %v, want one zero byte from %s", tc.args, b, from, host)
					}
					if accepted(t, ln, 100*time.Millisecond) {
						t.Errorf("%v: a TCP connection came too", tc.args)
					}
				} else {
					if !accepted(t, ln, 2*time.Second) {
						t.Errorf("%v: no TCP connection came", tc.args)
					}
					if b, _ := readDatagram(t, u, 100*time.Millisecond); b != nil {
						t.Errorf("%v: a datagram came too: %q", tc.args, b)
					}
				}
			}
		})
	}
}

// TestKnockDelayAndOrder: every step is sent, in order, -d apart and not
// after the last one (knock(1) sleeps after the last too).
func TestKnockDelayAndOrder(t *testing.T) {
	const n, delay = 3, 300 * time.Millisecond
	var steps []config.Port
	arrived := make([]chan time.Time, n)
	for i := range n {
		c, port := listenUDP(t, "127.0.0.1")
		steps = append(steps, config.Port{Num: port, Proto: config.UDP})
		// A reader waiting on each socket notes when its knock came.
		// (Not SO_TIMESTAMPNS: the kernel turns its stamping on a while
		// after a first socket asks, and stamps at read time until then.)
		arrived[i] = make(chan time.Time, 1)
		go func() {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			b := make([]byte, 16)
			n, _, err := c.ReadFromUDPAddrPort(b)
			if err != nil || string(b[:n]) != "\x00" {
				t.Errorf("knock %d: datagram %q, %v; want one zero byte", i+1, b[:n], err)
			}
			arrived[i] <- time.Now()
		}()
	}
	var out strings.Builder
	start := time.Now()
	if err := sendKnocks(context.Background(), &out, netip.MustParseAddr("127.0.0.1"), steps, delay, true); err != nil {
		t.Fatal(err)
	}
	// The upper bound leaves 250 ms for scheduling, short of a delay
	// after the last knock.
	if took, lo, hi := time.Since(start), (n-1)*delay, (n-1)*delay+250*time.Millisecond; took < lo || took >= hi {
		t.Errorf("%d knocks %s apart took %s, want [%s, %s)", n, delay, took, lo, hi)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != n {
		t.Fatalf("-v printed %d lines, want %d: %q", len(lines), n, out.String())
	}
	var prev time.Time
	for i := range n {
		if want := fmt.Sprintf("hitting udp 127.0.0.1:%d", steps[i].Num); lines[i] != want {
			t.Errorf("-v line %d is %q, want %q", i+1, lines[i], want)
		}
		at := <-arrived[i]
		// In order and spaced, give or take a reader's wake-up.
		if i > 0 && at.Sub(prev) < delay-100*time.Millisecond {
			t.Errorf("knock %d arrived %s after knock %d, want about %s", i+1, at.Sub(prev), i, delay)
		}
		prev = at
	}

	// A cancelled context stops before the next knock.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	out.Reset()
	err := sendKnocks(ctx, &out, netip.MustParseAddr("127.0.0.1"), steps, delay, true)
	if !errors.Is(err, context.Canceled) || out.Len() != 0 {
		t.Errorf("cancelled: %v, printed %q; want context.Canceled and nothing sent", err, out.String())
	}
}

// TestKnockSendFails: a knock the kernel refuses to send is exit 1, named
// by its place and step, and the knocks after it are not sent. (Linux
// refuses a datagram to the broadcast address without SO_BROADCAST, and
// has no route for a TCP connection to it.)
func TestKnockSendFails(t *testing.T) {
	for _, tc := range []struct{ step, want string }{
		{"7000:udp", "knock 1 of 2 (7000:udp): sendto 255.255.255.255:7000: permission denied"},
		{"7000", "knock 1 of 2 (7000:tcp): connect 255.255.255.255:7000: network is unreachable"},
	} {
		code, stdout, stderr, _ := run(t, "knock", "-v", "255.255.255.255", tc.step, "7001:udp")
		if code != exitFail {
			t.Errorf("%s: exit %d, want %d", tc.step, code, exitFail)
		}
		if stderr != "nftknock knock: "+tc.want+"\n" {
			t.Errorf("%s: stderr %q, want %q (and no nftables hint)", tc.step, stderr, tc.want)
		}
		if strings.Count(stdout, "hitting") != 1 {
			t.Errorf("%s: went on after the failure: %q", tc.step, stdout)
		}
	}
}

func TestEchoRequest(t *testing.T) {
	// Known answer: type 8, id 1, seq 1, no payload; sum 0x0802.
	m := echoRequest(false, 1, 1, 0)
	if fmt.Sprintf("% x", m) != "08 00 00 00 00 01 00 01" || checksum(m) != 0xf7fd {
		t.Errorf("echo request % x, checksum %#x; want 08 00 00 00 00 01 00 01, 0xf7fd", m, checksum(m))
	}
	for _, size := range []int{0, 1, 999, 65507} {
		for _, v6 := range []bool{false, true} {
			m := echoRequest(v6, 0xbeef, 7, size)
			want := byte(8)
			if v6 {
				want = 128
			}
			if len(m) != 8+size || m[0] != want || m[1] != 0 || m[4] != 0xbe || m[5] != 0xef || m[7] != 7 {
				t.Errorf("v6 %v size %d: header % x, length %d", v6, size, m[:8], len(m))
			}
			// The checksum is left 0 for the sender to fill in; once in,
			// the message sums to zero.
			if m[2] != 0 || m[3] != 0 {
				t.Errorf("v6 %v size %d: checksum field % x, want 0", v6, size, m[2:4])
			}
			c := checksum(m)
			m[2], m[3] = byte(c>>8), byte(c)
			if checksum(m) != 0 {
				t.Errorf("v6 %v size %d: checksum does not verify", v6, size)
			}
		}
	}
}

// fakeSocket fails raw and ping sockets with the given errors, as the
// kernel does for an unprivileged user, and records what was asked for.
type fakeSocket struct {
	raw, ping error
	calls     []string
}

func (f *fakeSocket) socket(domain, typ, proto int) (int, error) {
	f.calls = append(f.calls, fmt.Sprintf("%d/%#x/%d", domain, typ, proto))
	switch typ &^ (unix.SOCK_CLOEXEC | unix.SOCK_NONBLOCK) {
	case unix.SOCK_RAW:
		if f.raw != nil {
			return -1, f.raw
		}
	case unix.SOCK_DGRAM:
		if f.ping != nil && proto != 0 {
			return -1, f.ping
		}
	}
	return unix.Socket(domain, typ, proto)
}

// TestICMPSocketFallback: without the privilege for a raw socket, an ICMP
// knock tries a ping socket of the same family; without that either, the
// error says what to do.
func TestICMPSocketFallback(t *testing.T) {
	icmp := []config.Port{{Num: 56, Proto: config.ICMP}}
	for _, tc := range []struct {
		addr        string
		domain      int
		proto       int
		raw, ping   error
		wantCalls   int
		wantInError []string
	}{
		{"192.0.2.1", unix.AF_INET, unix.IPPROTO_ICMP, unix.EPERM, unix.EACCES, 2,
			[]string{"knock 1 of 1 (56:icmp)", "raw socket (operation not permitted)", "ping socket (permission denied)", "root", "CAP_NET_RAW", "net.ipv4.ping_group_range"}},
		{"2001:db8::1", unix.AF_INET6, unix.IPPROTO_ICMPV6, unix.EPERM, unix.EPROTONOSUPPORT, 2,
			[]string{"ping socket (protocol not supported)", "net.ipv4.ping_group_range"}},
		// Not a matter of privilege: no fallback, the error as it is.
		{"2001:db8::1", unix.AF_INET6, unix.IPPROTO_ICMPV6, unix.EAFNOSUPPORT, nil, 1,
			[]string{"raw icmp socket: address family not supported"}},
	} {
		f := &fakeSocket{raw: tc.raw, ping: tc.ping}
		err := knocker{socket: f.socket}.send(context.Background(), io.Discard, netip.MustParseAddr(tc.addr), icmp, 0, false)
		if err == nil {
			t.Fatalf("%s: no error", tc.addr)
		}
		for _, want := range tc.wantInError {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: error lacks %q: %v", tc.addr, want, err)
			}
		}
		var want []string
		for _, typ := range []int{unix.SOCK_RAW, unix.SOCK_DGRAM}[:tc.wantCalls] {
			want = append(want, fmt.Sprintf("%d/%#x/%d", tc.domain, typ|unix.SOCK_CLOEXEC, tc.proto))
		}
		if fmt.Sprint(f.calls) != fmt.Sprint(want) {
			t.Errorf("%s: sockets asked for %v, want %v", tc.addr, f.calls, want)
		}
	}
}

// TestKnockWire sends knocks inside a scratch network namespace whose
// input chain counts what arrives with the matches the daemon's rules use
// (nft/rules.go): exactly one SYN per TCP knock, one datagram of one zero
// byte per UDP knock, and per ICMP knock one echo request whose IP length
// is 20+8+N (IPv4, no options) or whose IPv6 payload length is 8+N —
// through a raw socket, and through a ping socket when raw sockets are
// refused and net.ipv4.ping_group_range allows one. The TCP knock port
// drops, as a door's does: the client waits for no answer, and sends
// nothing more (no retransmission, no RST) when it closes the socket.
func TestKnockWire(t *testing.T) {
	nstest.Require(t, "nft", "ip", "sysctl")
	ns := nstest.New(t)
	ns.Run(t, `table inet wire {
	chain in {
		type filter hook input priority 0;
		tcp dport 7000 tcp flags == syn counter comment "syn"
		tcp dport 7000 counter comment "tcp"
		udp dport 7001 udp length 9 @th,64,8 0 counter comment "udp"
		udp dport 7000-7001 counter comment "udpall"
		icmp type echo-request ip length 1028 counter comment "icmp"
		icmp type echo-request counter comment "icmpall"
		icmpv6 type echo-request ip6 length 1008 counter comment "icmpv6"
		icmpv6 type echo-request counter comment "icmpv6all"
		tcp dport 7000 drop
	}
}
`, "nft", "-f", "-")
	counters := func() map[string]int {
		t.Helper()
		out := ns.Run(t, "", "nft", "list", "chain", "inet", "wire", "in")
		got := map[string]int{}
		for _, m := range regexp.MustCompile(`packets (\d+) bytes \d+ comment "(\w+)"`).FindAllStringSubmatch(out, -1) {
			got[m[2]], _ = strconv.Atoi(m[1])
		}
		return got
	}
	steps := []config.Port{{Num: 7000, Proto: config.TCP}, {Num: 7001, Proto: config.UDP}, {Num: 1000, Proto: config.ICMP}}
	knockAll := func(k knocker) {
		t.Helper()
		start := time.Now()
		ns.In(t, func() error {
			for _, a := range []string{"127.0.0.1", "::1"} {
				if err := k.send(context.Background(), io.Discard, netip.MustParseAddr(a), steps, 0, false); err != nil {
					return fmt.Errorf("%s: %w", a, err)
				}
			}
			return nil
		})
		if took := time.Since(start); took > 500*time.Millisecond {
			t.Errorf("knocking took %s: it waited for an answer", took)
		}
	}
	// A SYN not answered would be sent again after a second: wait past
	// that, to see that the closed socket sends none.
	check := func(want map[string]int) {
		t.Helper()
		time.Sleep(1200 * time.Millisecond)
		if got := counters(); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("counted %v, want %v", got, want)
		}
	}

	knockAll(knocker{socket: unix.Socket})
	check(map[string]int{"syn": 2, "tcp": 2, "udp": 2, "udpall": 2, "icmp": 1, "icmpall": 1, "icmpv6": 1, "icmpv6all": 1})

	// Raw sockets refused: the ping socket, once the namespace lets root's
	// group open one (the default range "1 0" lets no group).
	noRaw := &fakeSocket{raw: unix.EPERM}
	ns.In(t, func() error {
		err := noRaw.knocker().send(context.Background(), io.Discard, netip.MustParseAddr("127.0.0.1"), steps[2:], 0, false)
		if err == nil || !strings.Contains(err.Error(), "ping_group_range") {
			return fmt.Errorf("ping socket refused: got %v, want the ping_group_range error", err)
		}
		return nil
	})
	ns.Run(t, "", "sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 0")
	knockAll(noRaw.knocker())
	check(map[string]int{"syn": 4, "tcp": 4, "udp": 4, "udpall": 4, "icmp": 2, "icmpall": 2, "icmpv6": 2, "icmpv6all": 2})
}

func (f *fakeSocket) knocker() knocker { return knocker{socket: f.socket} }
