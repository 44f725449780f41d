package integration

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nftknock/nftknock/integration/boot"
	"github.com/nftknock/nftknock/integration/nstest"
)

// The service as it really runs, tested black-box: the .deb installed in
// a booted Debian (systemd-nspawn, systemd as PID 1, the journal, Debian's
// sshd), driven by an administrator over SSH from the host's side of the
// container's veth, knocked on by the real clients. Only what a user sees
// is asserted on: systemctl, journalctl, nft, the files, and whether a
// port lets a new connection in.

// bootDoors is the config the administrator writes: one door of every
// kind, each opening a port of its own on the container's sshd, so that
// a door can only be seen to open what it opens. sequence is the ssh
// door's knock and hooks are its on_open/on_close; the rest is fixed.
func bootDoors(sequence, openFor string) string {
	return fmt.Sprintf(`# written by TestServiceUnderBootedSystemd
# sshd's own host key: clients seal public-key knocks to it.
server_key_file = "/etc/ssh/ssh_host_ed25519_key"

[[door]]
name = "ssh"
sequence = %s
close_sequence = ["9000:tcp", "8000:udp", "7000:tcp"]
seq_timeout = "10s"
open = ["22:tcp"]
open_for = %q
# The sandbox lets a hook log (AF_UNIX): it runs in the unit's cgroup.
on_open = ["/usr/bin/logger", "-t", "nftknock-hook", "on_open", "{door}", "{src}"]
on_close = ["/usr/bin/logger", "-t", "nftknock-hook", "on_close", "{door}", "{src}"]

[[door]]
name = "once"
one_time_sequences = "/etc/nftknock/once.seq"
seq_timeout = "10s"
open = ["2201:tcp"]
open_for = "10s"

[[door]]
name = "ping"
sequence = ["33:icmp", "44:icmp", "55:icmp"]
seq_timeout = "10s"
open = ["2202:tcp"]
open_for = "10s"

[[door]]
name = "spa"
spa_port = "62201:udp"
key_file = "/etc/nftknock/spa.key"
open = ["2203:tcp"]
open_for = "10s"

[[door]]
name = "rot"
sequence_key_file = "/etc/nftknock/rot.key"
rotate_every = %q
seq_timeout = "3s"
open = ["2204:tcp"]
open_for = "10s"

# The key the administrator logs in with, from root's authorized_keys
# (ProtectHome=read-only: root's own files are readable).
[[door]]
name = "team"
spa_port = "62203:udp"
authorized_keys = ["/root/.ssh/authorized_keys"]
open = ["2205:tcp"]
open_for = "10s"
`, sequence, openFor, bootRotateEvery)
}

const (
	// bootOpenFor is the ssh door's open_for: long enough for a restart
	// of the daemon (RestartSec=2s) inside one grant, short enough to
	// wait out.
	bootOpenFor = 10 * time.Second
	// bootRotateEvery is the rotating door's window.
	bootRotateEvery = 4 * time.Second
	oneTimeFile     = "7101,7102:udp,7103\n7201,7202:udp,7203\n"
)

var (
	firstSequence  = []string{"7000", "8000:udp", "9000"}
	secondSequence = []string{"7500", "8500:udp", "9500"}
	// brokenSequence is in a config that does not validate.
	brokenSequence = []string{"7600", "8600:udp", "9600"}
)

// bootTest is the state the steps of TestServiceUnderBootedSystemd share.
type bootTest struct {
	top     *testing.T // the whole test: the administrator's session lives as long
	m       *boot.Machine
	ssh     *boot.SSH
	admin   *boot.Session // the administrator's session, on port 22
	client  string        // the repo's nftknock, on the host side
	keys    string        // the client's copies of the door keys
	journal journal       // journalctl -u nftknockd
	hooks   journal       // what the ssh door's hooks log
}

