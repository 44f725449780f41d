package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nftknock/nftknock/integration/lab"
)

// migrateBin builds nftknock for the test.
func migrateBin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "nftknock")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/nftknock").CombinedOutput(); err != nil {
		t.Fatalf("build nftknock: %v\n%s", err, out)
	}
	return bin
}

// migrated runs `nftknock migrate` on the knockd config text, writes its
// output to a 0600 file, and checks that `nftknockd -check` accepts it.
func migrated(t *testing.T, bin, knockdConf string) string {
	t.Helper()
	dir := t.TempDir()
	in := filepath.Join(dir, "knockd.conf")
	if err := os.WriteFile(in, []byte(knockdConf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "migrate", in)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nftknock migrate: %v\n%s", err, stderr.String())
	}
	t.Logf("nftknock migrate stderr:\n%s", stderr.String())
	cfg := writeConfig(t, filepath.Join(dir, "nftknock.toml"), string(out))
	if out, err := exec.Command(daemonBin, "-check", "-config", cfg).CombinedOutput(); err != nil {
		t.Fatalf("nftknockd -check on the migrated config: %v\n%s", err, out)
	}
	return cfg
}

func readTestdata(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("../cmd/nftknock/testdata/migrate", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestMigrateDebianDefault converts the /etc/knockd.conf that Debian's
// knockd package installs: [openSSH]/[closeSSH] become one door whose
// knockd sequence opens port 22 and whose close sequence closes it.
func TestMigrateDebianDefault(t *testing.T) {
	l := newLab(t)
	cfg := migrated(t, migrateBin(t), readTestdata(t, "debian.conf"))
	startDaemon(t, l, cfg)

	mustFiltered(t, l, lab.ClientV4, ssh4)
	mustKnock(t, l, false, 0, "7000", "8000", "9000")
	mustOpen(t, l, lab.ClientV4, ssh4)
	mustFiltered(t, l, lab.Client2V4, ssh4)
	e := element(t, l, "openssh_v4", lab.ClientV4)
	if e.Timeout != time.Hour {
		t.Errorf("element %+v: want the 1h bound of an open/close pair", e)
	}

	mustKnock(t, l, false, 0, "9000", "8000", "7000")
	time.Sleep(200 * time.Millisecond)
	mustFiltered(t, l, lab.ClientV4, ssh4)
	noElements(t, l, "openssh_v4")
}

// TestMigrateStartStopTimeout converts the guides' start_command +
// stop_command + cmd_timeout style (with Interface from [options]) and
// knocks with its mixed udp/tcp sequence.
func TestMigrateStartStopTimeout(t *testing.T) {
	l := newLab(t)
	conf := strings.Replace(readTestdata(t, "guide_startstop.conf"), "Interface = eth0", "Interface = "+l.ServerLink(), 1)
	cfg := migrated(t, migrateBin(t), conf)
	if data, _ := os.ReadFile(cfg); !strings.Contains(string(data), `interface = "`+l.ServerLink()+`"`) {
		t.Fatalf("Interface not carried over:\n%s", data)
	}
	startDaemon(t, l, cfg)

	mustFiltered(t, l, lab.ClientV4, ssh4)
	mustKnock(t, l, false, 0, "2222:udp", "3333:tcp", "4444:udp")
	mustOpen(t, l, lab.ClientV4, ssh4)
	mustFiltered(t, l, lab.Client2V4, ssh4)
	e := element(t, l, "openclosessh_v4", lab.ClientV4)
	if e.Timeout != 10*time.Second {
		t.Errorf("element %+v: want cmd_timeout's 10s", e)
	}
}

// TestMigrateEveryone converts an openSSH4everyone door (no -s %IP%): a
// knock from one client opens port 22 to the other one too.
func TestMigrateEveryone(t *testing.T) {
	l := newLab(t)
	cfg := migrated(t, migrateBin(t), readTestdata(t, "everyone.conf"))
	startDaemon(t, l, cfg)

	mustFiltered(t, l, lab.Client2V4, ssh4)
	mustKnock(t, l, false, 0, "1001", "2002:udp", "3003")
	mustOpen(t, l, lab.ClientV4, ssh4)
	mustOpen(t, l, lab.Client2V4, ssh4)
}
