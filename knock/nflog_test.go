package knock

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/integration/nstest"
	"github.com/nftknock/nftknock/knock/internal/threadcap"
)

// The kernel tests below run in a fresh network namespace each, so they touch
// neither the host's ruleset nor its NFLOG groups, and groups never collide.

const (
	nflogTestGroup = 7113
	nflogTestPort  = 5555 // logged on input: the input interface is known
	nflogSyncPort  = 5556 // logged on output: synchronously, inside sendto(2)
	nflogLoIfindex = 1    // LOOPBACK_IFINDEX: lo is always 1 in a new namespace
)

// nflogNetns creates a network namespace with lo up and a ruleset logging
// UDP to nflogTestPort and nflogSyncPort to group.
func nflogNetns(t *testing.T, group uint16) *nstest.NS {
	t.Helper()
	nstest.Require(t, "ip", "nft")
	ns := nstest.New(t)
	ns.Run(t, fmt.Sprintf(`table inet nftk_nflog_test {
	chain in {
		type filter hook input priority filter; policy accept;
		udp dport %d log group %d
	}
	chain out {
		type filter hook output priority filter; policy accept;
		udp dport %d log group %d
	}
}
`, nflogTestPort, group, nflogSyncPort, group), "nft", "-f", "-")
	return ns
}

// nflogSender is a UDP socket created inside a namespace. A socket stays in
// the namespace it was created in, so sends from any thread stay there too.
type nflogSender struct {
	t  *testing.T
	fd int
}

func newNFLOGSender(t *testing.T, ns *nstest.NS) *nflogSender {
	t.Helper()
	fd := -1
	ns.In(t, func() (err error) {
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		return err
	})
	t.Cleanup(func() { unix.Close(fd) })
	return &nflogSender{t, fd}
}

// send sends b to port on ::1, or on 127.0.0.1 (as a v4-mapped address, so
// one dual-stack socket serves both families).
func (s *nflogSender) send(port int, v6 bool, b []byte) {
	s.t.Helper()
	sa := &unix.SockaddrInet6{Port: port, Addr: [16]byte{10: 0xff, 11: 0xff, 12: 127, 15: 1}}
	if v6 {
		sa.Addr = [16]byte{15: 1}
	}
	if err := unix.Sendto(s.fd, b, 0, sa); err != nil {
		s.t.Fatalf("sendto: %v", err)
	}
}

// nflogInstance returns the namespace's /proc/net/netfilter/nfnetlink_log
// line for group: group, portid, queued, copy_mode, copy_range, flush
// timeout, refcount.
func nflogInstance(t *testing.T, ns *nstest.NS, group uint16) []string {
	t.Helper()
	var b []byte
	ns.In(t, func() (err error) {
		b, err = os.ReadFile("/proc/thread-self/net/netfilter/nfnetlink_log")
		return err
	})
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) == 7 && f[0] == fmt.Sprint(group) {
			return f
		}
	}
	t.Fatalf("group %d not in nfnetlink_log:\n%s", group, b)
	return nil
}

type nflogPacket struct {
	payload []byte
	ifindex uint32
	at      time.Time
}

// nflogRun runs l in the background, copying each packet to the returned
// channel after calling hook (if any) in the handler. stop cancels Run and
// fails the test unless it returns nil within a second.
func nflogRun(t *testing.T, l *NFLOG, hook func()) (pkts chan nflogPacket, stop func()) {
	t.Helper()
	pkts = make(chan nflogPacket, 4096)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- l.Run(ctx, func(lg Logged) {
			payload, ifindex := lg.Payload, lg.InIfindex
			if hook != nil {
				hook()
			}
			select {
			case pkts <- nflogPacket{bytes.Clone(payload), ifindex, time.Now()}:
			default: // never block Run; a test that floods counts on drops
			}
		})
	}()
	var stopped bool
	stop = func() {
		t.Helper()
		if stopped {
			return
		}
		stopped = true
		start := time.Now()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run after cancel: %v, want nil", err)
			}
			t.Logf("Run returned %v after cancel", time.Since(start))
		case <-time.After(time.Second):
			t.Fatal("Run did not return within 1s of cancel")
		}
	}
	t.Cleanup(stop)
	return pkts, stop
}