// TestServiceUnderBootedSystemd: install, enable, every door kind,
// reloads, the distribution's nftables restart, a killed daemon, stop,
// reboot, upgrade and purge, in that order, each step asserted before the
// next.
func TestServiceUnderBootedSystemd(t *testing.T) {
	nstest.Require(t, append(append([]string{"make", "go", "dpkg", "dpkg-deb", "knock", "ping"}, boot.Tools...), boot.SSHTools...)...)
	start := time.Now()
	dir := t.TempDir()
	debA, debB, versionB := buildDebs(t, dir)

	rootStart := time.Now()
	root, err := boot.CachedRoot(boot.Packages, boot.HostMirror(), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("root ready in %s", time.Since(rootStart).Round(time.Second))
	m := boot.New(t, root)
	bt := &bootTest{top: t, m: m, ssh: boot.NewSSH(t, m), client: filepath.Join(filepath.Dir(debA), "nftknock"), keys: filepath.Join(dir, "keys")}
	noErr(t, os.Mkdir(bt.keys, 0o700))
	// Debian's sshd, listening on the port of every door.
	m.WriteFile(t, "/etc/ssh/sshd_config.d/sdboot.conf",
		"Port 22\nPort 2201\nPort 2202\nPort 2203\nPort 2204\nPort 2205\nPasswordAuthentication no\n", 0o644)
	m.Boot(t, nil)
	bt.logInAsAdmin(t)
	defer func() { t.Logf("TestServiceUnderBootedSystemd took %s", time.Since(start).Round(time.Second)) }()

	steps := []struct {
		name string
		run  func(*testing.T)
	}{
		{"InstallLeavesItDisabledAndStopped", func(t *testing.T) { bt.install(t, debA) }},
		{"SecurityExposureAtMost1.7", bt.securityExposure},
		{"EnableNowGatesPort22", bt.enableNow},
		{"SandboxAsTheUnitSays", bt.sandbox},
		{"KnockOpensIPv4AndIPv6AndTheJournalSaysSo", bt.knockOpensBoth},
		{"GrantExpiresOpenSessionSurvives", bt.expiry},
		{"CloseSequenceEndsTheGrant", bt.closeSequence},
		{"OneTimeSequenceUsedUpWithoutACrash", bt.oneTime},
		{"ICMPKnockWithPing", bt.icmp},
		{"SPAWithNftknockSpa", bt.spa},
		{"RotatingDoorWithNftknockKnock", bt.rotating},
		{"PublicKeySPAWithTheHostKeyAndRootsKey", bt.keySPA},
		{"ReloadTakesAChangedSequence", bt.reloadChanged},
		{"ReloadOfABrokenConfigFailsAndTheOldStays", bt.reloadBroken},
		{"RestartOfNftablesPassesTheOwnedTableBy", bt.restartNftables},
		{"KilledDaemonLeavesTableAndGrantAndIsRestarted", bt.kill},
		{"StopLeavesTheGateUp", bt.stop},
		{"RebootGateUpBeforeSSHListens", bt.reboot},
		{"UpgradeRestartsAndKeepsTheConfig", func(t *testing.T) { bt.upgrade(t, debB, versionB) }},
		{"PurgeRemovesTableAndConfig", bt.purge},
	}
	for _, s := range steps {
		stepStart := time.Now()
		ok := t.Run(s.name, s.run)
		t.Logf("%s: %s", s.name, time.Since(stepStart).Round(100*time.Millisecond))
		if !ok {
			if out, err := bt.admin.Run("journalctl -b -u nftknockd --no-pager -n 60", ""); err == nil {
				t.Logf("journalctl -u nftknockd:\n%s", out)
			}
			t.FailNow()
		}
	}
}

// buildDebs runs `make deb` twice in scratch directories: the tree's
// version, and the same with a higher version for the upgrade.
func buildDebs(t *testing.T, dir string) (debA, debB, versionB string) {
	t.Helper()
	build := func(sub string, args ...string) string {
		bin := filepath.Join(dir, sub)
		runMake(t, append([]string{"deb", "BIN=" + bin}, args...)...)
		debs, _ := filepath.Glob(filepath.Join(bin, "nftknock_*.deb"))
		if len(debs) != 1 {
			t.Fatalf("make deb BIN=%s made %v", bin, debs)
		}
		return debs[0]
	}
	debA = build("a")
	upgrade := gitVersion(t) + "-upgrade"
	debB = build("b", "VERSION="+upgrade)
	a, b := debVersion(gitVersion(t)), debVersion(upgrade)
	if err := exec.Command("dpkg", "--compare-versions", b, "gt", a).Run(); err != nil {
		t.Fatalf("version %s does not sort after %s: it would be no upgrade", b, a)
	}
	return debA, debB, upgrade
}

// logInAsAdmin opens the administrator's session on port 22, which lasts
// until the machine goes down or the whole test ends.
func (bt *bootTest) logInAsAdmin(t *testing.T) {
	t.Helper()
	s, err := bt.ssh.Open(bt.top, boot.GuestV4, 22)
	if err != nil {
		t.Fatal(err)
	}
	bt.admin, bt.journal, bt.hooks = s, newJournal(s, "-u nftknockd"), newJournal(s, "-t nftknock-hook")
}

// open logs in afresh and keeps the session until the step ends.
func (bt *bootTest) open(t *testing.T, addr netip.Addr, port int) *boot.Session {
	t.Helper()
	s, err := bt.ssh.Open(t, addr, port)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// sh runs a command as the administrator and fails the test if it fails.
func (bt *bootTest) sh(t *testing.T, cmd string) string {
	t.Helper()
	out, err := bt.admin.Run(cmd, "")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// value runs a command that prints one value (it may exit non-zero, as
// systemctl is-active does) and returns it trimmed.
func (bt *bootTest) value(t *testing.T, cmd string) string {
	t.Helper()
	out, _ := bt.admin.Run(cmd, "")
	return strings.TrimSpace(out)
}

func (bt *bootTest) mainPID(t *testing.T) string {
	t.Helper()
	return bt.value(t, "systemctl show -P MainPID nftknockd")
}

// writeConfig writes the daemon's config as an administrator does.
func (bt *bootTest) writeConfig(t *testing.T, toml string) {
	t.Helper()
	if _, err := bt.admin.Run("cat > /etc/nftknock/nftknock.toml && chmod 600 /etc/nftknock/nftknock.toml", toml); err != nil {
		t.Fatal(err)
	}
}

// reload runs `systemctl reload` and, once it returned 0, waits for the
// daemon's own word: systemd 252 may end the job before the daemon's
// RELOADING=1 has reached it, and so before the reload is done.
func (bt *bootTest) reload(t *testing.T) {
	t.Helper()
	bt.journal.mark(t)
	bt.sh(t, "systemctl reload nftknockd")
	if !strings.Contains(bt.journal.read(t), "\treloaded\t") {
		t.Log("systemctl reload returned before the daemon logged its reload")
	}
	bt.journal.wait(t, "\treloaded\t", 5*time.Second)
}

// knock runs the stock knock client from the host side.
func (bt *bootTest) knock(t *testing.T, to netip.Addr, ports ...string) {
	t.Helper()
	argv := []string{"netns", "exec", bt.m.NetNS, "knock", "-d", "50"}
	if to.Is6() {
		argv = append(argv, "-6")
	}
	if out, err := exec.Command("ip", append(append(argv, to.String()), ports...)...).CombinedOutput(); err != nil {
		t.Fatalf("knock %s %v: %v: %s", to, ports, err, out)
	}
}

// hostSide runs a client on the host side of the veth.
func (bt *bootTest) hostSide(t *testing.T, argv ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", bt.m.NetNS}, argv...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// mustLogIn logs in afresh to addr:port with ssh: it must get in. The
// knock has just been sent; the wait allows for a loaded machine (how
// fast a door opens is the benchmarks' business).
func (bt *bootTest) mustLogIn(t *testing.T, addr netip.Addr, port int) {
	t.Helper()
	if err := bt.waitOpen(addr, port, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	out, err := bt.ssh.Run(addr, port, "hostname", "")
	if err != nil {
		t.Fatalf("ssh to %s port %d after the knock: %v", addr, port, err)
	}
	if got := strings.TrimSpace(out); got != bt.m.Name {
		t.Fatalf("ssh to %s port %d: logged in to %q, want %q", addr, port, got, bt.m.Name)
	}
}

// waitOpen retries a TCP connection until it is accepted.
func (bt *bootTest) waitOpen(addr netip.Addr, port int, within time.Duration) error {
	to := netip.AddrPortFrom(addr, uint16(port))
	deadline := time.Now().Add(within)
	var last error
	for time.Now().Before(deadline) {
		c, err := bt.m.Dial(to, 100*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		last = err
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("a new connection to %s is not let in within %s: %v", to, within, last)
}

// mustFiltered: a new connection to addr:port goes unanswered for a
// second (dropped, not refused: sshd listens there).
func (bt *bootTest) mustFiltered(t *testing.T, addr netip.Addr, port int) {
	t.Helper()
	to := netip.AddrPortFrom(addr, uint16(port))
	c, err := bt.m.Dial(to, time.Second)
	if err == nil {
		c.Close()
		t.Fatalf("a new connection to %s was let in, want it filtered", to)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("a new connection to %s: %v, want it dropped (a timeout)", to, err)
	}
}

// hasGrant reports whether the ssh door's set holds addr now.
func (bt *bootTest) hasGrant(t *testing.T, addr netip.Addr) bool {
	t.Helper()
	set := "ssh_v4"
	if addr.Is6() {
		set = "ssh_v6"
	}
	out := bt.sh(t, "nft list set inet nftknock "+set)
	return regexp.MustCompile(`[{ ,]` + regexp.QuoteMeta(addr.String()) + ` `).MatchString(out)
}

// waitNoGrant waits until the ssh door's set no longer holds addr.
func (bt *bootTest) waitNoGrant(t *testing.T, addr netip.Addr, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for bt.hasGrant(t, addr) {
		if time.Now().After(deadline) {
			t.Fatalf("%s still has a grant after %s", addr, within)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// journal reads the journal as the administrator, from a cursor, so that
// each step sees what happened since its mark: `journalctl -u nftknockd`,
// or with a syslog identifier, the lines the hooks log. (Those are not
// always under -u: journald finds a line's unit from the sender's cgroup,
// and logger may be gone before it looks.)
type journal struct {
	s     *boot.Session
	match string // -u UNIT or -t IDENTIFIER
	seen  strings.Builder
}

func newJournal(s *boot.Session, match string) journal {
	return journal{s: s, match: match}
}

// journalCursors is where the administrator's journal cursors are kept:
// journalCursors + "-unftknockd.cursor" and the like.
const journalCursors = "/root/sdboot-journal"

func (j *journal) read(t *testing.T) string {
	t.Helper()
	cursor := journalCursors + "-" + strings.NewReplacer(" ", "", "-", "").Replace(j.match) + ".cursor"
	// With no line yet, there is no cursor to write: journalctl exits 1.
	out, err := j.s.Run("journalctl -b "+j.match+" -o cat --no-pager --cursor-file="+cursor+" || ! test -e "+cursor, "")
	if err != nil {
		t.Fatal(err)
	}
	j.seen.WriteString(out)
	return j.seen.String()
}

// mark forgets what was read so far: wait sees only later lines.
func (j *journal) mark(t *testing.T) {
	t.Helper()
	j.read(t)
	j.seen.Reset()
}

// wait returns the lines since mark once one of them holds want.
func (j *journal) wait(t *testing.T, want string, within time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := j.read(t)
		if strings.Contains(got, want) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("journalctl %s has no %q within %s; since the mark:\n%s", j.match, want, within, got)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (bt *bootTest) install(t *testing.T, deb string) {
	data, err := os.ReadFile(deb)
	noErr(t, err)
	if _, err := bt.admin.Run("cat > /root/nftknock.deb", string(data)); err != nil {
		t.Fatal(err)
	}
	out := bt.sh(t, "dpkg -i /root/nftknock.deb 2>&1")
	if !strings.Contains(out, "installed but not enabled") {
		t.Errorf("dpkg -i does not say the service is not enabled:\n%s", out)
	}
	if got := bt.value(t, "systemctl is-enabled nftknockd"); got != "disabled" {
		t.Errorf("after install: is-enabled %q, want disabled", got)
	}
	if got := bt.value(t, "systemctl is-active nftknockd"); got != "inactive" {
		t.Errorf("after install: is-active %q, want inactive", got)
	}
	if out, err := bt.admin.Run("nft list table inet nftknock", ""); err == nil {
		t.Errorf("after install, before enable, the table is there:\n%s", out)
	}
	// Still no gate: a new connection to sshd gets in without a knock.
	bt.mustLogIn(t, boot.GuestV4, 22)
}

func (bt *bootTest) securityExposure(t *testing.T) {
	out := bt.sh(t, "systemd-analyze security --no-pager nftknockd")
	m := regexp.MustCompile(`Overall exposure level for nftknockd\.service: ([0-9.]+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security says:\n%s", out)
	}
	t.Logf("systemd-analyze security nftknockd: %s", m[1])
	if level, err := strconv.ParseFloat(m[1], 64); err != nil || level > 1.7 {
		t.Errorf("exposure level %s, want at most 1.7:\n%s", m[1], out)
	}
}

func (bt *bootTest) enableNow(t *testing.T) {
	bt.writeConfig(t, bootDoors(tomlList(firstSequence...), bootOpenFor.String()))
	if _, err := bt.admin.Run("umask 077 && cat > /etc/nftknock/once.seq", oneTimeFile); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"spa", "rot"} {
		secret := bt.sh(t, "umask 077 && nftknock keygen > /etc/nftknock/"+key+".key && cat /etc/nftknock/"+key+".key")
		noErr(t, os.WriteFile(filepath.Join(bt.keys, key+".key"), []byte(secret), 0o600))
	}
	if out := bt.sh(t, "nftknockd -check"); !strings.Contains(out, "OK") {
		t.Fatalf("nftknockd -check: %s", out)
	}
	bt.sh(t, "systemctl enable --now nftknockd")
	if got := bt.value(t, "systemctl is-enabled nftknockd"); got != "enabled" {
		t.Errorf("is-enabled %q, want enabled", got)
	}
	if got := bt.value(t, "systemctl is-active nftknockd"); got != "active" {
		t.Fatalf("is-active %q, want active", got)
	}
	status := bt.value(t, "systemctl show -P StatusText nftknockd")
	if !strings.HasPrefix(status, "table inet nftknock, NFLOG group 7113, doors: ") {
		t.Errorf("status text %q", status)
	}
	for _, door := range []string{"ssh", "once", "ping", "spa", "rot", "team"} {
		if !strings.Contains(status, door) {
			t.Errorf("status text %q does not name door %s", status, door)
		}
	}
	if out := bt.sh(t, "systemctl status --no-pager nftknockd"); !strings.Contains(out, "Status: \""+status+"\"") {
		t.Errorf("systemctl status does not show the status text:\n%s", out)
	}
	// The session the administrator is in survives the gate; a new one
	// does not get through without a knock, on either family, on any
	// door's port.
	if !bt.admin.Alive() {
		t.Fatal("the administrator's session died when the gate came up")
	}
	for _, port := range []int{22, 2201, 2202, 2203, 2204} {
		bt.mustFiltered(t, boot.GuestV4, port)
	}
	bt.mustFiltered(t, boot.GuestV6, 22)
}

func (bt *bootTest) sandbox(t *testing.T) {
	pid := bt.mainPID(t)
	status := bt.sh(t, "cat /proc/"+pid+"/status")
	field := func(name string) string {
		m := regexp.MustCompile(`(?m)^` + name + `:\s*(\S+)$`).FindStringSubmatch(status)
		if m == nil {
			t.Fatalf("/proc/%s/status has no %s:\n%s", pid, name, status)
		}
		return m[1]
	}
	// CAP_NET_ADMIN is capability 12, alone: 0x1000.
	for _, f := range []string{"CapEff", "CapPrm", "CapBnd", "CapAmb"} {
		if got := field(f); got != "0000000000001000" {
			t.Errorf("%s = %s, want 0000000000001000 (cap_net_admin alone)", f, got)
		}
	}
	if got := field("NoNewPrivs"); got != "1" {
		t.Errorf("NoNewPrivs = %s, want 1", got)
	}
	if got := field("Seccomp"); got != "2" {
		t.Errorf("Seccomp = %s, want 2 (a filter)", got)
	}
}

func (bt *bootTest) knockOpensBoth(t *testing.T) {
	bt.journal.mark(t)
	bt.hooks.mark(t)
	for _, addr := range []netip.Addr{boot.GuestV4, boot.GuestV6} {
		bt.knock(t, addr, firstSequence...)
		bt.mustLogIn(t, addr, 22)
	}
	got := bt.journal.wait(t, `door opened	{"door": "ssh", "source": "`+boot.HostV6.String()+`"`, 5*time.Second)
	for _, src := range []netip.Addr{boot.HostV4, boot.HostV6} {
		for _, want := range []string{
			`knock stage reached	{"door": "ssh", "source": "` + src.String() + `", "step": "2/3"}`,
			`door opened	{"door": "ssh", "source": "` + src.String() + `"`,
		} {
			if !strings.Contains(got, want) {
				t.Errorf("the journal has no %q:\n%s", want, got)
			}
		}
	}
	// A first step is not logged: a flood of spoofed sources makes one
	// per packet (the README says so).
	if strings.Contains(got, `"step": "1/3"`) {
		t.Errorf("a first knock step is in the journal:\n%s", got)
	}
	bt.hooks.wait(t, "on_open ssh "+boot.HostV6.String(), 5*time.Second)
	if !strings.Contains(bt.hooks.seen.String(), "on_open ssh "+boot.HostV4.String()) {
		t.Errorf("the on_open hook did not log for %s:\n%s", boot.HostV4, bt.hooks.seen.String())
	}
}

func (bt *bootTest) expiry(t *testing.T) {
	bt.journal.mark(t)
	bt.hooks.mark(t)
	// Fresh grants, and a session opened under the IPv4 one.
	for _, addr := range []netip.Addr{boot.GuestV4, boot.GuestV6} {
		bt.knock(t, addr, firstSequence...)
	}
	sess := bt.open(t, boot.GuestV4, 22)
	defer sess.Close()
	for _, src := range []netip.Addr{boot.HostV4, boot.HostV6} {
		bt.waitNoGrant(t, src, bootOpenFor+3*time.Second)
	}
	bt.mustFiltered(t, boot.GuestV4, 22)
	bt.mustFiltered(t, boot.GuestV6, 22)
	if out, err := sess.Run("echo still here", ""); err != nil || strings.TrimSpace(out) != "still here" {
		t.Errorf("the session opened under the grant did not outlive it: %q %v", out, err)
	}
	bt.hooks.wait(t, "on_close ssh "+boot.HostV4.String(), 5*time.Second)
}

func (bt *bootTest) closeSequence(t *testing.T) {
	bt.journal.mark(t)
	bt.hooks.mark(t)
	bt.knock(t, boot.GuestV4, firstSequence...)
	bt.mustLogIn(t, boot.GuestV4, 22)
	bt.knock(t, boot.GuestV4, "9000", "8000:udp", "7000")
	bt.journal.wait(t, "door closed by close sequence", 5*time.Second)
	if bt.hasGrant(t, boot.HostV4) {
		t.Error("the close sequence left the grant in the set")
	}
	bt.mustFiltered(t, boot.GuestV4, 22)
	bt.hooks.wait(t, "on_close ssh "+boot.HostV4.String(), 5*time.Second)
}

func (bt *bootTest) oneTime(t *testing.T) {
	pid := bt.mainPID(t)
	bt.journal.mark(t)
	bt.knock(t, boot.GuestV4, "7101", "7102:udp", "7103")
	bt.mustLogIn(t, boot.GuestV4, 2201)
	bt.journal.wait(t, "one-time sequence used", 5*time.Second)
	if got, want := bt.sh(t, "cat /etc/nftknock/once.seq"), "#"+oneTimeFile; got != want {
		t.Errorf("once.seq after its first line was used:\n%q, want\n%q", got, want)
	}
	// The used line opens nothing any more, the next one does.
	bt.knock(t, boot.GuestV6, "7101", "7102:udp", "7103")
	bt.mustFiltered(t, boot.GuestV6, 2201)
	bt.knock(t, boot.GuestV6, "7201", "7202:udp", "7203")
	bt.mustLogIn(t, boot.GuestV6, 2201)
	bt.journal.wait(t, "one_time_sequences file has run out", 5*time.Second)
	if got, want := bt.sh(t, "cat /etc/nftknock/once.seq"), "#7101,7102:udp,7103\n#7201,7202:udp,7203\n"; got != want {
		t.Errorf("once.seq after both lines were used:\n%q, want\n%q", got, want)
	}
	if left := bt.sh(t, "ls -A /etc/nftknock"); strings.Contains(left, ".tmp") {
		t.Errorf("a temp file is left in /etc/nftknock:\n%s", left)
	}
	if got := bt.mainPID(t); got != pid {
		t.Errorf("main PID %s, was %s: the daemon did not survive the rewrite", got, pid)
	}
	if got := bt.value(t, "systemctl show -P NRestarts nftknockd"); got != "0" {
		t.Errorf("NRestarts = %s, want 0", got)
	}
}

func (bt *bootTest) icmp(t *testing.T) {
	for _, addr := range []netip.Addr{boot.GuestV4, boot.GuestV6} {
		// ping -s N sends N bytes of payload: the N of an N:icmp step.
		// The knocks are dropped like any knock, so ping gets no reply.
		for _, size := range []string{"33", "44", "55"} {
			exec.Command("ip", "netns", "exec", bt.m.NetNS, "ping", "-c", "1", "-W", "0.3", "-s", size, addr.String()).Run()
		}
		bt.mustLogIn(t, addr, 2202)
	}
}

func (bt *bootTest) spa(t *testing.T) {
	for _, addr := range []netip.Addr{boot.GuestV4, boot.GuestV6} {
		bt.hostSide(t, bt.client, "spa", "-door", "spa", "-key-file", filepath.Join(bt.keys, "spa.key"), "-p", "62201", addr.String())
		bt.mustLogIn(t, addr, 2203)
	}
}

// rotating knocks with `nftknock knock -door` until the door opens: a
// window's sequence opens once (a second knock in the window, for the
// other family, waits for the next), and a window that began while no
// daemon ran counts as used. Two windows and a bit are enough; four allow
// for a loaded machine.
func (bt *bootTest) rotating(t *testing.T) {
	for _, addr := range []netip.Addr{boot.GuestV4, boot.GuestV6} {
		deadline := time.Now().Add(4 * bootRotateEvery)
		for {
			bt.hostSide(t, bt.client, "knock", "-door", "rot", "-key-file", filepath.Join(bt.keys, "rot.key"),
				"-every", bootRotateEvery.String(), addr.String())
			if bt.waitOpen(addr, 2204, 500*time.Millisecond) == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the rotating door did not open to %s within %s", addr, 4*bootRotateEvery)
			}
			time.Sleep(500 * time.Millisecond)
		}
		bt.mustLogIn(t, addr, 2204)
	}
}

// keySPA knocks on the public-key door with nftknock spa from the host
// side, sealed to sshd's host key and signed with the administrator's
// login key: the daemon, in its sandbox, reads both, and the journal names
// the key.
func (bt *bootTest) keySPA(t *testing.T) {
	hostPub := filepath.Join(bt.keys, "host.pub")
	noErr(t, os.WriteFile(hostPub, []byte(bt.m.ReadFile(t, "/etc/ssh/ssh_host_ed25519_key.pub")), 0o600))
	for _, addr := range []netip.Addr{boot.GuestV4, boot.GuestV6} {
		bt.journal.mark(t)
		bt.hostSide(t, bt.client, "spa", "-door", "team", "-server-key-file", hostPub, "-identity", bt.ssh.Key(), "-p", "62203", addr.String())
		bt.mustLogIn(t, addr, 2205)
		bt.journal.wait(t, `"key": "'sdboot-test' SHA256:`, 5*time.Second)
	}
}

func (bt *bootTest) reloadChanged(t *testing.T) {
	pid := bt.mainPID(t)
	bt.waitNoGrant(t, boot.HostV4, bootOpenFor+3*time.Second)
	bt.writeConfig(t, bootDoors(tomlList(secondSequence...), bootOpenFor.String()))
	bt.reload(t)
	if got := bt.mainPID(t); got != pid {
		t.Errorf("main PID %s after reload, was %s", got, pid)
	}
	bt.knock(t, boot.GuestV4, firstSequence...)
	bt.mustFiltered(t, boot.GuestV4, 22)
	bt.knock(t, boot.GuestV4, secondSequence...)
	bt.mustLogIn(t, boot.GuestV4, 22)
}

func (bt *bootTest) reloadBroken(t *testing.T) {
	pid := bt.mainPID(t)
	good := bt.sh(t, "cat /etc/nftknock/nftknock.toml")
	// A new sequence, and an open_for that is no duration.
	bt.writeConfig(t, bootDoors(tomlList(brokenSequence...), "soon"))
	out, err := bt.admin.Run("systemctl reload nftknockd 2>&1", "")
	if err == nil {
		t.Fatalf("systemctl reload of a config that does not validate exited 0:\n%s", out)
	}
	if !strings.Contains(out, "nftknockd.service failed") {
		t.Errorf("systemctl reload does not say it failed:\n%s", out)
	}
	// Where systemctl points to: the reason, with file, line, door, field.
	status, _ := bt.admin.Run("systemctl status --no-pager -n 20 nftknockd", "")
	if !regexp.MustCompile(`/etc/nftknock/nftknock\.toml:\d+: door "ssh": open_for: "soon" is not a duration`).MatchString(status) {
		t.Errorf("systemctl status does not give the reason:\n%s", status)
	}
	if got := bt.value(t, "systemctl is-active nftknockd"); got != "active" {
		t.Errorf("is-active %q after the failed reload", got)
	}
	if got := bt.mainPID(t); got != pid {
		t.Errorf("main PID %s after the failed reload, was %s", got, pid)
	}
	// The running config stays: the broken file's sequence opens nothing,
	// the running one does.
	bt.knock(t, boot.GuestV6, brokenSequence...)
	bt.mustFiltered(t, boot.GuestV6, 22)
	bt.knock(t, boot.GuestV4, secondSequence...)
	bt.mustLogIn(t, boot.GuestV4, 22)
	bt.writeConfig(t, good)
	bt.reload(t)
}

// restartNftables: the daemon owns its table (the kernel is 6.9 or later),
// so nftables.service's `flush ruleset` passes it by: nothing to heal, the
// grant stays, and no one else may delete the table.
func (bt *bootTest) restartNftables(t *testing.T) {
	bt.journal.mark(t)
	bt.knock(t, boot.GuestV4, secondSequence...)
	bt.mustLogIn(t, boot.GuestV4, 22)
	if out := bt.sh(t, "nft list table inet nftknock"); !strings.Contains(out, "flags owner") {
		t.Errorf("the table is not owned by the daemon:\n%s", out)
	}
	bt.sh(t, "systemctl restart nftables")
	if !bt.hasGrant(t, boot.HostV4) {
		t.Error("the grant is gone after systemctl restart nftables")
	}
	bt.mustLogIn(t, boot.GuestV4, 22)
	bt.mustFiltered(t, boot.GuestV6, 22)
	if out, err := bt.admin.Run("nft delete table inet nftknock 2>&1", ""); err == nil || !strings.Contains(out, "Operation not permitted") {
		t.Errorf("nft delete table of the owned table: %v\n%s", err, out)
	}
	if seen := bt.journal.read(t); strings.Contains(seen, "re-installed") || strings.Contains(seen, "damaged or deleted") {
		t.Errorf("the daemon healed its owned table:\n%s", seen)
	}
}

func (bt *bootTest) kill(t *testing.T) {
	pid := bt.mainPID(t)
	restarts := bt.value(t, "systemctl show -P NRestarts nftknockd")
	bt.knock(t, boot.GuestV4, secondSequence...)
	bt.mustLogIn(t, boot.GuestV4, 22)
	bt.sh(t, "systemctl kill -s KILL nftknockd")
	// While it is down (RestartSec=2s): the table and the grant stay.
	if out, err := bt.admin.Run("nft list table inet nftknock", ""); err != nil {
		t.Fatalf("the table went with the killed daemon: %v\n%s", err, out)
	}
	if !bt.hasGrant(t, boot.HostV4) {
		t.Error("the grant went with the killed daemon")
	}
	bt.mustFiltered(t, boot.GuestV6, 22)
	deadline := time.Now().Add(15 * time.Second)
	for {
		if p := bt.mainPID(t); p != pid && p != "0" && bt.value(t, "systemctl is-active nftknockd") == "active" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not restarted within 15s of the kill: %s", bt.value(t, "systemctl status --no-pager nftknockd"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := bt.value(t, "systemctl show -P NRestarts nftknockd"); got == restarts {
		t.Errorf("NRestarts still %s after the kill", got)
	}
	if !bt.hasGrant(t, boot.HostV4) {
		t.Error("the restarted daemon dropped the grant")
	}
	bt.mustLogIn(t, boot.GuestV4, 22)
}

func (bt *bootTest) stop(t *testing.T) {
	bt.sh(t, "systemctl stop nftknockd")
	if got := bt.value(t, "systemctl is-active nftknockd"); got != "inactive" {
		t.Errorf("is-active %q after stop", got)
	}
	if out, err := bt.admin.Run("nft list table inet nftknock", ""); err != nil {
		t.Fatalf("stop took the table away: %v\n%s", err, out)
	}
	// Nothing listens to knocks now, and the gate holds.
	bt.knock(t, boot.GuestV6, secondSequence...)
	bt.mustFiltered(t, boot.GuestV6, 22)
}

// reboot: from the moment the veth appears until well after sshd
// listens, the host side keeps trying new connections to port 22 on both
// families without knocking: none may get in.
func (bt *bootTest) reboot(t *testing.T) {
	// The session goes down with the machine: no answer to wait for.
	bt.admin.Run("systemctl reboot", "")
	code, err := bt.m.WaitExit(time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if code != 133 {
		t.Fatalf("systemd-nspawn exited %d after a reboot inside, want 133", code)
	}
	var (
		stop     = make(chan struct{})
		stopOnce = sync.OnceFunc(func() { close(stop) })
		started  bool
		done     = make(chan struct{})
		inFlight = make(chan struct{}, 64)
		probes   sync.WaitGroup
		mu       sync.Mutex
		attempts int
		afterUp  int // attempts begun once the boot was over and sshd listening
		up       bool
		leaks    []string
	)
	// A new attempt every 20 ms, alternating families, each given a second
	// to be answered (a SYN-ACK late under load still counts as a leak).
	probe := func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				probes.Wait()
				return
			case <-time.After(20 * time.Millisecond):
			}
			to := netip.AddrPortFrom(boot.GuestV4, 22)
			if i%2 == 1 {
				to = netip.AddrPortFrom(boot.GuestV6, 22)
			}
			inFlight <- struct{}{}
			probes.Add(1)
			mu.Lock()
			attempts++
			if up {
				afterUp++
			}
			mu.Unlock()
			go func() {
				defer func() { <-inFlight; probes.Done() }()
				if c, err := bt.m.Dial(to, time.Second); err == nil {
					c.Close()
					mu.Lock()
					leaks = append(leaks, fmt.Sprintf("%s at %s", to, time.Now().Format("15:04:05.000")))
					mu.Unlock()
				}
			}()
		}
	}
	// Should the boot fail, the probe stops all the same.
	defer func() {
		stopOnce()
		if started {
			<-done
		}
	}()
	bt.m.Boot(t, func() { started = true; go probe() })
	mu.Lock()
	up = true
	mu.Unlock()
	time.Sleep(time.Second)
	stopOnce()
	<-done
	t.Logf("%d connection attempts to port 22 from the moment the veth appeared (%d once sshd listened): %d connected",
		attempts, afterUp, len(leaks))
	if len(leaks) > 0 {
		t.Errorf("connected without a knock during boot: %v", leaks)
	}
	if afterUp < 10 {
		t.Errorf("only %d connection attempts once sshd listened", afterUp)
	}
	// In the unit's own order: up (READY=1, table installed) before
	// sshd was even started.
	gate, err := bt.m.Exec("systemctl", "show", "-P", "ActiveEnterTimestampMonotonic", "nftknockd")
	noErr(t, err)
	sshd, err := bt.m.Exec("systemctl", "show", "-P", "ExecMainStartTimestampMonotonic", "ssh")
	noErr(t, err)
	g, errG := strconv.ParseUint(strings.TrimSpace(gate), 10, 64)
	s, errS := strconv.ParseUint(strings.TrimSpace(sshd), 10, 64)
	if errG != nil || errS != nil || g == 0 || s == 0 || g >= s {
		t.Errorf("nftknockd active at %q µs, sshd started at %q µs (monotonic): want the gate first", gate, sshd)
	}
	bt.knock(t, boot.GuestV4, secondSequence...)
	bt.logInAsAdmin(t)
	bt.sh(t, "rm -f "+journalCursors+"-*.cursor")
	if got := bt.value(t, "systemctl is-active nftknockd"); got != "active" {
		t.Errorf("is-active %q after the reboot", got)
	}
}

func (bt *bootTest) upgrade(t *testing.T, deb, version string) {
	pid := bt.mainPID(t)
	config := bt.sh(t, "sha256sum /etc/nftknock/nftknock.toml")
	data, err := os.ReadFile(deb)
	noErr(t, err)
	if _, err := bt.admin.Run("cat > /root/nftknock-upgrade.deb", string(data)); err != nil {
		t.Fatal(err)
	}
	bt.sh(t, "dpkg -i /root/nftknock-upgrade.deb 2>&1")
	if got, want := bt.value(t, "dpkg-query -W -f '${Version}' nftknock"), debVersion(version); got != want {
		t.Errorf("installed version %q, want %q", got, want)
	}
	if got, want := bt.value(t, "nftknockd -version"), "nftknockd "+version; got != want {
		t.Errorf("nftknockd -version: %q, want %q", got, want)
	}
	if got := bt.value(t, "systemctl is-active nftknockd"); got != "active" {
		t.Errorf("is-active %q after the upgrade", got)
	}
	if got := bt.value(t, "systemctl is-enabled nftknockd"); got != "enabled" {
		t.Errorf("is-enabled %q after the upgrade", got)
	}
	if got := bt.mainPID(t); got == pid {
		t.Errorf("main PID %s unchanged: the upgrade did not restart the daemon onto the new binary", pid)
	}
	if got := bt.sh(t, "sha256sum /etc/nftknock/nftknock.toml"); got != config {
		t.Errorf("the upgrade changed the config: %s, was %s", got, config)
	}
	bt.knock(t, boot.GuestV6, secondSequence...)
	bt.mustLogIn(t, boot.GuestV6, 22)
}

func (bt *bootTest) purge(t *testing.T) {
	bt.sh(t, "dpkg -P nftknock 2>&1")
	if out, err := bt.admin.Run("nft list table inet nftknock", ""); err == nil {
		t.Errorf("purge left the table:\n%s", out)
	}
	for _, f := range []string{"/etc/nftknock/nftknock.toml", "/lib/systemd/system/nftknockd.service",
		"/etc/systemd/system/multi-user.target.wants/nftknockd.service", "/usr/sbin/nftknockd"} {
		if out, err := bt.admin.Run("ls -l "+f, ""); err == nil {
			t.Errorf("purge left %s", out)
		}
	}
	if got := bt.value(t, "systemctl is-active nftknockd"); got != "inactive" {
		t.Errorf("is-active %q after purge", got)
	}
	// The gate went with the table (grants are elements of its sets):
	// port 22 is sshd's alone again.
	bt.mustLogIn(t, boot.GuestV6, 22)
}
