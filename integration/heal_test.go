package integration

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/nftknock/nftknock/integration/lab"
)

// Self-healing and the nftknock tool against a running daemon.

// tableEvents records when notifications about `table inet nftknock` reach
// a listener in the server namespace: the moment the kernel committed a
// deletion, and the moment the daemon's re-install committed.
type tableEvents struct {
	mu     sync.Mutex
	del    []time.Time
	add    []time.Time
	closer func()
}

func watchTable(t *testing.T, l *lab.Lab) *tableEvents {
	t.Helper()
	nsf, err := os.Open("/run/netns/" + l.Server)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nsf.Close() })
	c, err := nftables.New(nftables.WithNetNSFd(int(nsf.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	mon := nftables.NewMonitor(nftables.WithMonitorObject(nftables.MonitorObjectTables), nftables.WithMonitorEventBuffer(64))
	events, err := c.AddMonitor(mon)
	if err != nil {
		t.Fatal(err)
	}
	te := &tableEvents{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for e := range events {
			now := time.Now()
			tb, ok := e.Data.(*nftables.Table)
			if !ok || tb.Name != "nftknock" {
				continue
			}
			te.mu.Lock()
			switch e.Type {
			case nftables.MonitorEventTypeDelTable:
				te.del = append(te.del, now)
			case nftables.MonitorEventTypeNewTable:
				te.add = append(te.add, now)
			}
			te.mu.Unlock()
		}
	}()
	t.Cleanup(func() { mon.Close(); <-done })
	return te
}

// healedWithin waits until the table was deleted and then added again,
// and fails the test unless that took at most within.
func (te *tableEvents) healedWithin(t *testing.T, within time.Duration) time.Duration {
	t.Helper()
	del, add := te.deletedThenAdded(t, within+2*time.Second)
	took := add.Sub(del)
	if took > within {
		t.Errorf("table back %v after it was deleted; want within %v", took, within)
	}
	return took
}

// deletedThenAdded waits, for at most wait, until the table was deleted
// and then added again, and says when each happened.
func (te *tableEvents) deletedThenAdded(t *testing.T, wait time.Duration) (del, add time.Time) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		te.mu.Lock()
		del, add = time.Time{}, time.Time{}
		if len(te.del) > 0 {
			del = te.del[len(te.del)-1]
			for _, a := range te.add {
				if a.After(del) {
					add = a
					break
				}
			}
		}
		te.mu.Unlock()
		if !add.IsZero() {
			return del, add
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("table not deleted and re-installed within %v", wait)
	return
}

// TestHealAfterFlushRuleset: `nft flush ruleset` (and then `nft delete
// table`) in the server namespace; the daemon re-installs its table within
// a second, the knocked client's grant comes back with no more time than it
// had left, the gate is closed to everyone else, and knocking still works.
func TestHealAfterFlushRuleset(t *testing.T) {
	for _, tc := range []struct{ name, cmd string }{
		{"flush ruleset", "flush ruleset"},
		{"delete table", "delete table inet nftknock"},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			l := newLab(t)
			// A table the daemon does not own: anyone may delete it.
			d := startDaemon(t, l, writeConfig(t, "", "own_table = false\n"+sshDoor("5s", "20s")))
			events := watchTable(t, l)

			mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
			mustOpen(t, l, lab.ClientV4, ssh4)
			time.Sleep(2 * time.Second)
			before := element(t, l, "ssh_v4", lab.ClientV4)
			if before.Expires > 18500*time.Millisecond {
				t.Fatalf("element %+v: want about 18s left after 2s", before)
			}

			if out, err := lab.Run(l.Server, "nft", tc.cmd); err != nil {
				t.Fatalf("nft %s: %v %s", tc.cmd, err, out)
			}
			took := events.healedWithin(t, time.Second)
			t.Logf("nft %s → table back in %v", tc.cmd, took)
			if err := d.WaitLog("table gone: re-installed with 1 live grants restored", time.Second); err != nil {
				t.Error(err)
			}
			for _, line := range strings.Split(d.Log(), "\n") {
				if strings.Contains(line, "table gone") {
					t.Logf("daemon: %s", line)
				}
			}

			after := element(t, l, "ssh_v4", lab.ClientV4)
			if after.Timeout != 20*time.Second || after.Expires <= 0 || after.Expires > before.Expires {
				t.Errorf("restored element %+v; before: %+v: want the 20s timeout and 0 < expires <= %v (never reset)",
					after, before, before.Expires)
			}
			noElements(t, l, "ssh_v6")
			mustOpen(t, l, lab.ClientV4, ssh4)
			mustFiltered(t, l, lab.Client2V4, ssh4)
			mustFiltered(t, l, lab.ClientV6, ssh6)

			// NFLOG, the knock rules and the grant path work as before.
			mustKnock(t, l, true, 0, "7000", "8000:udp", "9000")
			mustOpen(t, l, lab.ClientV6, ssh6)
			if e := element(t, l, "ssh_v6", lab.ClientV6); e.Timeout != 20*time.Second || e.Expires < 19*time.Second {
				t.Errorf("grant of a knock after the heal: %+v", e)
			}

			// Healing is not a change the daemon reacts to again.
			time.Sleep(300 * time.Millisecond)
			if n := strings.Count(d.Log(), "table gone"); n != 1 {
				t.Errorf("logged %d re-installs, want 1:\n%s", n, d.Log())
			}
		})
	}
}

