package integration

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nftknock/nftknock/integration/lab"
	"github.com/nftknock/nftknock/integration/nstest"
)

// notification is one datagram the daemon sent to $NOTIFY_SOCKET. For a
// READY=1, tableErr is what `nft list table` in the server namespace said
// the moment it arrived (nil: the table was there).
type notification struct {
	msg      string
	tableErr error
}

// fakeSystemd is the service manager's end of $NOTIFY_SOCKET: a unixgram
// socket in a temp dir, read by a goroutine that checks the table as each
// READY=1 arrives, before it reads on.
type fakeSystemd struct {
	sock    string
	msgs    chan notification
	release func()
}

// newFakeSystemd listens on a fresh socket. With hold, its queue is first
// filled to the brim and nothing is read until release is called: the
// daemon's first notification blocks in send until then, so what the
// daemon has done before its first notification can be looked at while it
// waits.
func newFakeSystemd(t *testing.T, l *lab.Lab, hold bool) *fakeSystemd {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	fillers := 0
	if hold {
		filler, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		for ; ; fillers++ {
			filler.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			if _, err := filler.Write([]byte("FILLER\n")); err != nil {
				if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
					t.Fatal(err)
				}
				break
			}
		}
		filler.Close()
		if fillers == 0 {
			t.Fatal("could not fill the notify socket's queue")
		}
	}
	start := make(chan struct{})
	f := &fakeSystemd{sock: sock, msgs: make(chan notification, 1024), release: sync.OnceFunc(func() { close(start) })}
	if !hold {
		f.release()
	}
	done := make(chan struct{})
	t.Cleanup(func() { f.release(); conn.Close(); <-done })
	go func() {
		defer close(done)
		<-start
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			note := notification{msg: string(buf[:n])}
			if note.msg == "FILLER\n" && fillers > 0 {
				fillers--
				continue
			}
			if strings.Contains(note.msg, "READY=1\n") {
				_, note.tableErr = lab.Run(l.Server, "nft", "list", "table", "inet", "nftknock")
			}
			f.msgs <- note
		}
	}()
	return f
}

// next returns the next notification other than WATCHDOG=1, failing the
// test unless it starts with first within d.
func (f *fakeSystemd) next(t *testing.T, first string, d time.Duration) notification {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case n := <-f.msgs:
			if n.msg == "WATCHDOG=1\n" {
				continue
			}
			if !strings.HasPrefix(n.msg, first+"\n") {
				t.Fatalf("daemon notified %q, want %s", n.msg, first)
			}
			return n
		case <-deadline:
			t.Fatalf("no %s notified within %s", first, d)
			return notification{}
		}
	}
}

// all drains what has arrived within d.
func (f *fakeSystemd) all(d time.Duration) []string {
	var got []string
	deadline := time.After(d)
	for {
		select {
		case n := <-f.msgs:
			got = append(got, n.msg)
		case <-deadline:
			return got
		}
	}
}

