package integration

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/integration/lab"
)

// BenchmarkKnockToOpen measures what a user feels: the time from the last
// knock of a sequence leaving the client to the first TCP connection to
// the opened port completing, in the namespace lab. Run it with `make
// bench` (-benchtime 60x): b.N knocks per case.
//
// Beside nftknockd it measures the physical floor in the same run: the
// kernel opening the port alone, in a second lab whose server runs a
// ruleset of dynamic sets that walks the same three knocks in the kernel
// (floorRuleset) and no daemon. The two labs are knocked in turn, so that
// whatever else the machine does weighs on both alike. Two cases:
//
//   - fresh: each knock comes from a source of its own (a first grant);
//   - reknock: one source knocks again reknockAfter after its grant of
//     open_for = 1s ran out, as a user does who types `knock` again.
//
// It reports p50 and p90 of each, and the ratio of the daemon's p50 to
// the floor's.
//
// Why pinning: on 2 cores, a client that spins (it retries its connect
// every few microseconds, never sleeping, because a sleeping client
// measures its own wake-up) and the daemon would otherwise fight for one
// core, and the daemon's wake-up would wait for the client's time slice.
// So the benchmark's own threads run on CPU 0 and the daemon (taskset) on
// CPU 1. The client never sleeps in a poll: a positive epoll/select
// timeout under a millisecond is rounded up to one, which would be the
// whole measurement.
func BenchmarkKnockToOpen(b *testing.B) {
	for _, tc := range []struct {
		name    string
		openFor string
		// srcs is how many source addresses the knocks cycle through.
		srcs int
		// wait is the pause after each pair of knocks.
		wait time.Duration
	}{
		{"fresh", "30s", 200, 0},
		{"reknock", "1s", 1, time.Second + reknockAfter},
	} {
		b.Run(tc.name, func(b *testing.B) {
			if err := lab.PinProcess(0); err != nil {
				b.Fatal(err)
			}
			floor := newLab(b)
			if _, err := runStdin(floor.Server, floorRuleset(tc.openFor), "nft", "-f", "-"); err != nil {
				b.Fatal(err)
			}
			nftk := newLab(b)
			cfg := writeConfig(b, "", sshDoor("10s", tc.openFor))
			d, err := nftk.Start(lab.DaemonOptions{Bin: daemonBin, Config: cfg, CPUs: "1"})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				if err := d.Stop(); err != nil {
					b.Errorf("nftknockd did not exit 0 on SIGTERM: %v", err)
				}
			})
			var srcs []netip.Addr
			for i := range tc.srcs {
				a := netip.AddrFrom4([4]byte{192, 0, 2, byte(20 + i)})
				for _, l := range []*lab.Lab{floor, nftk} {
					if _, err := lab.Run(l.Client, "ip", "addr", "add", a.String()+"/24", "dev", l.ClientLink()); err != nil {
						b.Fatal(err)
					}
				}
				srcs = append(srcs, a)
			}
			var floorLat, nftkLat []time.Duration
			for i := 0; b.Loop(); i++ {
				src := srcs[i%len(srcs)]
				for _, m := range []struct {
					l   *lab.Lab
					lat *[]time.Duration
				}{{floor, &floorLat}, {nftk, &nftkLat}} {
					var d time.Duration
					err := lab.InNS(m.l.Client, func() error {
						var err error
						d, err = knockAndConnect(src, lab.ServerV4)
						return err
					})
					if err != nil {
						b.Fatalf("knock %d: %v", i+1, err)
					}
					*m.lat = append(*m.lat, d)
				}
				time.Sleep(tc.wait)
			}
			f50, f90 := percentiles(floorLat)
			n50, n90 := percentiles(nftkLat)
			b.ReportMetric(us(f50), "floor-p50-µs")
			b.ReportMetric(us(f90), "floor-p90-µs")
			b.ReportMetric(us(n50), "nftknockd-p50-µs")
			b.ReportMetric(us(n90), "nftknockd-p90-µs")
			b.ReportMetric(float64(n50)/float64(f50), "ratio-p50")
			b.Logf("%s, %d knocks each: kernel-only floor p50 %s p90 %s; nftknockd p50 %s p90 %s; ratio of p50s %.2f",
				tc.name, len(nftkLat), f50, f90, n50, n90, float64(n50)/float64(f50))
		})
	}
}

