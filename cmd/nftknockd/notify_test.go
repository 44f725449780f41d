package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock/daemon"
	"github.com/nftknock/nftknock/knock/engine"
	"github.com/nftknock/nftknock/knock/gate"
)

// fakeManager is the service manager's end of $NOTIFY_SOCKET.
type fakeManager struct {
	t    *testing.T
	conn *net.UnixConn
	name string
}

func listenNotify(t *testing.T, name string) *fakeManager {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &fakeManager{t: t, conn: conn, name: name}
}

// next returns the next datagram, or "" if none arrives within d.
func (m *fakeManager) next(d time.Duration) string {
	m.t.Helper()
	buf := make([]byte, 4096)
	m.conn.SetReadDeadline(time.Now().Add(d))
	n, _, err := m.conn.ReadFrom(buf)
	if err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return ""
		}
		m.t.Fatal(err)
	}
	return string(buf[:n])
}

// expect skips WATCHDOG=1 pings and returns the next other datagram,
// failing the test unless it starts with first.
func (m *fakeManager) expect(first string, within time.Duration) string {
	m.t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		msg := m.next(time.Until(deadline))
		if msg == "WATCHDOG=1\n" {
			continue
		}
		if !strings.HasPrefix(msg, first+"\n") {
			m.t.Fatalf("got notification %q, want one starting with %s", msg, first)
		}
		return msg
	}
	m.t.Fatalf("no %s within %s", first, within)
	return ""
}

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func TestNotifierUnsetIsNoop(t *testing.T) {
	n, err := newNotifier(zap.NewNop(), env(nil))
	if n != nil || err != nil {
		t.Fatalf("newNotifier without NOTIFY_SOCKET = %v, %v; want nil, nil", n, err)
	}
	// Every method is safe on nil and sends nothing.
	n.ready("x")
	n.reloading("reloading the configuration")
	n.stopping()
	n.ping()
	if err := n.send("READY=1"); err != nil {
		t.Errorf("nil send: %v", err)
	}
	if every, ping := n.watchdogEvery(); every != 0 || ping != nil {
		t.Error("a watchdog without a watchdog asked for")
	}
}