// nflogWait returns the first packet whose payload contains marker. If
// resend is not nil, it is called at once and then every 20ms.
func nflogWait(t *testing.T, pkts <-chan nflogPacket, marker []byte, resend func()) nflogPacket {
	t.Helper()
	timeout := time.After(5 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	if resend == nil {
		tick.Stop()
	} else {
		resend()
	}
	for {
		select {
		case p := <-pkts:
			if bytes.Contains(p.payload, marker) {
				return p
			}
		case <-tick.C:
			resend()
		case <-timeout:
			t.Fatalf("no NFLOG packet containing %q within 5s", marker)
		}
	}
}

func nflogListen(t *testing.T, cfg NFLOGConfig) *NFLOG {
	t.Helper()
	l, err := ListenNFLOG(cfg)
	if err != nil {
		t.Fatalf("ListenNFLOG: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func TestNFLOGDelivers(t *testing.T) {
	ns := nflogNetns(t, nflogTestGroup)
	core, logs := observer.New(zapcore.DebugLevel)
	l := nflogListen(t, NFLOGConfig{Group: nflogTestGroup, NetNS: ns.FD, Logger: zap.New(core)})
	for _, e := range logs.FilterMessage("NFLOG receive buffer").All() {
		t.Logf("%s %s: %v", e.Level, e.Message, e.ContextMap())
	}
	pkts, stop := nflogRun(t, l, nil)
	s := newNFLOGSender(t, ns)

	for _, v6 := range []bool{false, true} {
		marker := fmt.Appendf(nil, "knock-v6=%t", v6)
		sent := time.Now()
		s.send(nflogTestPort, v6, marker)
		p := nflogWait(t, pkts, marker, nil)
		// CopyRange defaults to 256, so this small datagram arrives whole.
		ipHdr, version := 20, byte(4)
		if v6 {
			ipHdr, version = 40, 6
		}
		if got := p.payload[0] >> 4; got != version {
			t.Errorf("v6=%t: IP version nibble %d, want %d", v6, got, version)
		}
		if want := ipHdr + 8 + len(marker); len(p.payload) != want {
			t.Errorf("v6=%t: payload is %d bytes, want the whole %d-byte packet", v6, len(p.payload), want)
		}
		if !bytes.HasSuffix(p.payload, marker) {
			t.Errorf("v6=%t: payload % x does not end with the datagram", v6, p.payload)
		}
		if dport := binary.BigEndian.Uint16(p.payload[ipHdr+2:]); dport != nflogTestPort {
			t.Errorf("v6=%t: UDP dport %d, want %d", v6, dport, nflogTestPort)
		}
		if p.ifindex != nflogLoIfindex {
			t.Errorf("v6=%t: ifindex %d, want lo (%d)", v6, p.ifindex, nflogLoIfindex)
		}
		// With the kernel's default batching (QTHRESH 100, TIMEOUT 1 s) this
		// takes a second; with QTHRESH=1 it is microseconds.
		lat := p.at.Sub(sent)
		t.Logf("v6=%t: sendto to handler: %v", v6, lat)
		if lat > 100*time.Millisecond {
			t.Errorf("v6=%t: packet took %v to arrive: is the kernel batching?", v6, lat)
		}
	}
	stop()
	if n := l.Overruns(); n != 0 {
		t.Errorf("Overruns() = %d, want 0", n)
	}
}

// By default the kernel batches up to 100 packets for up to a second. With
// QTHRESH=1 and TIMEOUT=0, a packet logged on output (inside sendto) is in the
// socket by the time sendto returns: no timer, no goroutine scheduling involved.
func TestNFLOGNoBatching(t *testing.T) {
	ns := nflogNetns(t, nflogTestGroup)
	l := nflogListen(t, NFLOGConfig{Group: nflogTestGroup, NetNS: ns.FD})
	inst := nflogInstance(t, ns, nflogTestGroup)
	t.Logf("nfnetlink_log instance: %v", inst)
	if mode, copyRange, timeout := inst[3], inst[4], inst[5]; mode != "2" || copyRange != "256" || timeout != "0" {
		t.Errorf("copy_mode %s, copy_range %s, flush timeout %s; want 2 (packet), 256, 0", mode, copyRange, timeout)
	}
	s := newNFLOGSender(t, ns)
	rc, err := l.conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for i := range 4 {
		marker := fmt.Appendf(nil, "sync-%d", i)
		s.send(nflogSyncPort, i%2 == 1, marker)
		var n int
		var rerr error
		if err := rc.Control(func(fd uintptr) { n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT) }); err != nil {
			t.Fatal(err)
		}
		if rerr != nil {
			t.Fatalf("packet %d was not in the socket when sendto returned: %v", i, rerr)
		}
		if !bytes.Contains(buf[:n], marker) {
			t.Fatalf("packet %d: got message % x, want one containing %q", i, buf[:n], marker)
		}
	}
}

func TestNFLOGCopyRange(t *testing.T) {
	ns := nflogNetns(t, nflogTestGroup)
	l := nflogListen(t, NFLOGConfig{Group: nflogTestGroup, NetNS: ns.FD, CopyRange: 64})
	if cr := nflogInstance(t, ns, nflogTestGroup)[4]; cr != "64" {
		t.Errorf("kernel copy_range %s, want 64", cr)
	}
	pkts, _ := nflogRun(t, l, nil)
	s := newNFLOGSender(t, ns)

	for _, v6 := range []bool{false, true} {
		// The marker sits in the first 64 bytes: after the 28- or 48-byte headers.
		marker := fmt.Appendf(nil, "cr%t", v6)
		s.send(nflogTestPort, v6, append(marker, make([]byte, 200)...))
		p := nflogWait(t, pkts, marker, nil)
		if len(p.payload) != 64 {
			t.Errorf("v6=%t: payload is %d bytes, want CopyRange 64", v6, len(p.payload))
		}
		if want := map[bool]byte{false: 4, true: 6}[v6]; p.payload[0]>>4 != want {
			t.Errorf("v6=%t: IP version nibble %d, want %d", v6, p.payload[0]>>4, want)
		}
	}
}

func TestNFLOGAlreadyBound(t *testing.T) {
	ns := nflogNetns(t, nflogTestGroup)
	first := nflogListen(t, NFLOGConfig{Group: nflogTestGroup, NetNS: ns.FD})

	second, err := ListenNFLOG(NFLOGConfig{Group: nflogTestGroup, NetNS: ns.FD})
	if err == nil {
		second.Close()
		t.Fatal("second ListenNFLOG on a bound group succeeded")
	}
	t.Logf("second ListenNFLOG: %v", err)
	if !strings.Contains(err.Error(), "already bound") {
		t.Errorf("error %q does not say the group is already bound", err)
	}
	if !errors.Is(err, unix.EPERM) {
		t.Errorf("error %v is not EPERM", err)
	}

	// Another group is free, and Close releases the group for the next daemon.
	nflogListen(t, NFLOGConfig{Group: nflogTestGroup + 1, NetNS: ns.FD})
	if err := first.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := first.Close(); err != nil {
		t.Errorf("second Close: %v, want nil", err)
	}
	nflogListen(t, NFLOGConfig{Group: nflogTestGroup, NetNS: ns.FD})
}

// Root without CAP_NET_ADMIN gets the same EPERM as a taken group; the error
// must not blame another nftknockd.
func TestNFLOGNeedsCapNetAdmin(t *testing.T) {
	ns := nflogNetns(t, nflogTestGroup)
	core, logs := observer.New(zapcore.DebugLevel)
	err := threadcap.Without(func() error {
		l, err := ListenNFLOG(NFLOGConfig{Group: nflogTestGroup, NetNS: ns.FD, Logger: zap.New(core)})
		if err == nil {
			l.Close()
			err = errors.New("ListenNFLOG without CAP_NET_ADMIN succeeded")
		}
		return err
	}, unix.CAP_NET_ADMIN)
	t.Logf("ListenNFLOG without CAP_NET_ADMIN: %v", err)
	if !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "CAP_NET_ADMIN") ||
		strings.Contains(err.Error(), "already bound") {
		t.Errorf("error %q: want EPERM naming CAP_NET_ADMIN, not a bound group", err)
	}
	// Without the capability SO_RCVBUFFORCE fails and SO_RCVBUF is capped.
	if warn := logs.FilterMessage("NFLOG receive buffer").FilterLevelExact(zapcore.WarnLevel); warn.Len() != 1 {
		t.Errorf("want one warning about a capped receive buffer, got %v", logs.All())
	} else {
		t.Logf("receive buffer without CAP_NET_ADMIN: %v", warn.All()[0].ContextMap())
	}
}

// Packets logged while ListenNFLOG binds can reach the socket before the
// kernel's ack. netlink.Conn.Execute then fails ("mismatched sequence", or
// ENOBUFS): about once in 700 binds under this load on the development VM, so 3000
// binds catch a regression to Execute nearly always.
func TestNFLOGBindUnderTraffic(t *testing.T) {
	ns := nflogNetns(t, nflogTestGroup)
	s := newNFLOGSender(t, ns)
	stop := make(chan struct{})
	flooded := make(chan int)
	go func() {
		n := 0
		for ; ; n++ {
			select {
			case <-stop:
				flooded <- n
				return
			default:
				// Logged on output, inside sendto: straight into the socket.
				unix.Sendto(s.fd, []byte("x"), 0, &unix.SockaddrInet6{Port: nflogSyncPort, Addr: [16]byte{15: 1}})
			}
		}
	}()
	const binds = 3000
	var failed int
	for range binds {
		l, err := ListenNFLOG(NFLOGConfig{Group: nflogTestGroup, NetNS: ns.FD})
		if err != nil {
			if failed++; failed <= 3 {
				t.Errorf("ListenNFLOG under traffic: %v", err)
			}
			continue
		}
		if err := l.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	close(stop)
	t.Logf("%d of %d binds failed while %d datagrams were sent", failed, binds, <-flooded)
}

func TestNFLOGCloseStopsRun(t *testing.T) {
	ns := nflogNetns(t, nflogTestGroup)
	l, err := ListenNFLOG(NFLOGConfig{Group: nflogTestGroup, NetNS: ns.FD})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- l.Run(context.Background(), func(Logged) {}) }()
	time.Sleep(50 * time.Millisecond) // let Run block in recvmsg
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after Close: %v, want nil", err)
		}
	case <-time.After(time.Second):
		t.Fatal("Run did not return within 1s of Close")
	}
}

