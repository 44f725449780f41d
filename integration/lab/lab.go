// Package lab builds a throwaway two-host network out of Linux network
// namespaces — a server and a client joined by a veth pair, with IPv4 and
// IPv6 addresses from the documentation ranges — and runs things in it.
// The integration tests and `make demo` use it; nothing it does touches
// the host's own network or firewall, and all traffic stays inside.
package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Addresses inside the lab (RFC 5737 and RFC 3849 documentation ranges).
var (
	ServerV4  = netip.MustParseAddr("192.0.2.1")
	ServerV6  = netip.MustParseAddr("2001:db8::1")
	ClientV4  = netip.MustParseAddr("192.0.2.2")
	ClientV6  = netip.MustParseAddr("2001:db8::2")
	Client2V4 = netip.MustParseAddr("192.0.2.3") // a second client address
	Client2V6 = netip.MustParseAddr("2001:db8::3")
)

// Tools are the programs the lab and its users drive.
var Tools = []string{"ip", "nft", "knock"}

var seq atomic.Uint32

// Lab is one server namespace and one client namespace.
type Lab struct {
	Server, Client string // namespace names
	clientLink     string // the client's end of the veth pair
	serverLink     string // the server's end (renamed by RenameServerLink)
}

// ClientLink names the client's end of the veth pair.
func (l *Lab) ClientLink() string { return l.clientLink }

// ServerLink names the server's end of the veth pair.
func (l *Lab) ServerLink() string { return l.serverLink }

// New creates the namespaces, the veth pair and the addresses. Call Close
// to delete them (deleting a namespace deletes its end of the veth).
func New() (*Lab, error) {
	n := seq.Add(1)
	base := fmt.Sprintf("nftk%d-%d", os.Getpid(), n)
	vs, vc := fmt.Sprintf("nk%d-%ds", os.Getpid()%100000, n), fmt.Sprintf("nk%d-%dc", os.Getpid()%100000, n)
	l := &Lab{Server: base + "-srv", Client: base + "-cli", clientLink: vc, serverLink: vs}
	steps := [][]string{
		{"netns", "add", l.Server},
		{"netns", "add", l.Client},
		{"link", "add", vs, "netns", l.Server, "type", "veth", "peer", "name", vc, "netns", l.Client},
		{"-n", l.Server, "link", "set", "lo", "up"},
		{"-n", l.Client, "link", "set", "lo", "up"},
		{"-n", l.Server, "addr", "add", ServerV4.String() + "/24", "dev", vs},
		{"-n", l.Server, "addr", "add", ServerV6.String() + "/64", "dev", vs, "nodad"},
		{"-n", l.Client, "addr", "add", ClientV4.String() + "/24", "dev", vc},
		{"-n", l.Client, "addr", "add", Client2V4.String() + "/24", "dev", vc},
		{"-n", l.Client, "addr", "add", ClientV6.String() + "/64", "dev", vc, "nodad"},
		// Deprecated (preferred_lft 0), so that the kernel never picks it
		// as a source by itself: the second address is used only when a
		// test binds to it.
		{"-n", l.Client, "addr", "add", Client2V6.String() + "/64", "dev", vc, "nodad", "preferred_lft", "0"},
		{"-n", l.Server, "link", "set", vs, "up"},
		{"-n", l.Client, "link", "set", vc, "up"},
	}
	for _, args := range steps {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			l.Close()
			return nil, fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return l, nil
}

// Close deletes both namespaces. It is safe to call more than once.
func (l *Lab) Close() error {
	var errs []error
	for _, ns := range []string{l.Server, l.Client} {
		if _, err := os.Stat("/run/netns/" + ns); err != nil {
			continue
		}
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns del %s: %v: %s", ns, err, out))
		}
	}
	return errors.Join(errs...)
}

// Command returns a command that runs argv in namespace ns (no shell).
func Command(ctx context.Context, ns string, argv ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
}