// TestServiceNotify runs the daemon as systemd would, with NOTIFY_SOCKET
// and WATCHDOG_USEC: READY=1 only once the table is there, watchdog pings,
// RELOADING=1 then READY=1 around SIGHUP (an applied and a refused reload),
// STOPPING=1 on SIGTERM.
func TestServiceNotify(t *testing.T) {
	l := newLab(t)
	path := writeConfig(t, "", sshDoor("5s", "30s"))
	// The queue is full: the daemon's first notification waits in send.
	// Had it been sent before the table was installed, the daemon would
	// be stuck before installing it, and never log that it started.
	sd := newFakeSystemd(t, l, true)
	d, err := l.StartDaemonEnv(daemonBin, path, []string{"NOTIFY_SOCKET=" + sd.sock, "WATCHDOG_USEC=200000"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		d.Kill()
		if t.Failed() {
			t.Logf("nftknockd log:\n%s", d.Log())
		}
	}()
	if _, err := lab.Run(l.Server, "nft", "list", "table", "inet", "nftknock"); err != nil {
		t.Fatalf("no table while the first notification waits: %v", err)
	}
	sd.release()

	ready := sd.next(t, "READY=1", 10*time.Second)
	if ready.tableErr != nil {
		t.Fatalf("READY=1 arrived before the table was installed: %v", ready.tableErr)
	}
	if !strings.Contains(ready.msg, "STATUS=table inet nftknock, NFLOG group 7113, doors: ssh\n") {
		t.Errorf("READY=1 without the status line: %q", ready.msg)
	}

	// WATCHDOG_USEC=200000: a ping every 100ms.
	pings := 0
	for _, m := range sd.all(time.Second) {
		if m != "WATCHDOG=1\n" {
			t.Errorf("unexpected notification %q while idle", m)
		}
		pings++
	}
	if pings < 2 {
		t.Errorf("%d WATCHDOG=1 in a second with WATCHDOG_USEC=200000, want at least 2", pings)
	}

	// A reload that is applied.
	if err := svcWriteFile(path, strings.Replace(sshDoor("5s", "30s"), "9000:tcp", "9100:tcp", 1), 0o600); err != nil {
		t.Fatal(err)
	}
	noErr(t, d.Signal(syscall.SIGHUP))
	reloading := sd.next(t, "RELOADING=1", 5*time.Second)
	if !strings.Contains(reloading.msg, "\nMONOTONIC_USEC=") {
		t.Errorf("RELOADING=1 without MONOTONIC_USEC: %q", reloading.msg)
	}
	if r := sd.next(t, "READY=1", 5*time.Second); r.tableErr != nil {
		t.Errorf("table missing at READY=1 after reload: %v", r.tableErr)
	}
	if err := d.WaitLog("reloaded", time.Second); err != nil {
		t.Error(err)
	}
	if rs, _ := lab.Run(l.Server, "nft", "list", "table", "inet", "nftknock"); !strings.Contains(rs, "dport 9100") {
		t.Errorf("reloaded ruleset has no knock on 9100:\n%s", rs)
	}

	// A reload refused for the file's permissions: READY=1 all the same,
	// and the running ruleset stays.
	before, _ := lab.Run(l.Server, "nft", "list", "table", "inet", "nftknock")
	noErr(t, os.Chmod(path, 0o666))
	noErr(t, d.Signal(syscall.SIGHUP))
	sd.next(t, "RELOADING=1", 5*time.Second)
	sd.next(t, "READY=1", 5*time.Second)
	if err := d.WaitLog("reload refused", time.Second); err != nil {
		t.Error(err)
	}
	if !strings.Contains(d.Log(), "chmod go-w "+path) {
		t.Errorf("the refused reload does not name the fix `chmod go-w %s`:\n%s", path, d.Log())
	}
	if after, _ := lab.Run(l.Server, "nft", "list", "table", "inet", "nftknock"); svcStripCounters(after) != svcStripCounters(before) {
		t.Errorf("a refused reload changed the ruleset:\n%s\n---\n%s", before, after)
	}

	noErr(t, d.Signal(syscall.SIGTERM))
	sd.next(t, "STOPPING=1", 5*time.Second)
	if err := d.Wait(10 * time.Second); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
}

// TestServiceNotReadyWhenNFLOGBusy: a daemon that cannot bind its NFLOG
// group never says READY=1 (nor touches the running daemon's table).
func TestServiceNotReadyWhenNFLOGBusy(t *testing.T) {
	l := newLab(t)
	startDaemon(t, l, writeConfig(t, "", sshDoor("5s", "30s")))
	sd := newFakeSystemd(t, l, false)
	other := writeConfig(t, "", "table = \"second\"\n"+strings.Replace(sshDoor("5s", "30s"), "7000:tcp", "7001:tcp", 1))
	d2, err := l.StartDaemonEnv(daemonBin, other, []string{"NOTIFY_SOCKET=" + sd.sock})
	if err == nil {
		d2.Kill()
		t.Fatal("a second daemon on the same NFLOG group started")
	}
	for _, m := range sd.all(200 * time.Millisecond) {
		if strings.Contains(m, "READY=1") {
			t.Errorf("a daemon that failed to bind its NFLOG group notified %q", m)
		}
	}
	if _, err := lab.Run(l.Server, "nft", "list", "table", "inet", "second"); err == nil {
		t.Error("the refused daemon installed its table")
	}
}

// TestServiceRefusesUnsafeConfig: a config that group or others can write,
// or that root does not own, stops the daemon before it touches anything;
// -check says the same; the error names the file and the fix.
func TestServiceRefusesUnsafeConfig(t *testing.T) {
	l := newLab(t)
	for _, tc := range []struct {
		name string
		mod  func(path string) error
		want string
	}{
		{"group-writable", func(p string) error { return os.Chmod(p, 0o660) }, "chmod go-w %[1]s"},
		{"world-writable", func(p string) error { return os.Chmod(p, 0o606) }, "chmod go-w %[1]s"},
		{"not root's", func(p string) error { return os.Chown(p, 4242, 4242) }, "chown root:root %[1]s"},
		{"in a writable directory", func(p string) error { return os.Chmod(filepath.Dir(p), 0o777) }, "chmod go-w %[2]s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, "", sshDoor("5s", "30s"))
			noErr(t, tc.mod(path))
			fix := fmt.Sprintf(tc.want, path, filepath.Dir(path))
			d, err := l.StartDaemon(daemonBin, path)
			if err == nil {
				d.Kill()
				t.Fatal("the daemon started with an unsafe config")
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), fix) {
				t.Errorf("the daemon's error does not name %s and the fix %q:\n%v", path, fix, err)
			}
			if !strings.Contains(err.Error(), "exited (exit status 1)") {
				t.Errorf("want exit status 1: %v", err)
			}
			if _, err := lab.Run(l.Server, "nft", "list", "table", "inet", "nftknock"); err == nil {
				t.Error("the refused daemon installed its table")
			}
			out, err := exec.Command(daemonBin, "-check", "-config", path).CombinedOutput()
			if err == nil || !strings.Contains(string(out), fix) {
				t.Errorf("-check on an unsafe config: %v\n%s", err, out)
			}
		})
	}
}

func noErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func svcWriteFile(path, data string, mode os.FileMode) error {
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		return err
	}
	return os.Chmod(path, mode)
}

// svcStripCounters drops the counter values, which packets may change.
func svcStripCounters(ruleset string) string {
	var b strings.Builder
	for _, line := range strings.Split(ruleset, "\n") {
		if i := strings.Index(line, "counter packets"); i >= 0 {
			if j := strings.Index(line[i:], " bytes "); j >= 0 {
				rest := line[i+j+len(" bytes "):]
				if k := strings.IndexByte(rest, ' '); k >= 0 {
					rest = rest[k:]
				} else {
					rest = ""
				}
				line = line[:i] + "counter" + rest
			}
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}

// TestUnitVerifies runs `systemd-analyze verify` on the unit, with
// ExecStart= pointed at the freshly built daemon (verify checks that the
// binaries exist) and the man pages it names on MANPATH (verify checks
// those too); then again next to a unit ordered like cloud-init.service,
// after network-pre.target and before sysinit.target, to show that the
// unit makes no ordering cycle there.
func TestUnitVerifies(t *testing.T) {
	nstest.Require(t, "systemd-analyze", "man")
	unit, err := os.ReadFile("../cmd/nftknockd/nftknockd.service")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	text := strings.ReplaceAll(string(unit), "/usr/sbin/nftknockd", daemonBin)
	noErr(t, os.WriteFile(filepath.Join(dir, "nftknockd.service"), []byte(text), 0o644))
	man := filepath.Join(dir, "man")
	for _, page := range []string{"nftknockd.8", "nftknock.1", "nftknock.toml.5"} {
		section := filepath.Join(man, "man"+page[len(page)-1:])
		noErr(t, os.MkdirAll(section, 0o755))
		data, err := os.ReadFile(filepath.Join("..", "man", page))
		noErr(t, err)
		noErr(t, os.WriteFile(filepath.Join(section, page), data, 0o644))
	}
	verify := func(units ...string) (string, error) {
		cmd := exec.Command("systemd-analyze", append([]string{"verify", "--man=yes"}, units...)...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "MANPATH="+man)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := verify("./nftknockd.service"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	// Without its man pages, verify must fail: the check is live.
	cmd := exec.Command("systemd-analyze", "verify", "--man=yes", "./nftknockd.service")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "MANPATH="+filepath.Join(dir, "nowhere"))
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("verify passed with the man pages missing: %s", out)
	}

	cloudish := `[Unit]
Description=ordered like cloud-init.service
DefaultDependencies=no
Wants=network-pre.target
After=network-pre.target
Before=sysinit.target
[Service]
Type=oneshot
ExecStart=/bin/true
`
	noErr(t, os.WriteFile(filepath.Join(dir, "cloudish.service"), []byte(cloudish), 0o644))
	if out, err := verify("./nftknockd.service", "./cloudish.service"); err != nil || strings.Contains(out, "cycle") {
		t.Errorf("systemd-analyze verify with a cloud-init-like unit: %v\n%s", err, out)
	}
}
