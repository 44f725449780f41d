package integration

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/integration/lab"
	"github.com/nftknock/nftknock/knock/knocktest"
)

// TestSpoofedCompletionsBounded: someone who has seen a fixed sequence
// completes it from a million spoofed sources (raw IPv4 packets with
// random source addresses, three a source). The door's kernel set stays at
// max_grants, the daemon's memory bounded, its log a few lines a second;
// and a real client of another door (each door's bound is its own) opens
// meanwhile.
func TestSpoofedCompletionsBounded(t *testing.T) {
	const completions = 1_000_000
	l := newLab(t)
	d := startDaemonBin(t, l, plainDaemonBin(t), writeConfig(t, "", `
[[door]]
name = "ssh"
sequence = ["7000:tcp", "8000:udp", "9000:tcp"]
seq_timeout = "5s"
open = ["22:tcp"]
open_for = "10m"

[[door]]
name = "web"
sequence = ["6100:udp", "6200:tcp"]
seq_timeout = "5s"
open = ["8443:tcp"]
open_for = "1m"
`))
	echo(t, l, 8443)
	web4 := netip.AddrPortFrom(lab.ServerV4, 8443)

	done := make(chan error, 1)
	var sent int
	go func() {
		done <- lab.InNS(l.Client, func() error {
			var err error
			sent, err = spoofCompletions(completions, 150_000)
			return err
		})
	}()
	// Meanwhile, a real client of the other door.
	time.Sleep(2 * time.Second)
	mustFiltered(t, l, lab.ClientV4, web4)
	mustKnock(t, l, false, 0, "6100:udp", "6200")
	if _, err := l.WaitOpen(lab.ClientV4, web4, 2*time.Second); err != nil {
		t.Errorf("the other door's client during the flood: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waitIdle(t, d.Pid(), 3*time.Second, time.Minute)
	// VmHWM is the peak over the daemon's whole life.
	hwm, _, err := lab.MemStatus(d.Pid())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sent %d packets (%d completions); the daemon's peak RSS %.1f MiB", sent, sent/3, float64(hwm)/(1<<20))

	els, err := l.Elements("nftknock", "ssh_v4")
	if err != nil {
		t.Fatal(err)
	}
	if n := len(els); n != 65536 {
		t.Errorf("ssh_v4 holds %d grants, want max_grants 65536", n)
	}
	if hwm > 64<<20 {
		t.Errorf("peak RSS %.1f MiB, want the daemon's memory bounded (under 64 MiB)", float64(hwm)/(1<<20))
	}
	// The log: a few lines a second, the refusals summed up.
	lines := strings.Count(d.Log(), "\n")
	refused := 0
	for _, line := range strings.Split(d.Log(), "\n") {
		if i := strings.IndexByte(line, '{'); i >= 0 && strings.Contains(line, "grants refused") {
			var f struct{ Refused int }
			if json.Unmarshal([]byte(line[i:]), &f) == nil {
				refused += f.Refused
			}
		}
	}
	t.Logf("%d log lines; %d grants refused (the door full), %d written", lines, refused, len(els))
	if lines > 2000 {
		t.Errorf("%d log lines for the flood: not bounded", lines)
	}
	if refused < completions/2 {
		t.Errorf("%d completions refused and counted, want most of the %d sent (the rest the kernel or the daemon may have dropped)", refused, completions)
	}
}

// spoofCompletions sends n completions of the ssh door's sequence
// (7000/tcp SYN, 8000/udp, 9000/tcp SYN) to the lab's server, each from a
// random source address, over a raw socket, at about rate packets a
// second. It returns how many packets it sent.
func spoofCompletions(n, rate int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
	if err != nil {
		return 0, fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	dst := &unix.SockaddrInet4{Addr: lab.ServerV4.As4()}
	rng := rand.New(rand.NewPCG(1, 2))
	sent := 0
	start := time.Now()
	for i := range n {
		var src [4]byte
		binary.BigEndian.PutUint32(src[:], 0x0a000000|rng.Uint32()&0x00ffffff) // 10/8
		a := netip.AddrFrom4(src)
		for _, p := range [][]byte{
			knocktest.TCP(a, lab.ServerV4, 7000, knocktest.SYN),
			knocktest.UDP(a, lab.ServerV4, 8000, nil),
			knocktest.TCP(a, lab.ServerV4, 9000, knocktest.SYN),
		} {
			if err := unix.Sendto(fd, p, 0, dst); err != nil {
				return sent, fmt.Errorf("send: %w", err)
			}
			sent++
		}
		if i%1000 == 999 {
			if ahead := time.Duration(sent)*time.Second/time.Duration(rate) - time.Since(start); ahead > 0 {
				time.Sleep(ahead)
			}
		}
	}
	return sent, nil
}