func TestNFLOGOverrun(t *testing.T) {
	ns := nflogNetns(t, nflogTestGroup)
	core, logs := observer.New(zapcore.DebugLevel)
	// 4096 becomes 8192 (the kernel doubles it): room for about ten short
	// NFLOG messages.
	l := nflogListen(t, NFLOGConfig{Group: nflogTestGroup, NetNS: ns.FD, ReadBuffer: 4096, Logger: zap.New(core)})
	t.Logf("receive buffer: %v", logs.FilterMessage("NFLOG receive buffer").All()[0].ContextMap())

	entered, release := make(chan struct{}), make(chan struct{})
	var calls atomic.Int64
	pkts, _ := nflogRun(t, l, func() {
		if calls.Add(1) == 1 {
			close(entered)
			<-release // hold Run so the socket buffer fills up
		}
	})
	s := newNFLOGSender(t, ns)

	s.send(nflogTestPort, false, []byte("first"))
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("first packet never reached the handler")
	}
	const flood = 2000
	for i := range flood {
		s.send(nflogTestPort, i%2 == 1, fmt.Appendf(nil, "flood-%d", i))
	}
	close(release)

	// Run must keep going after ENOBUFS: later packets still arrive. Until Run
	// has emptied the queue the kernel drops every message (the socket stays
	// congested after an overrun), so each one is resent until it arrives.
	for i := range 5 {
		marker := fmt.Appendf(nil, "after-%d", i)
		nflogWait(t, pkts, marker, func() { s.send(nflogTestPort, false, marker) })
	}
	n := l.Overruns()
	if n == 0 {
		t.Fatalf("Overruns() = 0 after %d packets into an 8 KiB buffer", flood)
	}
	t.Logf("Overruns() = %d; %d handler calls for 1 held, %d flooded and 5+ later packets", n, calls.Load(), flood)
	warns := logs.FilterMessageSnippet("overran").All()
	if len(warns) == 0 || warns[len(warns)-1].ContextMap()["overruns"] != n {
		t.Errorf("want overrun warnings carrying the running total %d, got %v", n, warns)
	}
}

