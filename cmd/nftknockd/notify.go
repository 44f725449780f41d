package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// notifier speaks systemd's notify protocol (sd_notify(3)): one datagram
// of newline-separated VAR=value assignments per state change, sent to the
// AF_UNIX socket named by $NOTIFY_SOCKET. A name that starts with '@' is
// an abstract socket (Go's net package maps '@' to the leading NUL).
//
// A nil *notifier is valid and does nothing: that is what newNotifier
// returns when the daemon does not run under a service manager.
type notifier struct {
	log  *zap.Logger // where a failed notification is reported
	addr *net.UnixAddr
	// watchdog is how often WATCHDOG=1 is due (half of $WATCHDOG_USEC),
	// zero when the service manager asked for none.
	watchdog time.Duration
}

// newNotifier reads the service manager's environment: $NOTIFY_SOCKET,
// and $WATCHDOG_USEC with $WATCHDOG_PID (when set, the watchdog is ours
// only if it names this process). It returns nil when $NOTIFY_SOCKET is
// unset, and an error for a value it cannot use.
func newNotifier(log *zap.Logger, getenv func(string) string) (*notifier, error) {
	sock := getenv("NOTIFY_SOCKET")
	if sock == "" {
		return nil, nil
	}
	if sock[0] != '/' && sock[0] != '@' {
		// systemd also knows vsock:… addresses, for virtual machines;
		// a daemon on the host has no use for them.
		return nil, fmt.Errorf("NOTIFY_SOCKET=%q: want an absolute path or an abstract name starting with @", sock)
	}
	n := &notifier{log: log, addr: &net.UnixAddr{Name: sock, Net: "unixgram"}}
	if usec := getenv("WATCHDOG_USEC"); usec != "" {
		if pid := getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
			return n, nil // the watchdog is another process's
		}
		u, err := strconv.ParseUint(usec, 10, 63)
		if err != nil || u == 0 || u > uint64(1<<63-1)/uint64(time.Microsecond) {
			return nil, fmt.Errorf("WATCHDOG_USEC=%q: want a positive number of microseconds", usec)
		}
		n.watchdog = time.Duration(u) * time.Microsecond / 2
	}
	return n, nil
}

// send sends one datagram of assignments. A fresh socket per message, as
// libsystemd does: state changes are rare, and nothing is kept that a
// restarted service manager could leave dangling.
func (n *notifier) send(assignments ...string) error {
	if n == nil {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("notify %s: %w", n.addr.Name, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(strings.Join(assignments, "\n") + "\n")); err != nil {
		return fmt.Errorf("notify %s: %w", n.addr.Name, err)
	}
	return nil
}

// notify sends assignments and logs a failure: the service manager not
// hearing from us is worth a line, not worth stopping for.
func (n *notifier) notify(assignments ...string) {
	if err := n.send(assignments...); err != nil {
		n.log.Warn("telling the service manager failed", zap.Strings("sent", assignments), zap.Error(err))
	}
}

// ready says that the service is up: its table is installed and its NFLOG
// group bound, or a reload is done (applied or refused).
func (n *notifier) ready(status string) {
	n.notify("READY=1", "STATUS="+oneLine(status))
}

// reloading says that a reload starts. MONOTONIC_USEC is what systemd 253
// and later want for Type=notify-reload; older ones ignore it.
func (n *notifier) reloading(status string) {
	n.notify("RELOADING=1", "MONOTONIC_USEC="+strconv.FormatUint(monotonicUsec(), 10), "STATUS="+oneLine(status))
}

// stopping says that the daemon is on its way out.
func (n *notifier) stopping() {
	n.notify("STOPPING=1", "STATUS=stopping")
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, the clock systemd
// compares MONOTONIC_USEC with.
func monotonicUsec() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0 // cannot fail on Linux
	}
	return uint64(ts.Sec)*1e6 + uint64(ts.Nsec)/1e3
}

// watchdogEvery is how often WATCHDOG=1 is due and the function that sends
// it; zero and nil when the service manager asked for none.
func (n *notifier) watchdogEvery() (time.Duration, func()) {
	if n == nil || n.watchdog == 0 {
		return 0, nil
	}
	return n.watchdog, n.ping
}

// ping keeps the watchdog fed. It is sent from the daemon's packet loop,
// so that a loop that is stuck stops the pings and systemd restarts it.
func (n *notifier) ping() { n.notify("WATCHDOG=1") }

// oneLine keeps a status on one line: a newline would start a new
// assignment.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, s)
}

// notifierFromEnv is newNotifier on the process environment.
func notifierFromEnv(log *zap.Logger) (*notifier, error) {
	return newNotifier(log, os.Getenv)
}
