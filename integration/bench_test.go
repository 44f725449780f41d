package integration

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/integration/lab"
)

// BenchmarkKnockToOpen measures, in the namespace lab, the time from the
// last knock leaving the client to the first TCP connection to the opened
// port completing. Run it with `make bench` (-benchtime 60x): it reports
// the median and 90th percentile over b.N knocks.
//
// The knocks are sent from Go rather than with the knock client so that
// "last knock sent" is a precise instant. Connection attempts to port 22
// start right after it, a fresh non-blocking socket every 50µs (a SYN
// dropped before the grant lands is only retransmitted after a second).
//
// Each knock comes from a source address of its own (up to 200, then they
// repeat), so that what is measured is a first grant, as a user sees it.
func BenchmarkKnockToOpen(b *testing.B) {
	l := newLab(b)
	startDaemon(b, l, writeConfig(b, "", sshDoor("10s", "30s")))
	var srcs []netip.Addr
	for i := range 200 {
		a := netip.AddrFrom4([4]byte{192, 0, 2, byte(20 + i)})
		if _, err := lab.Run(l.Client, "ip", "addr", "add", a.String()+"/24", "dev", l.ClientLink()); err != nil {
			b.Fatal(err)
		}
		srcs = append(srcs, a)
	}
	lat := make([]time.Duration, 0, b.N)
	for i := 0; b.Loop(); i++ {
		var d time.Duration
		err := lab.InNS(l.Client, func() error {
			var err error
			d, err = knockAndConnect(srcs[i%len(srcs)], lab.ServerV4)
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, d)
	}
	slices.Sort(lat)
	p50, p90 := lat[len(lat)/2], lat[len(lat)*9/10]
	b.ReportMetric(float64(p50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(p90.Microseconds()), "p90-µs")
	b.Logf("knock-to-open over %d knocks: p50 %s, p90 %s, min %s, max %s", len(lat), p50, p90, lat[0], lat[len(lat)-1])
}

// knockAndConnect sends 7000/tcp, 8000/udp, 9000/tcp to server and
// returns how long after the last one a connection to port 22 completed.
func knockAndConnect(src, server netip.Addr) (time.Duration, error) {
	sa := &unix.SockaddrInet4{Addr: server.As4()}
	local := &unix.SockaddrInet4{Addr: src.As4()}
	socket := func(typ int) (int, error) {
		fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return -1, err
		}
		if err := unix.Bind(fd, local); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("bind %s: %w", src, err)
		}
		return fd, nil
	}
	for _, k := range []struct {
		typ  int
		port int
	}{{unix.SOCK_STREAM, 7000}, {unix.SOCK_DGRAM, 8000}, {unix.SOCK_STREAM, 9000}} {
		fd, err := socket(k.typ)
		if err != nil {
			return 0, err
		}
		sa.Port = k.port
		if k.typ == unix.SOCK_DGRAM {
			err = unix.Sendto(fd, nil, 0, sa)
		} else if err = unix.Connect(fd, sa); errors.Is(err, unix.EINPROGRESS) {
			err = nil // the SYN is on its way; closing now sends nothing more
		}
		unix.Close(fd)
		if err != nil {
			return 0, fmt.Errorf("knock %d: %w", k.port, err)
		}
	}
	sent := time.Now()

	var fds []unix.PollFd
	defer func() {
		for _, p := range fds {
			unix.Close(int(p.Fd))
		}
	}()
	sa.Port = 22
	for time.Since(sent) < time.Second {
		fd, err := socket(unix.SOCK_STREAM)
		if err != nil {
			return 0, err
		}
		fds = append(fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLOUT})
		if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
			return 0, fmt.Errorf("connect: %w", err)
		}
		if _, err := unix.Poll(fds, 0); err != nil && !errors.Is(err, unix.EINTR) {
			return 0, err
		}
		for _, p := range fds {
			if p.Revents&unix.POLLOUT != 0 {
				if soerr, _ := unix.GetsockoptInt(int(p.Fd), unix.SOL_SOCKET, unix.SO_ERROR); soerr == 0 {
					return time.Since(sent), nil
				}
			}
		}
		time.Sleep(50 * time.Microsecond)
	}
	return 0, fmt.Errorf("port 22 did not open within a second of the last knock (%d attempts)", len(fds))
}