func TestNFLOGParsePacket(t *testing.T) {
	attr := func(typ uint16, v ...byte) []byte {
		b := binary.NativeEndian.AppendUint16(nil, uint16(4+len(v)))
		b = binary.NativeEndian.AppendUint16(b, typ)
		b = append(b, v...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	nfgen := []byte{unix.AF_INET, 0, 0x1b, 0xc9}
	hwProto := attr(1, 0x08, 0x00, 3, 0)           // NFULA_PACKET_HDR
	indev := attr(nfulaIfindexIndev, 0, 0, 0, 7)   // be32 7
	payload := attr(nfulaPayload, 0x45, 1, 2)      // 3 bytes, padded to 8
	unpadded := payload[:7]                        // last attribute without padding
	prefix := attr(10, 'k', 'n', 'o', 'c', 'k', 0) // NFULA_PREFIX

	for _, tc := range []struct {
		name    string
		msg     []byte
		payload []byte
		ifindex uint32
		ok      bool
	}{
		{"full", nflogCat(nfgen, hwProto, indev, prefix, payload), []byte{0x45, 1, 2}, 7, true},
		{"prefix without NUL", nflogCat(nfgen, attr(10, 's', 's', 'h'), payload), []byte{0x45, 1, 2}, 0, true},
		{"unpadded last attribute", nflogCat(nfgen, indev, unpadded), []byte{0x45, 1, 2}, 7, true},
		{"no indev", nflogCat(nfgen, payload), []byte{0x45, 1, 2}, 0, true},
		{"empty payload", nflogCat(nfgen, attr(nfulaPayload)), []byte{}, 0, true},
		{"no payload", nflogCat(nfgen, indev), nil, 0, false},
		{"short nfgenmsg", nfgen[:3], nil, 0, false},
		{"truncated header", nflogCat(nfgen, payload, []byte{8, 0}), nil, 0, false},
		{"length past end", nflogCat(nfgen, payload[:6]), nil, 0, false},
		{"length below header", nflogCat(nfgen, []byte{2, 0, 9, 0}), nil, 0, false},
		{"short indev", nflogCat(nfgen, attr(nfulaIfindexIndev, 1), payload), nil, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lg, ok := parseNFLOGPacket(tc.msg)
			p, ifi := lg.Payload, lg.InIfindex
			if ok != tc.ok || ifi != tc.ifindex || !bytes.Equal(p, tc.payload) || (p == nil) != (tc.payload == nil) {
				t.Errorf("parseNFLOGPacket = % x, %d, %t; want % x, %d, %t", p, ifi, ok, tc.payload, tc.ifindex, tc.ok)
			}
			if wantPrefix := map[string]string{"full": "knock", "prefix without NUL": "ssh"}[tc.name]; string(lg.Prefix) != wantPrefix {
				t.Errorf("prefix %q, want %q", lg.Prefix, wantPrefix)
			}
			// The payload aliases the message: nothing is copied.
			if ok && len(p) > 0 && &p[0] != &tc.msg[bytes.Index(tc.msg, p)] {
				t.Error("payload was copied")
			}
		})
	}
}

func nflogCat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
