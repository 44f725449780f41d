package main

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock"
	"github.com/nftknock/nftknock/knock/rotate"
	"github.com/nftknock/nftknock/knock/spa"
)

// rotServer is a server with one rotating door, rot, on a clock the test
// moves; it starts 10 s into window w.
func rotServer(t *testing.T, noneValid bool) (s *server, fw *fakeFirewall, d *rotate.Deriver, w uint64, clock *time.Time) {
	t.Helper()
	key := filepath.Join(t.TempDir(), "rot.key")
	if err := os.WriteFile(key, []byte(spa.GenerateKey()), 0o600); err != nil {
		t.Fatal(err)
	}
	s, fw, _, _ = testServer(t, `
[[door]]
name = "rot"
sequence_key_file = "`+key+`"
seq_timeout = "10s"
open = ["22:tcp"]
open_for = "30s"
`)
	w = 60_000_000
	now := rotate.Start(w, 30*time.Second).Add(10 * time.Second)
	clock = &now
	s.now = func() time.Time { return *clock }
	fw.noneValid = noneValid
	fw.rotations = nil
	if err := s.use(s.cfg); err != nil {
		t.Fatal(err)
	}
	door := s.cfg.Doors[0]
	return s, fw, rotate.NewDeriver(door.SequenceKey, "rot", door.SequenceLength, door.SequencePorts), w, clock
}

func knockFrom(s *server, from string, seq []config.Port) {
	for _, p := range seq {
		s.packet(&knock.Packet{Src: netip.MustParseAddr(from), Proto: p.Proto, DstPort: p.Num, TCPFlags: knock.FlagSYN, Door: 0})
	}
}

func TestServerRotatingDoor(t *testing.T) {
	s, fw, d, w, clock := rotServer(t, false)
	prev, cur := d.Sequence(w-1), d.Sequence(w)
	if got, want := fw.rotations, []string{fmt.Sprintf("rot %v", [][]config.Port{prev, cur})}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("kernel told %q at start, want %q", got, want)
	}

	knockFrom(s, "192.0.2.10", cur)
	if len(fw.grants) != 1 || fw.grants[0] != "rot 192.0.2.10 30s" {
		t.Fatalf("this window's sequence: grants %v", fw.grants)
	}
	// Used up: the kernel drops its ports, the tracker its steps.
	if got, want := fw.rotations[len(fw.rotations)-1], fmt.Sprintf("rot %v", [][]config.Port{prev}); got != want {
		t.Fatalf("after the open the kernel holds %q, want %q", got, want)
	}
	knockFrom(s, "192.0.2.11", cur) // a replay from elsewhere
	if len(fw.grants) != 1 {
		t.Fatalf("a replay in the same window opened: %v", fw.grants)
	}
	knockFrom(s, "192.0.2.12", prev) // the last window's is still good, once
	knockFrom(s, "192.0.2.13", prev)
	if len(fw.grants) != 2 || fw.grants[1] != "rot 192.0.2.12 30s" {
		t.Fatalf("the previous window's sequence: grants %v", fw.grants)
	}

	// The window turns.
	*clock = rotate.Start(w+1, 30*time.Second)
	s.rotate(*clock)
	next := d.Sequence(w + 1)
	if got, want := fw.rotations[len(fw.rotations)-1], fmt.Sprintf("rot %v", [][]config.Port{next}); got != want {
		t.Fatalf("after the turn the kernel holds %q, want %q (w used, w-1 gone)", got, want)
	}
	n := len(fw.rotations)
	s.rotate(clock.Add(time.Second)) // nothing turned: nothing sent
	if len(fw.rotations) != n {
		t.Fatalf("a rotate without a turn sent %q", fw.rotations[n:])
	}
	knockFrom(s, "192.0.2.14", next)
	if len(fw.grants) != 3 {
		t.Fatalf("the new window's sequence did not open: %v", fw.grants)
	}

	// Two windows on, nothing captured earlier opens.
	*clock = rotate.Start(w+3, 30*time.Second)
	s.rotate(*clock)
	for i, seq := range [][]config.Port{prev, cur, next} {
		knockFrom(s, fmt.Sprintf("192.0.2.%d", 20+i), seq)
	}
	if len(fw.grants) != 3 {
		t.Fatalf("old sequences opened: %v", fw.grants)
	}

	// The wall clock steps back a window: the windows seen already count
	// as used, whatever the tracker was told before.
	*clock = rotate.Start(w+1, 30*time.Second).Add(time.Second)
	s.rotate(*clock)
	knockFrom(s, "192.0.2.30", next)
	if len(fw.grants) != 3 {
		t.Fatalf("after the clock stepped back, a window's sequence opened again: %v", fw.grants)
	}
	if next, ok := s.nextTurn(*clock); !ok || !next.Equal(rotate.Start(w+2, 30*time.Second)) {
		t.Errorf("nextTurn = %v, %v", next, ok)
	}
}

// TestServerRotatingRestart: a daemon that cannot tell from the kernel
// which sequences are unused takes them all as used, and opens from the
// next window on.
func TestServerRotatingRestart(t *testing.T) {
	s, fw, d, w, clock := rotServer(t, true)
	if got := fw.rotations[len(fw.rotations)-1]; got != "rot []" {
		t.Fatalf("kernel told %q at start, want no ports", got)
	}
	knockFrom(s, "192.0.2.10", d.Sequence(w))
	knockFrom(s, "192.0.2.11", d.Sequence(w-1))
	if len(fw.grants) != 0 {
		t.Fatalf("a sequence from before the start opened: %v", fw.grants)
	}
	*clock = rotate.Start(w+1, 30*time.Second)
	s.rotate(*clock)
	knockFrom(s, "192.0.2.12", d.Sequence(w+1))
	if len(fw.grants) != 1 {
		t.Fatalf("the first window after the start did not open: %v", fw.grants)
	}
}

func TestClientCommand(t *testing.T) {
	d := config.Door{Name: "rot", SequenceLength: 4, SequencePorts: config.Port{Num: 20000, Last: 40000, Proto: config.TCP}, RotateEvery: 30 * time.Second}
	if got, want := clientCommand(&d), "nftknock knock -door rot -key-file KEYFILE HOST"; got != want {
		t.Errorf("defaults: %q, want %q", got, want)
	}
	d.SequenceLength, d.SequencePorts, d.RotateEvery = 6, config.Port{Num: 1000, Last: 2000, Proto: config.UDP}, 2*time.Second
	if got, want := clientCommand(&d), "nftknock knock -door rot -key-file KEYFILE -length 6 -ports 1000-2000:udp -every 2s HOST"; got != want {
		t.Errorf("%q, want %q", got, want)
	}
}