// Run runs argv in namespace ns and returns its combined output.
func Run(ns string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := Command(ctx, ns, argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
	return string(out), nil
}

// Knock runs the stock knock client (Debian's knockd package) in the
// client namespace against the server, e.g. Knock(false, "7000", "8000:udp").
func (l *Lab) Knock(v6 bool, delayMS int, ports ...string) error {
	argv := []string{"knock", "-d", fmt.Sprint(delayMS)}
	host := ServerV4.String()
	if v6 {
		argv = append(argv, "-6")
		host = ServerV6.String()
	}
	_, err := Run(l.Client, append(append(argv, host), ports...)...)
	return err
}

// InNS runs fn on an OS thread that has entered namespace ns; sockets fn
// creates belong to that namespace for their whole life.
func InNS(ns string, fn func() error) error {
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		return err
	}
	defer target.Close()
	errc := make(chan error, 1)
	// A fresh goroutine, so that if restoring the namespace fails the
	// thread is thrown away with it (it stays locked) rather than reused.
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave netns %s: %w", ns, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Dial connects over TCP from the client namespace, from the local
// address from (zero: let the kernel choose) to to.
func (l *Lab) Dial(from netip.Addr, to netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := InNS(l.Client, func() error {
		d := net.Dialer{Timeout: timeout}
		if from.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: from.AsSlice()}
		}
		var err error
		c, err = d.Dial("tcp", to.String())
		return err
	})
	return c, err
}

// Filtered reports whether a connection attempt gets no answer at all
// within timeout: what a dropped port looks like (a closed port answers
// with a reset at once). It returns an error when the attempt succeeds or
// is refused.
func (l *Lab) Filtered(from netip.Addr, to netip.AddrPort, timeout time.Duration) error {
	c, err := l.Dial(from, to, timeout)
	if err == nil {
		c.Close()
		return fmt.Errorf("connect %s → %s succeeded, want filtered", from, to)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	return fmt.Errorf("connect %s → %s: %v, want a timeout (filtered)", from, to, err)
}

// WaitOpen retries a connection until it succeeds or within runs out;
// each attempt is fresh, since a dropped SYN is only retransmitted after
// a second. It returns the time the first successful connect completed.
func (l *Lab) WaitOpen(from netip.Addr, to netip.AddrPort, within time.Duration) (time.Time, error) {
	deadline := time.Now().Add(within)
	var last error
	for time.Now().Before(deadline) {
		c, err := l.Dial(from, to, 100*time.Millisecond)
		if err == nil {
			c.Close()
			return time.Now(), nil
		}
		last = err
		time.Sleep(10 * time.Millisecond)
	}
	return time.Time{}, fmt.Errorf("connect %s → %s did not succeed within %s: %v", from, to, within, last)
}

// Echo serves TCP echo on port in the server namespace, on IPv4 and IPv6,
// until the returned stop function is called.
func (l *Lab) Echo(port uint16) (stop func(), err error) { return EchoIn(l.Server, port) }

// EchoIn is Echo in network namespace ns.
func EchoIn(ns string, port uint16) (stop func(), err error) {
	var ln net.Listener
	err = InNS(ns, func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", port))
		return err
	})
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 512)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
		}
	}()
	return func() { ln.Close(); wg.Wait() }, nil
}

// Daemon is nftknockd running in the server namespace.
type Daemon struct {
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
	err  error
}

// StartDaemon starts bin -config config in the server namespace and waits
// until it logs that it has started (its table is installed and its NFLOG
// group bound), or until it exits.
func (l *Lab) StartDaemon(bin, config string, extra ...string) (*Daemon, error) {
	return l.Start(DaemonOptions{Bin: bin, Config: config, Args: extra})
}

// StartDaemonEnv is StartDaemon with env ("KEY=value") added to the
// daemon's environment, e.g. a NOTIFY_SOCKET.
func (l *Lab) StartDaemonEnv(bin, config string, env []string, extra ...string) (*Daemon, error) {
	return l.Start(DaemonOptions{Bin: bin, Config: config, Env: env, Args: extra})
}

// DaemonOptions says how Start runs nftknockd.
type DaemonOptions struct {
	Bin, Config string
	Args        []string // after -config
	Env         []string // added to the environment
	// CPUs, if set, is the only CPU list the daemon may run on (taskset
	// -c): benchmarks keep it off the CPU the client spins on.
	CPUs string
}