var (
	nftknockOnce sync.Once
	nftknockPath string
	nftknockErr  error
)

// nftknockBin returns the nftknock binary, built once next to the daemon's.
func nftknockBin(t testing.TB) string {
	t.Helper()
	nftknockOnce.Do(func() {
		nftknockPath = filepath.Join(filepath.Dir(daemonBin), "nftknock")
		out, err := exec.Command("go", "build", "-o", nftknockPath, "../cmd/nftknock").CombinedOutput()
		if err != nil {
			nftknockErr = errors.New("build nftknock: " + err.Error() + ": " + string(out))
		}
	})
	if nftknockErr != nil {
		t.Fatal(nftknockErr)
	}
	return nftknockPath
}

// runTool runs nftknock in the server namespace and returns its standard
// output and exit code.
func runNftknock(t *testing.T, l *lab.Lab, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", l.Server, nftknockBin(t)}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("nftknock %v: %v", args, err)
	}
	if stderr.Len() > 0 {
		t.Logf("nftknock %s: stderr: %s", strings.Join(args, " "), stderr.String())
	}
	return string(out), cmd.ProcessState.ExitCode()
}

type toolStatus struct {
	Table     string   `json:"table"`
	Installed bool     `json:"installed"`
	Doors     []string `json:"doors"`
	Grants    []struct {
		Door      string `json:"door"`
		Address   string `json:"address"`
		Family    string `json:"family"`
		TimeoutMS int64  `json:"timeout_ms"`
		LeftMS    int64  `json:"left_ms"`
		ExpiresAt string `json:"expires_at"`
	} `json:"grants"`
}

// TestToolWithDaemon: break-glass grants from `nftknock` on a daemon's
// table, owned by the daemon (the tool asks it over its control socket) or
// not (the tool writes the table, the daemon follows): status shows them,
// the daemon keeps them (a knock does not shorten them, a flush of a table
// not owned restores them, a flush passes an owned one by), revoke closes
// the door.
func TestToolWithDaemon(t *testing.T) {
	t.Run("owned", func(t *testing.T) { toolWithDaemon(t, true) })
	t.Run("not_owned", func(t *testing.T) { toolWithDaemon(t, false) })
}

