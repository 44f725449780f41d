package integration

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nftknock/nftknock/integration/lab"
	"github.com/nftknock/nftknock/knock/rotate"
)

// rotEvery is the test door's rotate_every: short, so that two windows
// pass in seconds.
const rotEvery = 4 * time.Second

func rotConfig(key string) string {
	return fmt.Sprintf(`
[[door]]
name = "rot"
sequence_key_file = %q
sequence_length = 4
sequence_ports = "20000-40000:tcp"
rotate_every = %q
seq_timeout = "2s"
open = ["22:tcp"]
open_for = "2s"
`, key, rotEvery)
}

// waitClientWindow sleeps until the client knocks with a window after w.
func waitClientWindow(w uint64) {
	for rotate.ClientWindow(time.Now(), rotEvery) <= w {
		time.Sleep(50 * time.Millisecond)
	}
}

var hitRE = regexp.MustCompile(`hitting tcp [0-9.]+:(\d+)`)

// rotPorts lists the ports in the rot door's two sets in the kernel.
func rotPorts(t *testing.T, l *lab.Lab) []string {
	t.Helper()
	var ports []string
	for _, set := range []string{"rot_first", "rot_next"} {
		out, err := lab.Run(l.Server, "nft", "list", "set", "inet", "nftknock", set)
		if err != nil {
			t.Fatal(err)
		}
		if m := regexp.MustCompile(`elements = \{ ([0-9, ]+) \}`).FindStringSubmatch(out); m != nil {
			ports = append(ports, strings.Split(m[1], ", ")...)
		}
	}
	return ports
}

// noElementFor fails if set holds addr.
func noElementFor(t *testing.T, l *lab.Lab, set string, addr netip.Addr) {
	t.Helper()
	els, err := l.Elements("nftknock", set)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range els {
		if e.Addr == addr {
			t.Errorf("set %s holds %s", set, addr)
		}
	}
}