// Start starts nftknockd as o says in the server namespace and waits until
// it logs that it has started, or until it exits.
func (l *Lab) Start(o DaemonOptions) (*Daemon, error) {
	d := &Daemon{log: &syncBuffer{}, done: make(chan struct{})}
	argv := append([]string{"ip", "netns", "exec", l.Server, o.Bin, "-config", o.Config}, o.Args...)
	if o.CPUs != "" {
		// taskset execs ip, which execs the daemon: the pid stays its.
		argv = append([]string{"taskset", "-c", o.CPUs}, argv...)
	}
	d.cmd = exec.Command(argv[0], argv[1:]...)
	d.cmd.Env = append(os.Environ(), o.Env...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { d.err = d.cmd.Wait(); close(d.done) }()
	if err := d.WaitLog("nftknockd started", 20*time.Second); err != nil {
		d.Kill()
		return nil, fmt.Errorf("nftknockd did not start: %w\n%s", err, d.Log())
	}
	return d, nil
}

// WaitLog waits until the daemon's log contains s.
func (d *Daemon) WaitLog(s string, within time.Duration) error {
	deadline := time.After(within)
	for {
		if strings.Contains(d.Log(), s) {
			return nil
		}
		select {
		case <-d.done:
			if strings.Contains(d.Log(), s) {
				return nil
			}
			return fmt.Errorf("exited (%v) before logging %q", d.err, s)
		case <-deadline:
			return fmt.Errorf("no %q logged within %s", s, within)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Log returns everything the daemon has written so far.
func (d *Daemon) Log() string { return d.log.String() }

// Pid is the daemon's process id (`ip netns exec` execs it, so the
// process started is the daemon itself).
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }

// Signal sends sig to the daemon.
func (d *Daemon) Signal(sig os.Signal) error { return d.cmd.Process.Signal(sig) }

// Stop sends SIGTERM and returns the daemon's exit error (nil for exit 0).
func (d *Daemon) Stop() error {
	if err := d.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-d.done:
		return d.err
	case <-time.After(10 * time.Second):
		d.Kill()
		return errors.New("nftknockd did not exit within 10s of SIGTERM")
	}
}

// Wait waits for the daemon to exit by itself and returns its exit error.
func (d *Daemon) Wait(within time.Duration) error {
	select {
	case <-d.done:
		return d.err
	case <-time.After(within):
		return fmt.Errorf("still running after %s", within)
	}
}

// Kill ends the daemon at once; it is safe to call after it exited.
func (d *Daemon) Kill() {
	select {
	case <-d.done:
	default:
		d.cmd.Process.Kill()
		<-d.done
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Element is one live element of a kernel set.
type Element struct {
	Addr             netip.Addr
	Timeout, Expires time.Duration
}

var elementRE = regexp.MustCompile(`([0-9a-f.:]+) timeout ([0-9a-z]+) expires ([0-9a-z]+)`)

// Elements lists the live elements of set in `table inet table` on the
// server, as `nft list set` shows them to a user.
func (l *Lab) Elements(table, set string) ([]Element, error) {
	out, err := Run(l.Server, "nft", "list", "set", "inet", table, set)
	if err != nil {
		return nil, err
	}
	var els []Element
	for _, m := range elementRE.FindAllStringSubmatch(out, -1) {
		addr, err := netip.ParseAddr(m[1])
		if err != nil {
			return nil, fmt.Errorf("element %q: %w", m[0], err)
		}
		timeout, err1 := parseNftDuration(m[2])
		expires, err2 := parseNftDuration(m[3])
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("element %q: %w", m[0], err)
		}
		els = append(els, Element{Addr: addr, Timeout: timeout, Expires: expires})
	}
	return els, nil
}

// parseNftDuration reads nft's "1d2h3m4s5ms" notation: Go's durations
// but for days.
func parseNftDuration(s string) (time.Duration, error) {
	var days time.Duration
	if n, rest, ok := strings.Cut(s, "d"); ok {
		d, err := strconv.Atoi(n)
		if err != nil {
			return 0, fmt.Errorf("duration %q: %w", s, err)
		}
		days, s = time.Duration(d)*24*time.Hour, rest
		if s == "" {
			return days, nil
		}
	}
	d, err := time.ParseDuration(s)
	return days + d, err
}

// Ping sends one echo request of size bytes of payload (ping -s size) from
// the client to the server and reports whether a reply came within wait.
func (l *Lab) Ping(v6 bool, size int, wait time.Duration) (bool, error) {
	argv := []string{"ping", "-n", "-c", "1", "-s", fmt.Sprint(size), "-W", fmt.Sprintf("%.3f", wait.Seconds())}
	host := ServerV4.String()
	if v6 {
		argv, host = append(argv, "-6"), ServerV6.String()
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait+10*time.Second)
	defer cancel()
	out, err := Command(ctx, l.Client, append(argv, host)...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &ee) && ee.ExitCode() == 1: // no reply
		return false, nil
	}
	return false, fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, out)
}

// UDPEcho serves UDP echo on port in the server namespace, on IPv4 and
// IPv6, until the returned stop function is called.
func (l *Lab) UDPEcho(port uint16) (stop func(), err error) {
	var pc net.PacketConn
	err = InNS(l.Server, func() error {
		var err error
		pc, err = net.ListenPacket("udp", fmt.Sprintf("[::]:%d", port))
		return err
	})
	if err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return func() { pc.Close(); <-done }, nil
}

// UDPResult is what became of a datagram sent by UDPExchange.
type UDPResult int

// What a UDP exchange can come to.
const (
	UDPNoAnswer UDPResult = iota // nothing within the timeout: dropped, filtered
	UDPReplied                   // the same bytes came back
	UDPRefused                   // an ICMP port unreachable (ECONNREFUSED): closed
)

func (r UDPResult) String() string {
	return [...]string{"no answer", "replied", "refused"}[r]
}

// UDPExchange sends one datagram over a connected UDP socket in the client
// namespace, from from (zero: let the kernel choose) to to, and waits up to
// timeout for what comes back: the echoed datagram, an ICMP port
// unreachable (which a connected socket reports as ECONNREFUSED), or
// nothing.
func (l *Lab) UDPExchange(from netip.Addr, to netip.AddrPort, timeout time.Duration) (UDPResult, error) {
	var res UDPResult
	err := InNS(l.Client, func() error {
		d := net.Dialer{}
		if from.IsValid() {
			d.LocalAddr = &net.UDPAddr{IP: from.AsSlice()}
		}
		c, err := d.Dial("udp", to.String())
		if err != nil {
			return err
		}
		defer c.Close()
		msg := fmt.Sprintf("nftknock lab %d", time.Now().UnixNano())
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(timeout))
		buf := make([]byte, 2048)
		n, err := c.Read(buf)
		var ne net.Error
		switch {
		case err == nil && string(buf[:n]) == msg:
			res = UDPReplied
			return nil
		case err == nil:
			return fmt.Errorf("udp %s → %s: got %q back, want %q", from, to, buf[:n], msg)
		case errors.Is(err, syscall.ECONNREFUSED):
			res = UDPRefused
			return nil
		case errors.As(err, &ne) && ne.Timeout():
			res = UDPNoAnswer
			return nil
		}
		return err
	})
	return res, err
}

// RenameServerLink renames the server's end of the veth pair (it has to
// be down for that) and brings it up again. IPv4 addresses survive; the
// IPv6 address is added back.
func (l *Lab) RenameServerLink(name string) error {
	steps := [][]string{
		{"-n", l.Server, "link", "set", "dev", l.serverLink, "down"},
		{"-n", l.Server, "link", "set", "dev", l.serverLink, "name", name},
		{"-n", l.Server, "link", "set", "dev", name, "up"},
		{"-n", l.Server, "addr", "replace", ServerV6.String() + "/64", "dev", name, "nodad"},
	}
	for _, args := range steps {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	l.serverLink = name
	return nil
}