func toolWithDaemon(t *testing.T, owned bool) {
	l := newLab(t)
	header := "own_table = false\n"
	if owned {
		header = ""
	}
	d := startDaemonToKill(t, l, daemonBin, writeConfig(t, "", header+sshDoor("5s", "30s")))

	if err := d.WaitLog(fmt.Sprintf(`"table_owned": %v`, owned), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if out, code := runNftknock(t, l, "grant", "-door", "ssh", "-for", "1h", lab.Client2V4.String()); code != 0 {
		t.Fatalf("grant: exit %d: %s", code, out)
	}
	if owned {
		if err := d.WaitLog("nftknock grant: let in", time.Second); err != nil {
			t.Errorf("the grant did not go through the daemon: %v", err)
		}
	}
	mustOpen(t, l, lab.Client2V4, ssh4)
	mustFiltered(t, l, lab.ClientV4, ssh4)
	if out, code := runNftknock(t, l, "grant", "-door", "nope", "-for", "1h", lab.ClientV4.String()); code != 1 {
		t.Errorf("grant to an unknown door: exit %d, want 1: %s", code, out)
	}

	// The knocked client too; then the knock of the tool-granted address
	// must not cut its hour down to open_for.
	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	mustOpen(t, l, lab.ClientV4, ssh4)

	out, code := runNftknock(t, l, "status", "-json")
	if code != 0 {
		t.Fatalf("status: exit %d", code)
	}
	var st toolStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status -json: %v\n%s", err, out)
	}
	if !st.Installed || st.Table != "nftknock" || len(st.Doors) != 1 || len(st.Grants) != 2 {
		t.Fatalf("status -json: %+v", st)
	}
	for _, g := range st.Grants {
		want := map[string]int64{lab.ClientV4.String(): 30000, lab.Client2V4.String(): 3600000}[g.Address]
		if g.Door != "ssh" || g.Family != "ipv4" || g.TimeoutMS != want || g.LeftMS <= want-5000 || g.LeftMS > want {
			t.Errorf("status grant %+v: want door ssh, timeout %d ms, a little less left", g, want)
		}
	}
	human, _ := runNftknock(t, l, "status")
	if !strings.Contains(human, "table inet nftknock: installed; doors: ssh") ||
		!regexp.MustCompile(`ssh\s+192\.0\.2\.3\s+59m[0-9]+s\s+1h\n`).MatchString(human) || !regexp.MustCompile(`ssh\s+192\.0\.2\.2\s+[0-9.]+s\s+30s\n`).MatchString(human) {
		t.Errorf("status:\n%s", human)
	}

	// Knocking from the address with the 1h grant leaves it alone.
	before := element(t, l, "ssh_v4", lab.Client2V4)
	lab.Run(l.Client, "ip", "route", "replace", "192.0.2.0/24", "dev", l.ClientLink(), "src", lab.Client2V4.String())
	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	lab.Run(l.Client, "ip", "route", "replace", "192.0.2.0/24", "dev", l.ClientLink(), "src", lab.ClientV4.String())
	if err := d.WaitLog(`"source": "`+lab.Client2V4.String()+`"`, time.Second); err != nil {
		t.Fatalf("the knock from %s did not reach the daemon: %v", lab.Client2V4, err)
	}
	if e := element(t, l, "ssh_v4", lab.Client2V4); e.Timeout != time.Hour || e.Expires > before.Expires || e.Expires < before.Expires-5*time.Second {
		t.Errorf("a knock changed the tool's grant: %+v, was %+v", e, before)
	}

	// The daemon restores the tool's grant after a flush of a table it
	// does not own; a flush passes an owned table by, grants and all.
	if out, err := lab.Run(l.Server, "nft", "flush", "ruleset"); err != nil {
		t.Fatalf("nft flush ruleset: %v %s", err, out)
	}
	if owned {
		time.Sleep(300 * time.Millisecond)
		if strings.Contains(d.Log(), "table gone") {
			t.Errorf("a flush of the owned table made the daemon heal:\n%s", d.Log())
		}
		out, err := lab.Run(l.Server, "nft", "delete", "table", "inet", "nftknock")
		if err == nil || !strings.Contains(out+err.Error(), "Operation not permitted") {
			t.Errorf("nft delete table of the owned table: %v %s", err, out)
		}
	} else if err := d.WaitLog("table gone: re-installed with 2 live grants restored", time.Second); err != nil {
		t.Fatal(err)
	}
	if e := element(t, l, "ssh_v4", lab.Client2V4); e.Timeout != time.Hour || e.Expires > before.Expires {
		t.Errorf("tool's grant after the flush: %+v, was %+v", e, before)
	}
	mustOpen(t, l, lab.Client2V4, ssh4)

	// Revoke: closed at once, and the daemon does not bring it back.
	if out, code := runNftknock(t, l, "revoke", "-door", "ssh", lab.Client2V4.String()); code != 0 || !strings.Contains(out, "revoked") {
		t.Errorf("revoke: exit %d: %s", code, out)
	}
	mustFiltered(t, l, lab.Client2V4, ssh4)
	if !owned {
		time.Sleep(100 * time.Millisecond) // the daemon reads the revoke
		if out, err := lab.Run(l.Server, "nft", "delete", "table", "inet", "nftknock"); err != nil {
			t.Fatalf("nft delete table: %v %s", err, out)
		}
		if err := d.WaitLog("table gone: re-installed with 1 live grants restored", time.Second); err != nil {
			t.Fatal(err)
		}
		mustFiltered(t, l, lab.Client2V4, ssh4)
	}
	mustOpen(t, l, lab.ClientV4, ssh4)

	// With the daemon stopped (the owned table stays, no longer owned:
	// anyone may delete it) and the table gone, status says so.
	if err := d.Stop(); err != nil {
		t.Fatalf("SIGTERM: want exit 0: %v", err)
	}
	if out, err := lab.Run(l.Server, "nft", "delete", "table", "inet", "nftknock"); err != nil {
		t.Fatalf("nft delete table: %v %s", err, out)
	}
	if out, code := runNftknock(t, l, "status"); code != 3 || !strings.Contains(out, "not installed") {
		t.Errorf("status without the table: exit %d, want 3: %s", code, out)
	}
}

