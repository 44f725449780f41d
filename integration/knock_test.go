package integration

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nftknock/nftknock/integration/lab"
)

// TestKnockOpensAndKernelExpires walks the whole path for IPv4 and IPv6:
// filtered before, the right knock from the stock client opens port 22 to
// that address alone, the set shows the element with its timeout, the
// kernel expires it, and a connection made while open survives.
func TestKnockOpensAndKernelExpires(t *testing.T) {
	l := newLab(t)
	startDaemon(t, l, writeConfig(t, "", sshDoor("5s", "3s")))

	mustFiltered(t, l, lab.ClientV4, ssh4)
	mustFiltered(t, l, lab.ClientV6, ssh6)

	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	mustOpen(t, l, lab.ClientV4, ssh4)
	e := element(t, l, "ssh_v4", lab.ClientV4)
	if e.Timeout != 3*time.Second || e.Expires <= 0 || e.Expires > 3*time.Second {
		t.Errorf("element %+v: want timeout 3s and 0 < expires <= 3s", e)
	}
	// The grant is for that source address alone, and for IPv4 alone.
	mustFiltered(t, l, lab.Client2V4, ssh4)
	mustFiltered(t, l, lab.ClientV6, ssh6)

	mustKnock(t, l, true, 0, "7000", "8000:udp", "9000")
	mustOpen(t, l, lab.ClientV6, ssh6)
	element(t, l, "ssh_v6", lab.ClientV6)
	mustFiltered(t, l, lab.Client2V6, ssh6)

	// A connection made while open must outlive the grant.
	conn, err := l.Dial(lab.ClientV4, ssh4, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	time.Sleep(3500 * time.Millisecond)
	noElements(t, l, "ssh_v4")
	noElements(t, l, "ssh_v6")
	mustFiltered(t, l, lab.ClientV4, ssh4)
	mustFiltered(t, l, lab.ClientV6, ssh6)

	conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte("still here")); err != nil {
		t.Fatalf("established connection broke after the grant expired: %v", err)
	}
	buf := make([]byte, len("still here"))
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "still here" {
		t.Fatalf("established connection broke after the grant expired: %q, %v", buf, err)
	}
}

// TestWrongKnocksStayClosed: wrong orders, a knock slower than
// seq_timeout, and knocks from another address open nothing.
func TestWrongKnocksStayClosed(t *testing.T) {
	l := newLab(t)
	d := startDaemon(t, l, writeConfig(t, "", sshDoor("1s", "30s")))

	for _, seq := range [][]string{
		{"9000", "8000:udp", "7000"},
		{"7000", "9000", "8000:udp"},
		{"7000", "8000:tcp", "9000"},         // right port, wrong protocol
		{"7000", "8000:udp", "7000", "9000"}, // restarts at step 1, then 9000 is wrong
	} {
		mustKnock(t, l, false, 0, seq...)
		mustFiltered(t, l, lab.ClientV4, ssh4)
	}
	if err := d.WaitLog("knock reset: wrong knock", time.Second); err != nil {
		t.Error(err)
	}

	// 3 knocks 700 ms apart take 1.4 s: longer than seq_timeout.
	mustKnock(t, l, false, 700, "7000", "8000:udp", "9000")
	mustFiltered(t, l, lab.ClientV4, ssh4)
	if err := d.WaitLog("knock timed out", time.Second); err != nil {
		t.Error(err)
	}
	noElements(t, l, "ssh_v4")
}

// TestRepeatedStepOpens: a client that sends a knock twice (or a
// retransmitted SYN) is not reset by it.
func TestRepeatedStepOpens(t *testing.T) {
	l := newLab(t)
	startDaemon(t, l, writeConfig(t, "", sshDoor("5s", "30s")))
	mustKnock(t, l, false, 0, "7000", "7000", "8000:udp", "8000:udp", "9000")
	mustOpen(t, l, lab.ClientV4, ssh4)
}