func TestNotifierEnv(t *testing.T) {
	me := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		vars     map[string]string
		err      string
		watchdog time.Duration
	}{
		{vars: map[string]string{"NOTIFY_SOCKET": "/run/systemd/notify"}},
		{vars: map[string]string{"NOTIFY_SOCKET": "@abstract"}},
		{vars: map[string]string{"NOTIFY_SOCKET": "run/notify"}, err: "absolute path"},
		{vars: map[string]string{"NOTIFY_SOCKET": "vsock:2:1"}, err: "absolute path"},
		{vars: map[string]string{"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "200000"}, watchdog: 100 * time.Millisecond},
		{vars: map[string]string{"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": me}, watchdog: 15 * time.Second},
		{vars: map[string]string{"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}}, // another process's
		{vars: map[string]string{"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "soon"}, err: "WATCHDOG_USEC"},
		{vars: map[string]string{"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "0"}, err: "WATCHDOG_USEC"},
		{vars: map[string]string{"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "9223372036854775807"}, err: "WATCHDOG_USEC"}, // overflows a Duration
		// Without a socket the watchdog cannot be fed either.
		{vars: map[string]string{"WATCHDOG_USEC": "200000"}},
	} {
		n, err := newNotifier(zap.NewNop(), env(tc.vars))
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v: err = %v, want one about %s", tc.vars, err, tc.err)
			}
			continue
		case err != nil:
			t.Errorf("%v: %v", tc.vars, err)
			continue
		}
		if tc.vars["NOTIFY_SOCKET"] == "" {
			if n != nil {
				t.Errorf("%v: a notifier without a socket", tc.vars)
			}
			continue
		}
		if n.addr.Name != tc.vars["NOTIFY_SOCKET"] || n.watchdog != tc.watchdog {
			t.Errorf("%v: socket %q, watchdog %s; want %q, %s", tc.vars, n.addr.Name, n.watchdog, tc.vars["NOTIFY_SOCKET"], tc.watchdog)
		}
	}
}

func TestNotifierSends(t *testing.T) {
	m := listenNotify(t, filepath.Join(t.TempDir(), "notify"))
	n, err := newNotifier(zap.NewNop(), env(map[string]string{"NOTIFY_SOCKET": m.name}))
	if err != nil {
		t.Fatal(err)
	}
	n.ready("two\nlines")
	if got, want := m.next(time.Second), "READY=1\nSTATUS=two lines\n"; got != want {
		t.Errorf("ready sent %q, want %q", got, want)
	}

	clock := func() uint64 { // CLOCK_MONOTONIC in µs, what systemd compares with
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
			t.Fatal(err)
		}
		return uint64(ts.Nano() / 1e3)
	}
	before := clock()
	n.reloading("reloading the configuration")
	after := clock()
	got := strings.Split(m.next(time.Second), "\n")
	if len(got) != 4 || got[0] != "RELOADING=1" || !strings.HasPrefix(got[1], "MONOTONIC_USEC=") || !strings.HasPrefix(got[2], "STATUS=") || got[3] != "" {
		t.Fatalf("reloading sent %q", got)
	}
	usec, err := strconv.ParseUint(strings.TrimPrefix(got[1], "MONOTONIC_USEC="), 10, 64)
	if err != nil || usec < before || usec > after {
		t.Errorf("MONOTONIC_USEC=%d (%v), want within [%d, %d]", usec, err, before, after)
	}

	n.stopping()
	if got, want := m.next(time.Second), "STOPPING=1\nSTATUS=stopping\n"; got != want {
		t.Errorf("stopping sent %q, want %q", got, want)
	}
	n.ping()
	if got, want := m.next(time.Second), "WATCHDOG=1\n"; got != want {
		t.Errorf("ping sent %q, want %q", got, want)
	}
}

// An abstract socket: "@name" on the environment, a leading NUL on the wire.
func TestNotifierAbstractSocket(t *testing.T) {
	name := fmt.Sprintf("@nftknockd-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	m := listenNotify(t, name)
	n, err := newNotifier(zap.NewNop(), env(map[string]string{"NOTIFY_SOCKET": name}))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.send("READY=1"); err != nil {
		t.Fatal(err)
	}
	if got := m.next(time.Second); got != "READY=1\n" {
		t.Errorf("got %q over the abstract socket, want READY=1", got)
	}
	// It is abstract: nothing was created on the file system.
	if _, err := os.Stat(name); err == nil {
		t.Errorf("%s exists as a file", name)
	}
}

func TestNotifierLogsFailure(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	n, err := newNotifier(zap.New(core), env(map[string]string{"NOTIFY_SOCKET": filepath.Join(t.TempDir(), "absent")}))
	if err != nil {
		t.Fatal(err)
	}
	n.ready("up")
	if logs.FilterMessageSnippet("telling the service manager failed").Len() != 1 {
		t.Errorf("a failed notification was not logged: %v", logs.All())
	}
}

// The daemon feeds the watchdog from its packet loop, wraps a reload in
// RELOADING=1 … READY=1, and stops feeding the watchdog while it is stuck
// (here, in a reload whose install the kernel does not answer).
func TestLoopNotifies(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nftknock.toml")
	if err := os.WriteFile(path, config.DefaultTOML(), 0o600); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	log := zap.New(core)
	fw := gate.NewFakeFirewall(nil)
	m := listenNotify(t, filepath.Join(t.TempDir(), "notify"))
	n, err := newNotifier(zap.NewNop(), env(map[string]string{"NOTIFY_SOCKET": m.name, "WATCHDOG_USEC": "40000"}))
	if err != nil {
		t.Fatal(err)
	}
	every, ping := n.watchdogEvery()

	ctx, cancel := context.WithCancel(context.Background())
	reload := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		done <- daemon.Run(ctx, daemon.Options{
			Log: log, Load: func() (*config.Config, error) { return config.Parse(path, config.DefaultTOML()) },
			Reload: reload, Source: engine.NewFakeSource(16), Firewall: fw,
			Ready: n.ready, Reloading: n.reloading, Stopping: n.stopping, Watchdog: ping, WatchdogEvery: every,
		})
	}()
	if msg := m.expect("READY=1", 5*time.Second); !strings.Contains(msg, "STATUS=table inet nftknock, NFLOG group 7113, doors: ssh\n") {
		t.Errorf("READY at start: %q, want the status line", msg)
	}

	// Pings every 20ms.
	start := time.Now()
	for i := 0; i < 3; i++ {
		if got := m.next(time.Second); got != "WATCHDOG=1\n" {
			t.Fatalf("got %q, want WATCHDOG=1", got)
		}
	}
	if el := time.Since(start); el < 40*time.Millisecond {
		t.Errorf("3 pings in %s: faster than every WATCHDOG_USEC/2", el)
	}

	reload <- struct{}{}
	m.expect("RELOADING=1", time.Second)
	if msg := m.expect("READY=1", time.Second); !strings.Contains(msg, "STATUS=table inet nftknock, NFLOG group 7113, doors: ssh\n") {
		t.Errorf("READY after reload: %q, want the status line", msg)
	}
	if logs.FilterMessage("reloaded").Len() != 1 {
		t.Errorf("reload not applied: %v", logs.All())
	}

	// Wedge the loop in a reload: the pings stop.
	fw.Hold = make(chan struct{})
	reload <- struct{}{}
	m.expect("RELOADING=1", time.Second)
	if got := m.next(300 * time.Millisecond); got != "" {
		t.Errorf("got %q from a stuck loop, want silence", got)
	}
	close(fw.Hold)
	m.expect("READY=1", time.Second)
	if got := m.next(time.Second); got != "WATCHDOG=1\n" {
		t.Errorf("got %q after the loop came unstuck, want WATCHDOG=1", got)
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("daemon: %v", err)
	}
	m.expect("STOPPING=1", time.Second)
}