func TestRotatingDoor(t *testing.T) {
	l := newLab(t)
	dir := t.TempDir()
	keyPath, _ := writeKey(t, dir)
	// Start early in a window, so that the checks at start see it.
	for time.Until(rotate.Start(rotate.Window(time.Now(), rotEvery)+1, rotEvery)) < rotEvery/2 {
		time.Sleep(50 * time.Millisecond)
	}
	started := rotate.Window(time.Now(), rotEvery)
	cfgPath := writeConfig(t, filepath.Join(dir, "nftknock.toml"), rotConfig(keyPath))
	// Not startDaemon: this daemon is restarted part-way.
	first, err := l.StartDaemon(daemonBin, cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("first nftknockd log:\n%s", first.Log())
		}
		first.Kill()
	})
	d, parent := first, t
	bin := nftknockBin(t)
	knockArgs := []string{bin, "knock", "-door", "rot", "-key-file", keyPath, "-every", rotEvery.String(), "-v"}

	// A fresh daemon cannot know which of the sequences of the window it
	// starts in were used before it: it takes them as used.
	if ports := rotPorts(t, l); len(ports) != 0 {
		t.Fatalf("at start the sets hold %v: sequences from before the start are accepted", ports)
	}
	waitClientWindow(started)

	// The first window after the start: its 4 ports are valid (the
	// window before it counts as used). The whole range looks the same to
	// a scan: valid now or not.
	valid := rotPorts(t, l)
	if len(valid) != 4 {
		t.Fatalf("the sets hold %v, want the 4 ports of the new window", valid)
	}
	n, _ := strconv.Atoi(valid[0])
	mustFiltered(t, l, lab.ClientV4, netip.AddrPortFrom(lab.ServerV4, uint16(n)))
	mustFiltered(t, l, lab.ClientV4, netip.AddrPortFrom(lab.ServerV4, 20000))

	var captured []string
	var capturedAt, restartedAt time.Time
	t.Run("client opens v4", func(t *testing.T) {
		mustFiltered(t, l, lab.ClientV4, ssh4)
		capturedAt = time.Now()
		out := runClient(t, l, append(knockArgs, lab.ServerV4.String())...)
		for _, m := range hitRE.FindAllStringSubmatch(out, -1) {
			captured = append(captured, m[1])
		}
		if len(captured) != 4 {
			t.Fatalf("the client's -v output names %d ports, want 4:\n%s", len(captured), out)
		}
		mustOpen(t, l, lab.ClientV4, ssh4)
		element(t, l, "rot_v4", lab.ClientV4)
		// Used up: its ports left the kernel's sets with the open.
		for _, p := range captured {
			if slices.Contains(rotPorts(t, l), p) {
				t.Errorf("port %s of the used sequence is still in the sets %v", p, rotPorts(t, l))
			}
		}
	})
	if len(captured) != 4 {
		t.FailNow()
	}

	t.Run("a reload and a restart keep the sequence used up", func(t *testing.T) {
		m := markLog(d)
		if err := d.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		m.wait(t, 2*time.Second, "reloaded")
		if err := d.Stop(); err != nil {
			t.Fatalf("nftknockd did not exit 0 on SIGTERM: %v", err)
		}
		restartedAt = time.Now()
		d = startDaemon(parent, l, cfgPath) // runs to the end of the test
		// The new daemon read the kernel's sets, where the captured
		// sequence is missing: the next test shows it counts as used.
		logMark{d, 0}.wait(t, time.Second, "rotating door", `"door": "rot"`)
	})

	t.Run("replay in the same window from another source opens nothing", func(t *testing.T) {
		if end := rotate.Start(rotate.ClientWindow(capturedAt, rotEvery)+2, rotEvery); time.Now().After(end) {
			t.Fatalf("the captured window ended at %v, before the replay: it would prove nothing (a slow machine?)", end)
		}
		// The stock client, from the second address: the route's source
		// address is switched for the replay.
		m := markLog(d)
		src := func(a netip.Addr) {
			if out, err := lab.Run(l.Client, "ip", "route", "replace", "192.0.2.0/24", "dev", l.ClientLink(), "src", a.String()); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
		}
		src(lab.Client2V4)
		err := l.Knock(false, 0, captured...)
		src(lab.ClientV4)
		if err != nil {
			t.Fatal(err)
		}
		mustFiltered(t, l, lab.Client2V4, ssh4)
		noElementFor(t, l, "rot_v4", lab.Client2V4)
		// Dropped in the kernel: the daemon never even sees them.
		if lines := m.lines(lab.Client2V4.String()); len(lines) != 0 {
			t.Errorf("the replayed knocks reached the daemon: %q", lines)
		}
	})

	t.Run("client opens v6 in the next window", func(t *testing.T) {
		// A window that began while no daemon ran counts as used (the
		// restart may have crossed a window's start): the next one opens.
		waitClientWindow(max(rotate.ClientWindow(capturedAt, rotEvery), rotate.Window(restartedAt, rotEvery)))
		mustFiltered(t, l, lab.ClientV6, ssh6)
		runClient(t, l, append(knockArgs, "-6", lab.ServerV6.String())...)
		mustOpen(t, l, lab.ClientV6, ssh6)
		element(t, l, "rot_v6", lab.ClientV6)
	})

	t.Run("captured ports replayed two windows later open nothing", func(t *testing.T) {
		time.Sleep(time.Until(capturedAt.Add(2 * rotEvery)))
		noElements(t, l, "rot_v4") // open_for has run out
		m := markLog(d)
		mustKnock(t, l, false, 0, captured...) // the stock client, same source
		mustFiltered(t, l, lab.ClientV4, ssh4)
		noElements(t, l, "rot_v4")
		if lines := m.lines("door opened"); len(lines) != 0 {
			t.Errorf("door opened: %q", lines)
		}
	})
}