// TestOtherClientKeepsProgress: one source's wrong knock does not disturb
// another source that is half-way through (knockd loses it).
func TestOtherClientKeepsProgress(t *testing.T) {
	l := newLab(t)
	startDaemon(t, l, writeConfig(t, "", sshDoor("10s", "30s")))
	// v6 client starts, v4 client fails in between, v6 client finishes.
	mustKnock(t, l, true, 0, "7000", "8000:udp")
	mustKnock(t, l, false, 0, "7000", "9000")
	mustKnock(t, l, true, 0, "9000")
	mustOpen(t, l, lab.ClientV6, ssh6)
	mustFiltered(t, l, lab.ClientV4, ssh4)
}

// TestRepeatKnockRestartsTimer: knocking again while granted restarts the
// element's timer (re-adding alone would not refresh it in the kernel).
func TestRepeatKnockRestartsTimer(t *testing.T) {
	l := newLab(t)
	startDaemon(t, l, writeConfig(t, "", sshDoor("5s", "4s")))
	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	mustOpen(t, l, lab.ClientV4, ssh4)
	time.Sleep(2500 * time.Millisecond)
	before := element(t, l, "ssh_v4", lab.ClientV4)
	if before.Expires > 2*time.Second {
		t.Fatalf("element %+v: expected under 2s left", before)
	}
	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	deadline := time.Now().Add(time.Second)
	for {
		after := element(t, l, "ssh_v4", lab.ClientV4)
		if after.Expires > 3*time.Second {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("repeat knock did not restart the timer: %+v before, %+v after", before, after)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Past the first grant's end, still open.
	time.Sleep(2 * time.Second)
	mustOpen(t, l, lab.ClientV4, ssh4)
}

// TestRestartKeepsGrant: SIGTERM leaves the table (fail closed), a
// restart keeps a live grant without extending it, and -remove deletes
// the table.
func TestRestartKeepsGrant(t *testing.T) {
	l := newLab(t)
	cfg := writeConfig(t, "", sshDoor("5s", "6s"))
	d, err := l.StartDaemon(daemonBin, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Kill()
	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	mustOpen(t, l, lab.ClientV4, ssh4)
	if err := d.Stop(); err != nil {
		t.Fatalf("SIGTERM: want exit 0: %v\n%s", err, d.Log())
	}

	// Stopped: the table stays, the grant stays, others stay filtered.
	before := element(t, l, "ssh_v4", lab.ClientV4)
	mustOpen(t, l, lab.ClientV4, ssh4)
	mustFiltered(t, l, lab.Client2V4, ssh4)

	startDaemon(t, l, cfg)
	after := element(t, l, "ssh_v4", lab.ClientV4)
	if after.Expires > before.Expires || after.Timeout != before.Timeout {
		t.Errorf("restart extended the grant: %+v before, %+v after", before, after)
	}
	mustOpen(t, l, lab.ClientV4, ssh4)
	time.Sleep(after.Expires + 300*time.Millisecond)
	noElements(t, l, "ssh_v4")
	mustFiltered(t, l, lab.ClientV4, ssh4)
}

func TestRemove(t *testing.T) {
	l := newLab(t)
	cfg := writeConfig(t, "", sshDoor("5s", "30s"))
	d, err := l.StartDaemon(daemonBin, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Stop(); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	mustFiltered(t, l, lab.ClientV4, ssh4)
	if out, err := lab.Run(l.Server, daemonBin, "-remove", "-config", cfg); err != nil {
		t.Fatalf("-remove: %v %s", err, out)
	}
	if out, err := lab.Run(l.Server, "nft", "list", "tables"); err != nil || strings.Contains(out, "nftknock") {
		t.Errorf("table still there after -remove: %q %v", out, err)
	}
	mustOpen(t, l, lab.ClientV4, ssh4)
}

// TestReload: SIGHUP takes a changed sequence; a bad config is refused by
// -check and by SIGHUP, and the old one stays live.
func TestReload(t *testing.T) {
	l := newLab(t)
	cfg := writeConfig(t, "", sshDoor("5s", "30s"))
	d := startDaemon(t, l, cfg)

	writeConfig(t, cfg, strings.Replace(sshDoor("5s", "30s"), `"7000:tcp", "8000:udp", "9000:tcp"`, `"7100:udp", "7200:tcp"`, 1))
	if err := d.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if err := d.WaitLog("reloaded", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	mustFiltered(t, l, lab.ClientV4, ssh4)
	mustKnock(t, l, false, 0, "7100:udp", "7200")
	mustOpen(t, l, lab.ClientV4, ssh4)

	bad := strings.Replace(sshDoor("5s", "30s"), `"7000:tcp", "8000:udp", "9000:tcp"`, `"7300", "99999"`, 1)
	writeConfig(t, cfg, bad)
	out, err := exec.Command(daemonBin, "-check", "-config", cfg).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Errorf("-check on a bad config: %v, want exit 1", err)
	}
	if !strings.Contains(string(out), cfg) || !strings.Contains(string(out), `door "ssh": sequence[1]: "99999": port 99999 is out of range`) {
		t.Errorf("-check output does not name file, door, field and problem: %s", out)
	}
	if err := d.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if err := d.WaitLog("reload refused", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// The old config still runs: its sequence opens IPv6 too.
	mustKnock(t, l, true, 0, "7100:udp", "7200")
	mustOpen(t, l, lab.ClientV6, ssh6)
	mustKnock(t, l, true, 0, "7300")
	out2, _ := lab.Run(l.Server, "nft", "list", "chain", "inet", "nftknock", "input")
	if strings.Contains(out2, "7300") {
		t.Errorf("refused config reached the kernel:\n%s", out2)
	}
}

// TestSecondDaemonRefused: a second nftknockd on the same NFLOG group is
// told so and does not touch the running one's table.
func TestSecondDaemonRefused(t *testing.T) {
	l := newLab(t)
	cfg := writeConfig(t, "", sshDoor("5s", "30s"))
	startDaemon(t, l, cfg)
	before, _ := lab.Run(l.Server, "nft", "list", "ruleset")

	other := writeConfig(t, "", strings.Replace(sshDoor("5s", "30s"), "7000:tcp", "7001:tcp", 1))
	d2, err := l.StartDaemon(daemonBin, other)
	if err == nil {
		d2.Kill()
		t.Fatal("a second daemon on the same NFLOG group started")
	}
	if !strings.Contains(err.Error(), "already bound") {
		t.Errorf("second daemon's error does not say the group is taken: %v", err)
	}
	after, _ := lab.Run(l.Server, "nft", "list", "ruleset")
	if before != after {
		t.Errorf("second daemon changed the ruleset:\n%s\n---\n%s", before, after)
	}
	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	mustOpen(t, l, lab.ClientV4, ssh4)
}

// TestCheckAndPrintConfig: -print-config prints a config that -check
// accepts, and neither touches the firewall.
func TestCheckAndPrintConfig(t *testing.T) {
	l := newLab(t)
	out, err := lab.Run(l.Server, daemonBin, "-print-config")
	if err != nil {
		t.Fatal(err)
	}
	// It names files in /etc/nftknock; -check reads them, so the test
	// makes them in a directory of its own.
	dir := t.TempDir()
	key := []byte("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n")
	for name, data := range map[string][]byte{"vpn.key": key, "rot.key": key, "fw.key": key, "fw.hmac": key,
		"once.seq": []byte("7300:udp,7400,7500:udp\n")} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The server's key of the public-key SPA door: the reference names the
	// host key, which this machine need not have.
	hostKey := filepath.Join(dir, "host.key")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostKey).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	local := strings.ReplaceAll(out, "/etc/nftknock/", dir+"/")
	local = strings.ReplaceAll(local, "/etc/ssh/ssh_host_ed25519_key", hostKey)
	path := writeConfig(t, "", local)
	if out, err := lab.Run(l.Server, daemonBin, "-check", "-config", path); err != nil || !strings.Contains(out, "OK") {
		t.Errorf("-check on -print-config output: %v %s", err, out)
	}
	// The same config without its files: -check names each.
	missing := writeConfig(t, "", out)
	if out, err := lab.Run(l.Server, daemonBin, "-check", "-config", missing); err == nil ||
		!strings.Contains(out, `door "vpn": key_file: /etc/nftknock/vpn.key`) || !strings.Contains(out, `door "once": one_time_sequences`) {
		t.Errorf("-check of the reference config without its files: %v %s", err, out)
	}
	if rs, err := lab.Run(l.Server, "nft", "list", "ruleset"); err != nil || strings.TrimSpace(rs) != "" {
		t.Errorf("-check or -print-config changed the ruleset: %q %v", rs, err)
	}
}