// deletions is how many times the table was deleted so far.
func (te *tableEvents) deletions() int {
	te.mu.Lock()
	defer te.mu.Unlock()
	return len(te.del)
}

// probe connects from one address to one port in a loop, on its own
// goroutine, and counts the connections that got through.
type probe struct {
	tries, through atomic.Int64
	stop           chan struct{}
	done           chan struct{}
}

func startProbe(l *lab.Lab, from netip.Addr, to netip.AddrPort) *probe {
	p := &probe{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			select {
			case <-p.stop:
				return
			default:
			}
			p.tries.Add(1)
			if c, err := l.Dial(from, to, 20*time.Millisecond); err == nil {
				p.through.Add(1)
				c.Close()
			}
		}
	}()
	return p
}

// mustHaveHeld stops p and fails the test unless none of its connection
// attempts got through (nor were there too few to tell) and the table was
// never deleted while it ran.
func mustHaveHeld(t *testing.T, p *probe, events *tableEvents, during string) {
	t.Helper()
	close(p.stop)
	<-p.done
	tries, through := p.tries.Load(), p.through.Load()
	t.Logf("%d connection attempts without a grant during %s: %d got through", tries, during, through)
	if through != 0 || tries < 5 {
		t.Errorf("%d of %d connection attempts without a grant got through during %s (want 0 of at least 5)", through, tries, during)
	}
	if n := events.deletions(); n != 0 {
		t.Errorf("the table was deleted %d times during %s", n, during)
	}
}