// reknockAfter is how long after its grant ran out a source knocks again
// in the reknock case.
const reknockAfter = 300 * time.Millisecond

// floorRuleset is the knock sequence of sshDoor walked by the kernel alone:
// each knock moves the source from one dynamic set to the next, the last
// one into the set that port 22 accepts, with timeout openFor. It is the
// floor under any knock daemon: the same packets, the same kernel, no
// userspace on the path.
func floorRuleset(openFor string) string {
	return fmt.Sprintf(`table inet floor {
	set step1 { type ipv4_addr; flags dynamic,timeout; timeout 10s; }
	set step2 { type ipv4_addr; flags dynamic,timeout; timeout 10s; }
	set open { type ipv4_addr; flags dynamic,timeout; timeout %s; }
	chain input {
		type filter hook input priority filter - 10; policy accept;
		iifname "lo" accept
		tcp dport 22 ct state established,related accept
		tcp dport 22 ip saddr @open accept
		tcp dport 22 drop
		tcp dport 7000 tcp flags syn / syn,ack update @step1 { ip saddr } drop
		udp dport 8000 ip saddr @step1 update @step2 { ip saddr } drop
		tcp dport 9000 tcp flags syn / syn,ack ip saddr @step2 update @open { ip saddr } drop
	}
}
`, openFor)
}

// knockAndConnect sends 7000/tcp, 8000/udp, 9000/tcp to server from src
// and returns how long after the last one a connection to port 22
// completed (awaitOpen).
func knockAndConnect(src, server netip.Addr) (time.Duration, error) {
	sa := &unix.SockaddrInet4{Addr: server.As4()}
	for _, k := range []struct {
		typ  int
		port int
	}{{unix.SOCK_STREAM, 7000}, {unix.SOCK_DGRAM, 8000}, {unix.SOCK_STREAM, 9000}} {
		fd, err := boundSocket(src, k.typ)
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
	return awaitOpen(src, server, time.Now())
}

// boundSocket is a non-blocking IPv4 socket of typ bound to src.
func boundSocket(src netip.Addr, typ int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: src.As4()}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %s: %w", src, err)
	}
	return fd, nil
}

// awaitOpen returns how long after sent a connection from src to port 22
// of server completed. It spins: a fresh non-blocking connect every
// connectEvery, each polled without waiting (a SYN dropped before the
// grant lands is only retransmitted after a second, so each attempt is a
// new socket).
func awaitOpen(src, server netip.Addr, sent time.Time) (time.Duration, error) {
	sa := &unix.SockaddrInet4{Addr: server.As4(), Port: 22}
	var fds []unix.PollFd
	defer func() {
		for _, p := range fds {
			unix.Close(int(p.Fd))
		}
	}()
	var last time.Time
	for time.Since(sent) < time.Second {
		if time.Since(last) >= connectEvery {
			fd, err := boundSocket(src, unix.SOCK_STREAM)
			if err != nil {
				return 0, err
			}
			fds = append(fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLOUT})
			if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
				return 0, fmt.Errorf("connect: %w", err)
			}
			last = time.Now()
		}
		// Timeout 0: look, never sleep.
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
	}
	return 0, fmt.Errorf("port 22 did not open within a second of the last knock (%d attempts)", len(fds))
}

// connectEvery is how often knockAndConnect starts a new connection
// attempt: the resolution of the measurement.
const connectEvery = 20 * time.Microsecond

func percentiles(d []time.Duration) (p50, p90 time.Duration) {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2], s[len(s)*9/10]
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

// runStdin runs argv in namespace ns with stdin.
func runStdin(ns, stdin string, argv ...string) (string, error) {
	cmd := lab.Command(context.Background(), ns, argv...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
	return string(out), nil
}
