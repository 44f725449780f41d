package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/config"
)

// maxKnockDelay bounds -d: no door waits longer than its seq_timeout, which
// is at most an hour, so a longer delay can only be a mistake (and a huge
// one would overflow a time.Duration).
const maxKnockDelay = time.Hour

var knockCmd = &command{
	name:     "knock",
	synopsis: "[-u] [-d MS] [-4|-6] [-v] HOST PORT[:tcp|udp|icmp]...\n       nftknock knock -door NAME -key-file FILE [-length N] [-ports RANGE] [-every DURATION] [-d MS] [-4|-6] [-v] HOST",
	summary:  "knock on a door: a drop-in for knockd's knock client",
	help: `Knocks on HOST with the steps given, in order, as knockd's knock(1) does.
A TCP step is one SYN (a non-blocking connect, then close: no handshake is
waited for), a UDP step one datagram of one byte. N:icmp is an echo request
(ICMP or ICMPv6) with exactly N bytes of payload, what the daemon matches
for "N:icmp"; it needs a raw socket (root, or CAP_NET_RAW) or, failing that,
a ping socket, which the sysctl net.ipv4.ping_group_range must allow for one
of your groups. A bare port is TCP, or UDP with -u; an explicit :tcp stays
TCP with -u. Nothing answers a knock: check by connecting to the port the
door opens. The long options of knock(1) (--udp, --delay, --ipv4, --ipv6,
--verbose) are accepted too; short options cannot be run together (-uv).

With -door and -key-file, knocks on a rotating door (sequence_key_file):
sends the sequence valid now, derived from the key for the window of
now - every/4. -length, -ports and -every must be the door's
sequence_length, sequence_ports and rotate_every; their defaults are the
config's. A sequence opens the door once per window: to open again, wait
for the next. The key file must not be readable by group or others.

Exit status: 0 every knock sent, 1 a knock could not be sent or HOST not
resolved, 2 usage error.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) int {
		return addKnockFlags(fs).run
	},
}

// knockFlags holds every flag of `nftknock knock`, declared together in
// addKnockFlags so that another mode (a rotating door's -door, -key-file)
// adds its own next to these.
type knockFlags struct {
	udp     bool
	delayMS int
	ipv4    bool
	ipv6    bool
	verbose bool
	rot     *rotatingFlags // -door NAME -key-file F: knock_rotating.go
}

func addKnockFlags(fs *flag.FlagSet) *knockFlags {
	f := &knockFlags{}
	// Each flag under knock(1)'s short and long name, so that a script
	// written for knock runs unchanged ("--udp" is "-udp" to package flag).
	boolFlag := func(p *bool, short, long, usage string) {
		fs.BoolVar(p, short, false, usage)
		fs.BoolVar(p, long, false, "same as -"+short)
	}
	boolFlag(&f.udp, "u", "udp", "bare ports are UDP (default TCP)")
	boolFlag(&f.ipv4, "4", "ipv4", "use IPv4 when HOST is a name")
	boolFlag(&f.ipv6, "6", "ipv6", "use IPv6 when HOST is a name")
	boolFlag(&f.verbose, "v", "verbose", "print one line per knock")
	fs.IntVar(&f.delayMS, "d", 0, "wait `ms` milliseconds between knocks")
	fs.IntVar(&f.delayMS, "delay", 0, "same as -d `ms`")
	f.rot = addRotatingFlags(fs)
	return f
}

// knockRequest is a checked command line: what to send, and where.
type knockRequest struct {
	host   string
	family int // 0 (whatever HOST resolves to first), 4 or 6
	steps  []config.Port
	delay  time.Duration
}

// request checks the flags and the positional arguments; its errors are
// usage errors, each naming the argument at fault, but for a rotating
// door's key file that cannot be read.
func (f *knockFlags) request(args []string) (knockRequest, error) {
	var r knockRequest
	switch {
	case f.rot.set() && len(args) != 1:
		return r, usageError("with -door, give HOST only: the door's key says which ports to knock on")
	case len(args) == 0:
		return r, usageError("give HOST and at least one PORT")
	case len(args) == 1 && !f.rot.set():
		return r, usageError(fmt.Sprintf("give at least one PORT to knock on after HOST %q", args[0]))
	case args[0] == "":
		return r, usageError("HOST is empty")
	}
	switch {
	case f.ipv4 && f.ipv6:
		return r, usageError("give -4 or -6, not both")
	case f.ipv4:
		r.family = 4
	case f.ipv6:
		r.family = 6
	}
	if maxMS := int(maxKnockDelay / time.Millisecond); f.delayMS < 0 || f.delayMS > maxMS {
		return r, usageError(fmt.Sprintf("-d %d is out of range 0-%d (milliseconds)", f.delayMS, maxMS))
	}
	r.delay = time.Duration(f.delayMS) * time.Millisecond
	var steps []config.Port
	var err error
	if f.rot.set() {
		steps, err = f.rot.steps(time.Now())
	} else {
		steps, err = parseSteps(args[1:], f.udp)
	}
	if err != nil {
		return r, err
	}
	r.host, r.steps = args[0], steps
	// A literal address is checked against -4/-6 here, so that the
	// mismatch is a usage error whatever the resolver would say.
	if _, err := literalAddr(r.host, r.family); err != nil {
		return r, err
	}
	return r, nil
}

// parseSteps parses knock steps with config.ParseKnock, the daemon's own
// reading of a sequence, so that the client sends what a door's
// "sequence" means. udp makes a bare port UDP (knock -u); a step that
// names its protocol keeps it.
func parseSteps(args []string, udp bool) ([]config.Port, error) {
	steps := make([]config.Port, 0, len(args))
	for _, s := range args {
		p, err := config.ParseKnock(s)
		if err != nil {
			return nil, usageError(fmt.Sprintf("PORT %v", err))
		}
		if udp && !strings.Contains(s, ":") {
			p.Proto = config.UDP
		}
		steps = append(steps, p)
	}
	return steps, nil
}

func (f *knockFlags) run(e *env, args []string) int {
	r, err := f.request(args)
	ctx := context.Background()
	var addr netip.Addr
	if err == nil {
		addr, err = resolveHost(ctx, r.host, r.family)
	}
	if err == nil {
		err = sendKnocks(ctx, e.stdout, addr, r.steps, r.delay, f.verbose)
	}
	var uerr usageError
	switch {
	case errors.As(err, &uerr):
		return usageErr(e, "knock", "%v", err)
	case err != nil:
		// Not fail(): its hint for a permission error is about
		// nftables, and a knock needs none.
		fmt.Fprintf(e.stderr, "nftknock knock: %v\n", err)
		return exitFail
	}
	return exitOK
}

// literalAddr returns host as an address if it is one (the zero Addr if
// it is a name), or a usage error if it is of the family -4 or -6 excludes.
// An IPv4-mapped IPv6 address is IPv4: its packets are.
func literalAddr(host string, family int) (netip.Addr, error) {
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, nil
	}
	a = a.Unmap()
	switch {
	case family == 4 && !a.Is4():
		return netip.Addr{}, usageError(fmt.Sprintf("-4: HOST %q is an IPv6 address", host))
	case family == 6 && a.Is4():
		return netip.Addr{}, usageError(fmt.Sprintf("-6: HOST %q is an IPv4 address", host))
	}
	return a, nil
}

// resolveHost returns the address to knock on: host itself if it is an
// address (which must then be of family, unless family is 0), else the
// first address the resolver gives for it, of family 4 or 6 if asked.
// A literal address of the wrong family is a usageError.
func resolveHost(ctx context.Context, host string, family int) (netip.Addr, error) {
	network := map[int]string{0: "ip", 4: "ip4", 6: "ip6"}[family]
	if network == "" {
		return netip.Addr{}, fmt.Errorf("resolve %s: address family %d is not 0, 4 or 6", host, family)
	}
	if a, err := literalAddr(host, family); err != nil || a.IsValid() {
		return a, err
	}
	// The resolver orders its answers as getaddrinfo does (RFC 6724), and
	// knock(1) takes getaddrinfo's first.
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, network, host)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("resolve HOST: %w", err)
	}
	for _, a := range addrs {
		a = a.Unmap()
		if family == 0 || (family == 4) == a.Is4() {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("resolve HOST: %s has no IPv%d address", host, family)
}

// sendKnocks sends steps to addr in order, delay apart, and with verbose
// writes a line per knock to out before sending it, as knock(1) -v does.
// It stops at the first knock it cannot send: the door could not open
// with the rest.
func sendKnocks(ctx context.Context, out io.Writer, addr netip.Addr, steps []config.Port, delay time.Duration, verbose bool) error {
	return knocker{socket: unix.Socket}.send(ctx, out, addr, steps, delay, verbose)
}

// knocker sends knocks through socket, which is unix.Socket but in tests:
// they make it fail as it does for an unprivileged user, to reach the
// ICMP fallback without dropping privileges.
type knocker struct {
	socket func(domain, typ, proto int) (int, error)
}

func (k knocker) send(ctx context.Context, out io.Writer, addr netip.Addr, steps []config.Port, delay time.Duration, verbose bool) error {
	if !addr.IsValid() {
		return errors.New("no address to knock on")
	}
	for i, p := range steps {
		if i > 0 && delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("knock %d of %d not sent: %w", i+1, len(steps), ctx.Err())
			case <-t.C:
			}
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("knock %d of %d not sent: %w", i+1, len(steps), err)
		}
		if verbose {
			fmt.Fprintln(out, hitting(addr, p))
		}
		if err := k.knock(addr, p, uint16(i+1)); err != nil {
			return fmt.Errorf("knock %d of %d (%s): %w", i+1, len(steps), p, err)
		}
	}
	return nil
}

// hitting is knock(1)'s -v line, "hitting tcp 192.0.2.1:7000"; an IPv6
// address is bracketed (knock(1) leaves it bare, which runs into the
// port), and an ICMP step shows its payload size.
func hitting(addr netip.Addr, p config.Port) string {
	if p.Proto == config.ICMP {
		return fmt.Sprintf("hitting icmp %s echo request, %d bytes of payload", addr, p.Num)
	}
	return fmt.Sprintf("hitting %s %s", p.Proto, netip.AddrPortFrom(addr, p.Num))
}

func (k knocker) knock(addr netip.Addr, p config.Port, seq uint16) error {
	switch p.Proto {
	case config.TCP:
		return k.tcp(addr, p.Num)
	case config.UDP:
		return k.udp(addr, p.Num)
	case config.ICMP:
		return k.icmp(addr, int(p.Num), seq)
	}
	return fmt.Errorf("cannot knock with protocol %s", p.Proto)
}

// tcp sends one SYN: a non-blocking connect sends it and returns at once,
// and closing the socket while the connection is half-open drops it
// without a retransmission, a RST or a FIN — knock(1) does the same.
func (k knocker) tcp(addr netip.Addr, port uint16) error {
	domain, sa, err := sockaddr(addr, port)
	if err != nil {
		return err
	}
	fd, err := k.socket(domain, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("tcp socket: %w", err)
	}
	defer unix.Close(fd)
	err = unix.Connect(fd, sa)
	switch {
	case err == nil, errors.Is(err, unix.EINPROGRESS):
		// Sent (on loopback the handshake may even have completed).
	case errors.Is(err, unix.ECONNREFUSED):
		// Sent, and refused at once: a closed port on the loopback.
	default:
		return fmt.Errorf("connect %s: %w", netip.AddrPortFrom(addr, port), err)
	}
	return nil
}

// udp sends one datagram of one zero byte, as knock(1) does (it sends the
// C string "" with length 1), so that a knock looks the same on the wire
// whichever client sent it.
func (k knocker) udp(addr netip.Addr, port uint16) error {
	domain, sa, err := sockaddr(addr, port)
	if err != nil {
		return err
	}
	fd, err := k.socket(domain, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("udp socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Sendto(fd, []byte{0}, 0, sa); err != nil {
		return fmt.Errorf("sendto %s: %w", netip.AddrPortFrom(addr, port), err)
	}
	return nil
}

// icmp sends an echo request with exactly size bytes of payload. The
// kernel writes the IP header, with no options or extension headers, so
// the daemon's "ip length 20+8+N" / "ip6 length 8+N" match holds.
func (k knocker) icmp(addr netip.Addr, size int, seq uint16) error {
	// The port of an ICMP socket address must be 0 (IPv6 raw sockets
	// take anything else for a protocol number).
	domain, sa, err := sockaddr(addr, 0)
	if err != nil {
		return err
	}
	v6 := domain == unix.AF_INET6
	fd, raw, err := k.icmpSocket(domain, v6)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	// On a ping socket the kernel writes the identifier and the checksum
	// itself; on an ICMPv6 raw socket it writes the checksum. Only an
	// ICMP raw socket sends them as given.
	msg := echoRequest(v6, uint16(os.Getpid()), seq, size)
	if raw && !v6 {
		binary.BigEndian.PutUint16(msg[2:], checksum(msg))
	}
	if err := unix.Sendto(fd, msg, 0, sa); err != nil {
		return fmt.Errorf("sendto %s: %w", addr, err)
	}
	return nil
}

// icmpSocket opens a raw ICMP or ICMPv6 socket (raw true), or when the
// privilege for one is lacking, a ping socket (SOCK_DGRAM), which
// Linux lets the groups in net.ipv4.ping_group_range open.
func (k knocker) icmpSocket(domain int, v6 bool) (fd int, raw bool, err error) {
	proto := unix.IPPROTO_ICMP
	if v6 {
		proto = unix.IPPROTO_ICMPV6
	}
	fd, rawErr := k.socket(domain, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if rawErr == nil {
		return fd, true, nil
	}
	if !errors.Is(rawErr, os.ErrPermission) {
		return -1, false, fmt.Errorf("raw icmp socket: %w", rawErr)
	}
	fd, pingErr := k.socket(domain, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto)
	if pingErr == nil {
		return fd, false, nil
	}
	return -1, false, fmt.Errorf("an icmp knock needs a raw socket (%v) or a ping socket (%v): "+
		"run as root (or with CAP_NET_RAW), or let one of your groups open ping sockets, "+
		"e.g. sysctl -w net.ipv4.ping_group_range=\"%d %d\"", rawErr, pingErr, os.Getegid(), os.Getegid())
}

// echoRequest is an ICMP (or ICMPv6) echo request with id, seq and size
// zero bytes of payload; its checksum is left 0.
func echoRequest(v6 bool, id, seq uint16, size int) []byte {
	msg := make([]byte, 8+size)
	msg[0] = 8 // echo request
	if v6 {
		msg[0] = 128
	}
	binary.BigEndian.PutUint16(msg[4:], id)
	binary.BigEndian.PutUint16(msg[6:], seq)
	return msg
}

// checksum is the Internet checksum (RFC 1071) of b.
func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// sockaddr is addr and port as a socket address, with its domain. A zone
// ("fe80::1%eth0") becomes the scope id a link-local address needs.
func sockaddr(addr netip.Addr, port uint16) (domain int, sa unix.Sockaddr, err error) {
	if addr.Is4() {
		return unix.AF_INET, &unix.SockaddrInet4{Port: int(port), Addr: addr.As4()}, nil
	}
	sa6 := &unix.SockaddrInet6{Port: int(port), Addr: addr.As16()}
	if z := addr.Zone(); z != "" {
		if n, err := strconv.ParseUint(z, 10, 32); err == nil {
			sa6.ZoneId = uint32(n)
		} else {
			ifi, err := net.InterfaceByName(z)
			if err != nil {
				return 0, nil, fmt.Errorf("zone of %s: %w", addr, err)
			}
			sa6.ZoneId = uint32(ifi.Index)
		}
	}
	return unix.AF_INET6, sa6, nil
}