// TestOwnedTableOutlastsFlush: the daemon owns its table (the default on
// Linux 6.9 and later). `nft flush ruleset`, and an `nft -f` of a file that
// begins with it as `systemctl restart nftables` runs, pass the table by:
// it is never deleted, nothing is healed, the grant is as it was, and a
// source without one is dropped throughout. No other process may change or
// delete the table. A daemon killed with SIGKILL leaves it, no longer
// owned, grants and all, and the next one claims it.
func TestOwnedTableOutlastsFlush(t *testing.T) {
	l := newLab(t)
	cfg := writeConfig(t, "", sshDoor("5s", "30s"))
	d := startDaemonToKill(t, l, daemonBin, cfg)
	if err := d.WaitLog(`"table_owned": true`, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	mustOpen(t, l, lab.ClientV4, ssh4)
	before := element(t, l, "ssh_v4", lab.ClientV4)
	if out, _ := lab.Run(l.Server, "nft", "list", "table", "inet", "nftknock"); !strings.Contains(out, "flags owner") {
		t.Fatalf("the table is not owned:\n%s", out)
	}

	events := watchTable(t, l)
	p := startProbe(l, lab.Client2V4, ssh4)
	time.Sleep(100 * time.Millisecond)
	if out, err := lab.Run(l.Server, "nft", "flush", "ruleset"); err != nil {
		t.Fatalf("nft flush ruleset: %v %s", err, out)
	}
	restart := "flush ruleset\ntable inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t}\n}\n"
	if out, err := runStdin(l.Server, restart, "nft", "-f", "-"); err != nil {
		t.Fatalf("nft -f of a ruleset that flushes: %v %s", err, out)
	}
	time.Sleep(300 * time.Millisecond)
	mustHaveHeld(t, p, events, "the flushes")
	if strings.Contains(d.Log(), "table gone") || strings.Contains(d.Log(), "damaged or deleted") {
		t.Errorf("the daemon healed an owned table:\n%s", d.Log())
	}
	if after := element(t, l, "ssh_v4", lab.ClientV4); after.Timeout != before.Timeout || after.Expires > before.Expires {
		t.Errorf("grant after the flushes %+v, before %+v", after, before)
	}
	mustOpen(t, l, lab.ClientV4, ssh4)

	for _, edit := range [][]string{
		{"delete", "table", "inet", "nftknock"},
		{"flush", "chain", "inet", "nftknock", "input"},
		{"flush", "set", "inet", "nftknock", "ssh_v4"},
		{"add", "element", "inet", "nftknock", "ssh_v4", "{ " + lab.Client2V4.String() + " }"},
	} {
		out, err := lab.Run(l.Server, append([]string{"nft"}, edit...)...)
		if err == nil || !strings.Contains(out+err.Error(), "Operation not permitted") {
			t.Errorf("nft %s on the owned table: %v %s", strings.Join(edit, " "), err, out)
		}
	}
	mustFiltered(t, l, lab.Client2V4, ssh4)
	mustOpen(t, l, lab.ClientV4, ssh4)

	// Killed: the table and the grant stay, no longer owned.
	d.Kill()
	out, err := lab.Run(l.Server, "nft", "list", "table", "inet", "nftknock")
	if err != nil || strings.Contains(out, "flags owner") || !strings.Contains(out, lab.ClientV4.String()) {
		t.Fatalf("after SIGKILL, want the table unowned with the grant: %v\n%s", err, out)
	}
	mustFiltered(t, l, lab.Client2V4, ssh4)
	d2 := startDaemonToKill(t, l, daemonBin, cfg)
	if err := d2.WaitLog(`"table_owned": true`, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if out, _ := lab.Run(l.Server, "nft", "list", "table", "inet", "nftknock"); !strings.Contains(out, "flags owner") {
		t.Errorf("the next daemon did not claim the table:\n%s", out)
	}
	if after := element(t, l, "ssh_v4", lab.ClientV4); after.Timeout != before.Timeout {
		t.Errorf("grant after the restart %+v, before %+v", after, before)
	}
	mustOpen(t, l, lab.ClientV4, ssh4)
	mustFiltered(t, l, lab.Client2V4, ssh4)
}
