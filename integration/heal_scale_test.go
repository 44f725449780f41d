package integration

import (
	"errors"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/nftknock/nftknock/integration/lab"
	"github.com/nftknock/nftknock/nft"
)

// TestHealMillionGrants: a million live grants (added by someone else, as
// `nft add element` would, and read into the daemon's record), then `nft
// flush ruleset`.
//
// A table the daemon does not own (own_table = false, or a kernel before
// 6.9): the gate is back in one small batch (rules and empty sets) within
// 20 ms of the moment the kernel lets anyone commit again, so a source
// without a grant is dropped again at once; then every one of the million
// grants comes back, chunk by chunk, while a knock of the door still opens
// meanwhile. The kernel itself keeps the table's port open that long: it
// frees the flushed elements, about half a microsecond each, before anyone
// may commit.
//
// Owned (the default), the flush passes the table by: it is never deleted,
// the million grants stay, and a source without one is dropped
// throughout: the gate never stops.
func TestHealMillionGrants(t *testing.T) {
	const grants = 1_000_000
	l := newLab(t)
	const doors = `
[[door]]
name = "ssh"
sequence = ["7000:tcp", "8000:udp", "9000:tcp"]
seq_timeout = "5s"
open = ["22:tcp"]
open_for = "30m"
max_grants = 1048576
`
	nsf, err := os.Open("/run/netns/" + l.Server)
	if err != nil {
		t.Fatal(err)
	}
	defer nsf.Close()
	other, err := nft.Open("nftknock", nftables.WithNetNSFd(int(nsf.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	// 10.0.0.0 onwards: a million addresses, none of the lab's.
	els := make([]nft.Element, grants)
	for i := range els {
		a := [4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}
		els[i] = nft.Element{Key: a[:], Timeout: 30 * time.Minute}
	}
	addMillion := func() {
		t.Helper()
		start := time.Now()
		if refused, first, err := other.Put("ssh_v4", els); err != nil || len(refused) > 0 {
			t.Fatalf("adding a million grants: %v, %d refused (%v)", err, len(refused), first)
		}
		t.Logf("a million grants added by someone else in %v", time.Since(start).Round(time.Millisecond))
	}
	// A dump of a million elements takes the kernel over a minute (it
	// walks the set from its start for every buffer it fills), and nft
	// get element reads the whole set first; so every 997th address of
	// the million, and the last, is looked up alone.
	var sample [][]byte
	for i := 0; i < grants; i += 997 {
		sample = append(sample, []byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	}
	last := grants - 1
	sample = append(sample, []byte{10, byte(last >> 16), byte(last >> 8), byte(last)})
	start := func(cfg string) *lab.Daemon {
		t.Helper()
		return startDaemonToKill(t, l, plainDaemonBin(t), writeConfig(t, "", cfg))
	}

	// Owned (the default). The daemon makes its table and stops; with no
	// daemon running the table is no one's, and the million grants are
	// added from another socket; the next daemon claims the table, grants
	// and all (reading them into its record meanwhile, on a reader of its
	// own), and the flush passes it by.
	maker := start(doors)
	if err := maker.WaitLog(`"table_owned": true`, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := maker.Stop(); err != nil {
		t.Fatalf("nftknockd did not exit 0 on SIGTERM: %v", err)
	}
	addMillion()
	owner := start(doors)
	if err := owner.WaitLog(`"table_owned": true`, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	events := watchTable(t, l)
	p := startProbe(l, lab.Client2V4, ssh4)
	time.Sleep(100 * time.Millisecond)
	flushed := time.Now()
	if out, err := lab.Run(l.Server, "nft", "flush", "ruleset"); err != nil {
		t.Fatalf("nft flush ruleset: %v %s", err, out)
	}
	t.Logf("owned: nft flush ruleset ran %v", time.Since(flushed).Round(time.Millisecond))
	time.Sleep(200 * time.Millisecond)
	mustHaveHeld(t, p, events, "the flush of the owned table")
	if missing := missingElements(t, nsf, "nftknock", "ssh_v4", sample); len(missing) > 0 {
		t.Errorf("owned: %d of %d sampled grants missing after the flush, e.g. %v", len(missing), len(sample), missing[0])
	}
	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	mustOpen(t, l, lab.ClientV4, ssh4)
	mustFiltered(t, l, lab.Client2V4, ssh4)
	owner.Kill() // the table stays, no one's: anyone may delete it now

	// Not owned: a fresh table, the million grants added while the
	// daemon runs (it reads them from the kernel's notifications, or, had
	// they come faster than it reads, from the set), then the flush.
	if out, err := lab.Run(l.Server, "nft", "delete", "table", "inet", "nftknock"); err != nil {
		t.Fatalf("nft delete table after its owner was killed: %v %s", err, out)
	}
	d := start("own_table = false\n" + doors)
	if err := d.WaitLog(`"table_owned": false`, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	addMillion()
	// Wait until it has done with them, its CPU time standing still for
	// longer than its one-second tick.
	waitIdle(t, d.Pid(), 3*time.Second, 5*time.Minute)

	events = watchTable(t, l)
	flushed = time.Now()
	if out, err := lab.Run(l.Server, "nft", "flush", "ruleset"); err != nil {
		t.Fatalf("nft flush ruleset: %v %s", err, out)
	}
	nftExited := time.Now()
	t.Logf("nft flush ruleset ran %v", nftExited.Sub(flushed).Round(time.Millisecond))
	del, add := events.deletedThenAdded(t, 5*time.Second)
	// The floor: when nft exits, closing its socket, the kernel frees the
	// deleted sets' elements holding the namespace's nf_tables commit
	// lock (its NETLINK_URELEASE handler waits for the destroy work), about
	// half a microsecond a grant; no one's batch commits meanwhile. The
	// daemon, had its batch come before that close, is back sooner.
	floor := max(0, nftExited.Sub(del))
	took := add.Sub(del)
	t.Logf("table deleted → back in %v; the kernel's floor (deleted → nft exited) %v; back %v after the floor",
		took.Round(10*time.Microsecond), floor.Round(10*time.Microsecond), (took - floor).Round(10*time.Microsecond))
	if took > floor+20*time.Millisecond {
		t.Errorf("table back %v after its deletion, %v after the kernel let anyone write; want within 20ms of that", took, took-floor)
	}
	if err := d.WaitLog("putting its grants back", 5*time.Second); err == nil {
		t.Logf("daemon: %s", lineWith(d.Log(), "putting its grants back"))
	}
	// The gate drops a source without a grant while the grants come back,
	// and a knock opens.
	mustFiltered(t, l, lab.Client2V4, ssh4)
	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	mustOpen(t, l, lab.ClientV4, ssh4)

	if err := d.WaitLog("table gone: re-installed with", 2*time.Minute); err != nil {
		for _, line := range strings.Split(d.Log(), "\n") {
			if strings.Contains(line, "table") || strings.Contains(line, "grants") {
				t.Log(line)
			}
		}
		t.Fatal(err)
	}
	// The daemon's count says it put back every one.
	if missing := missingElements(t, nsf, "nftknock", "ssh_v4", sample); len(missing) > 0 {
		t.Errorf("%d of %d sampled grants missing after the heal, e.g. %v", len(missing), len(sample), missing[0])
	}
	// And the lookup does tell a missing one.
	if missing := missingElements(t, nsf, "nftknock", "ssh_v4", [][]byte{{11, 0, 0, 1}}); len(missing) != 1 {
		t.Errorf("11.0.0.1, never granted, not reported missing")
	}
	m := regexp.MustCompile(`table gone: re-installed with (\d+) live grants restored`).FindStringSubmatch(d.Log())
	if n, _ := strconv.Atoi(m[1]); n < grants {
		t.Errorf("the daemon restored %d grants, want all %d", n, grants)
	}
	t.Logf("daemon: %s", lineWith(d.Log(), "table gone"))
}

// waitIdle waits until process pid has used no CPU for quiet.
func waitIdle(t *testing.T, pid int, quiet, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	last, since := time.Duration(-1), time.Now()
	for time.Now().Before(deadline) {
		used, err := lab.CPUTime(pid)
		if err != nil {
			t.Fatal(err)
		}
		if used != last {
			last, since = used, time.Now()
		} else if time.Since(since) >= quiet {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("process %d still busy after %v", pid, within)
}

// lineWith is the first line of log that holds s.
func lineWith(log, s string) string {
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, s) {
			return line
		}
	}
	return ""
}

// missingElements looks keys up in set one by one (NFT_MSG_GETSETELEM, no
// dump) and returns those the set does not hold.
func missingElements(t *testing.T, ns *os.File, table, set string, keys [][]byte) [][]byte {
	t.Helper()
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(ns.Fd())})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var missing [][]byte
	for _, k := range keys {
		ae := netlink.NewAttributeEncoder()
		ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, table)
		ae.String(unix.NFTA_SET_ELEM_LIST_SET, set)
		ae.Nested(unix.NFTA_SET_ELEM_LIST_ELEMENTS, func(ae *netlink.AttributeEncoder) error {
			ae.Nested(unix.NLA_F_NESTED|1, func(ae *netlink.AttributeEncoder) error { // NFTA_LIST_ELEM
				ae.Nested(unix.NFTA_SET_ELEM_KEY, func(ae *netlink.AttributeEncoder) error {
					ae.Bytes(unix.NFTA_DATA_VALUE, k)
					return nil
				})
				return nil
			})
			return nil
		})
		attrs, err := ae.Encode()
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Execute(netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM), Flags: netlink.Request},
			Data:   append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
		})
		switch {
		case errors.Is(err, unix.ENOENT):
			missing = append(missing, k)
		case err != nil:
			t.Fatalf("look up %v in %s: %v", k, set, err)
		}
	}
	return missing
}
