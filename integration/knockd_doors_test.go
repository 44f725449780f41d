package integration

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nftknock/nftknock/integration/lab"
)

// TestCloseSequence: the close sequence (the reverse knock) takes
// the source's grant away at once — the element leaves the set, new
// connections are filtered — and runs on_close; IPv4 and IPv6.
func TestCloseSequence(t *testing.T) {
	l := newLab(t)
	rec := filepath.Join(t.TempDir(), "hooks")
	d := startDaemon(t, l, writeConfig(t, "", fmt.Sprintf(`
[[door]]
name = "ssh"
sequence = ["7000:tcp", "8000:udp", "9000:tcp"]
close_sequence = ["9000:tcp", "8000:udp", "7000:tcp"]
seq_timeout = "5s"
open = ["22:tcp"]
open_for = "30s"
on_close = %s
`, tomlList(append(hookRecorderArgv(t, rec), "close", "{door}", "{src}")...))))

	for i, fam := range []struct {
		v6   bool
		src  netip.Addr
		ssh  netip.AddrPort
		set  string
		name string
	}{{false, lab.ClientV4, ssh4, "ssh_v4", "IPv4"}, {true, lab.ClientV6, ssh6, "ssh_v6", "IPv6"}} {
		mustKnock(t, l, fam.v6, 0, "7000", "8000:udp", "9000")
		mustOpen(t, l, fam.src, fam.ssh)
		if e := element(t, l, fam.set, fam.src); e.Expires < 25*time.Second {
			t.Fatalf("%s: element %+v, want about 30s left", fam.name, e)
		}
		if recs := hookRecords(t, rec); len(recs) != i {
			t.Fatalf("%s: on_close ran before the close sequence: %+v", fam.name, recs)
		}

		m := markLog(d)
		mustKnock(t, l, fam.v6, 0, "9000", "8000:udp", "7000")
		closedAt := time.Now()
		m.wait(t, time.Second, "door closed by close sequence", `"door": "ssh"`, fmt.Sprintf(`"source": %q`, fam.src))
		if time.Since(closedAt) > time.Second {
			t.Errorf("%s: closing took %s", fam.name, time.Since(closedAt))
		}
		noElements(t, l, fam.set)
		mustFiltered(t, l, fam.src, fam.ssh)

		recs := waitHookRecords(t, rec, i+1, 2*time.Second)
		want := []string{"close", "ssh", fam.src.String()}
		if got := recs[i].Args; strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s: on_close got argv %q, want %q", fam.name, got, want)
		}
	}
	// The v4 grant was not touched by the v6 close, nor reopened: both
	// stay closed.
	mustFiltered(t, l, lab.ClientV4, ssh4)
}

// TestTCPFlags: with tcp_flags = "syn,!ack" (the default), ACK-only
// packets to the door's ports and to other ports between the knocks are
// ignored, not wrong knocks: the knock still opens (where SYNs in the same
// places reset it). A door with tcp_flags = "fin" opens to FIN knocks
// (hping3 -F) and not to SYN knocks (the knock client).
func TestTCPFlags(t *testing.T) {
	needTools(t, "hping3")
	l := newLab(t)
	d := startDaemon(t, l, writeConfig(t, "", `
[[door]]
name = "syn"
sequence = ["7000:tcp", "8000:tcp", "9000:tcp"]
tcp_flags = "syn,!ack"
seq_timeout = "5s"
open = ["22:tcp"]
open_for = "30s"

[[door]]
name = "fin"
sequence = ["7100:tcp", "7200:tcp", "7300:tcp"]
tcp_flags = "fin"
seq_timeout = "5s"
open = ["22:tcp"]
open_for = "30s"
`))
	hping := func(t *testing.T, flag string, port int) {
		t.Helper()
		sendOne(t, l, flag, "-p", fmt.Sprint(port))
	}

	// The subtests share the lab and the daemon: each needs the one before.
	t.Run("fin", func(t *testing.T) {
		m := markLog(d)
		mustKnock(t, l, false, 0, "7100", "7200", "7300") // SYNs
		mustFiltered(t, l, lab.ClientV4, ssh4)
		if got := m.lines(`"door": "fin"`); len(got) > 0 {
			t.Errorf("SYN knocks counted for a tcp_flags = \"fin\" door: %q", got)
		}
		for _, p := range []int{7100, 7200, 7300} {
			hping(t, "-F", p)
		}
		mustOpen(t, l, lab.ClientV4, ssh4)
		element(t, l, "fin_v4", lab.ClientV4)
		noElements(t, l, "syn_v4")
		revoke(t, l, "fin_v4", lab.ClientV4)
		mustFiltered(t, l, lab.ClientV4, ssh4)
	})

	// Between the knocks of the syn door, stray packets of flag (to a
	// later step, to an earlier one, to a port that is no knock port).
	knockWithStrays := func(t *testing.T, flag string) {
		t.Helper()
		mustKnock(t, l, false, 0, "7000")
		hping(t, flag, 9000)
		hping(t, flag, 7001)
		mustKnock(t, l, false, 0, "8000")
		hping(t, flag, 7000)
		hping(t, flag, 6000)
		mustKnock(t, l, false, 0, "9000")
	}

	t.Run("syn_ignores_ack", func(t *testing.T) {
		m := markLog(d)
		knockWithStrays(t, "-A")
		mustOpen(t, l, lab.ClientV4, ssh4)
		element(t, l, "syn_v4", lab.ClientV4)
		if got := m.lines("reset"); len(got) > 0 {
			t.Errorf("ACK-only packets reset the knock: %q", got)
		}
		revoke(t, l, "syn_v4", lab.ClientV4)
		mustFiltered(t, l, lab.ClientV4, ssh4)
	})

	// The control: SYNs in the same places are wrong knocks and
	// connections elsewhere, and the knock does not open.
	t.Run("syn_reset_by_syn", func(t *testing.T) {
		time.Sleep(time.Second) // let the per-source knock rate limit refill
		m := markLog(d)
		knockWithStrays(t, "-S")
		mustFiltered(t, l, lab.ClientV4, ssh4)
		noElements(t, l, "syn_v4")
		m.wait(t, time.Second, "knock reset: wrong knock", `"door": "syn"`, `"got": "9000:tcp"`, `"want": "8000:tcp"`)
		if got := m.lines("door opened"); len(got) > 0 {
			t.Errorf("opened despite SYNs between the knocks: %q", got)
		}
	})
}

// TestOneTimeSequences: each sequence of a one_time_sequences file
// opens once. The used line is commented out with '#' in a file written
// anew (temp file and rename: a new inode, the mode kept); replaying a
// used sequence opens nothing, from either family; the next line opens;
// when the file has run out the door says it is disabled, drops its knock
// rules, and no sequence opens.
func TestOneTimeSequences(t *testing.T) {
	l := newLab(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "one-time")
	const (
		header = "# nftknock one-time sequences\n"
		seq1   = "7100:tcp,7200:udp,7300:tcp\n"
		seq2   = "7400:udp 7500:tcp 7600:udp\n"
	)
	if err := os.WriteFile(file, []byte(header+seq1+seq2), 0o600); err != nil {
		t.Fatal(err)
	}
	inode := func() uint64 {
		t.Helper()
		fi, err := os.Stat(file)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600 kept", file, fi.Mode().Perm())
		}
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	mustContent := func(want string) {
		t.Helper()
		if got, err := os.ReadFile(file); err != nil || string(got) != want {
			t.Errorf("%s holds %q (%v), want %q", file, got, err, want)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 1 {
			t.Errorf("%s holds %d entries, want the file alone (a temp file left behind?)", dir, len(ents))
		}
	}
	// stays waits a little for a grant that must not come.
	stays := func(src netip.Addr, ssh netip.AddrPort, set string) {
		t.Helper()
		time.Sleep(200 * time.Millisecond)
		mustFiltered(t, l, src, ssh)
		noElements(t, l, set)
	}
	d := startDaemon(t, l, writeConfig(t, "", fmt.Sprintf(`
[[door]]
name = "ot"
one_time_sequences = %q
seq_timeout = "5s"
open = ["22:tcp"]
open_for = "30s"

[[door]]
name = "ssh"
sequence = ["7000:tcp", "8000:udp", "9000:tcp"]
seq_timeout = "5s"
open = ["22:tcp"]
open_for = "30s"
`, file)))
	ino0 := inode()
	// alive checks that the daemon still serves knocks on its other door
	// after a one-time sequence has been used, two sources at once: one
	// is part-way through while the other knocks.
	alive := func(when string) {
		t.Helper()
		mustKnock(t, l, false, 0, "7000")
		mustKnock(t, l, true, 0, "7000", "8000:udp", "9000")
		mustKnock(t, l, false, 0, "8000:udp", "9000")
		deadline := time.Now().Add(time.Second)
		for {
			v4, err4 := l.Elements("nftknock", "ssh_v4")
			v6, err6 := l.Elements("nftknock", "ssh_v6")
			if err := errors.Join(err4, err6); err != nil {
				t.Fatal(err)
			}
			if len(v4) == 1 && len(v6) == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the daemon no longer serves knocks: two sources knocked the ssh door, it holds %v and %v after 1s", when, v4, v6)
			}
			time.Sleep(20 * time.Millisecond)
		}
		revoke(t, l, "ssh_v4", lab.ClientV4)
		revoke(t, l, "ssh_v6", lab.ClientV6)
	}

	// The second line is not due yet.
	mustKnock(t, l, false, 0, "7400:udp", "7500", "7600:udp")
	stays(lab.ClientV4, ssh4, "ot_v4")

	m := markLog(d)
	mustKnock(t, l, false, 0, "7100", "7200:udp", "7300")
	mustOpen(t, l, lab.ClientV4, ssh4)
	element(t, l, "ot_v4", lab.ClientV4)
	m.wait(t, time.Second, "one-time sequence used; the next is due", `"door": "ot"`, `"line": 3`, `"left": 1`)
	mustContent(header + "#" + seq1 + seq2)
	ino1 := inode()
	if ino1 == ino0 {
		t.Errorf("%s was rewritten in place (same inode), not replaced by a rename", file)
	}

	// Replays of the used sequence, with the grant gone, open nothing.
	revoke(t, l, "ot_v4", lab.ClientV4)
	alive("after the first one-time sequence was used")
	mustFiltered(t, l, lab.ClientV4, ssh4)
	mustKnock(t, l, false, 0, "7100", "7200:udp", "7300")
	stays(lab.ClientV4, ssh4, "ot_v4")
	mustKnock(t, l, true, 0, "7100", "7200:udp", "7300")
	stays(lab.ClientV6, ssh6, "ot_v6")

	// The second line opens, over IPv6; the file has then run out.
	m = markLog(d)
	mustKnock(t, l, true, 0, "7400:udp", "7500", "7600:udp")
	mustOpen(t, l, lab.ClientV6, ssh6)
	element(t, l, "ot_v6", lab.ClientV6)
	m.wait(t, time.Second, "door disabled: its one_time_sequences file has run out", `"door": "ot"`)
	mustContent(header + "#" + seq1 + "#" + seq2)
	if inode() == ino1 {
		t.Errorf("%s was rewritten in place (same inode), not replaced by a rename", file)
	}
	if out, err := lab.Run(l.Server, "nft", "list", "chain", "inet", "nftknock", "input"); err != nil || strings.Contains(out, `prefix "ot"`) {
		t.Errorf("a disabled door still has knock rules: %v\n%s", err, out)
	}

	revoke(t, l, "ot_v6", lab.ClientV6)
	alive("after the one-time file ran out")
	for _, v6 := range []bool{false, true} {
		mustKnock(t, l, v6, 0, "7400:udp", "7500", "7600:udp")
		mustKnock(t, l, v6, 0, "7100", "7200:udp", "7300")
	}
	stays(lab.ClientV4, ssh4, "ot_v4")
	stays(lab.ClientV6, ssh6, "ot_v6")
	if got := m.lines("door opened", `"door": "ot"`); len(got) != 1 {
		t.Errorf("want exactly one open of door ot since the first sequence was used, got %q", got)
	}
	alive("after replays to a disabled door")
}

// TestOpenToAnyone: a knock from one address opens the door's port
// to every address, IPv4 and IPv6, for open_for; the door's _anyone set
// shows both families with their timeout; then the kernel closes it again.
func TestOpenToAnyone(t *testing.T) {
	l := newLab(t)
	startDaemon(t, l, writeConfig(t, "", `
[[door]]
name = "ssh"
sequence = ["7000:tcp", "8000:udp", "9000:tcp"]
seq_timeout = "5s"
open = ["22:tcp"]
open_to = "anyone"
open_for = "3s"
`))
	for _, src := range []netip.Addr{lab.ClientV4, lab.Client2V4} {
		mustFiltered(t, l, src, ssh4)
	}
	for _, src := range []netip.Addr{lab.ClientV6, lab.Client2V6} {
		mustFiltered(t, l, src, ssh6)
	}
	if els := anyoneElements(t, l, "ssh_anyone"); len(els) != 0 {
		t.Fatalf("ssh_anyone holds %v before any knock", els)
	}

	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	opened := time.Now()
	mustOpen(t, l, lab.Client2V4, ssh4)
	mustOpen(t, l, lab.Client2V6, ssh6)
	mustOpen(t, l, lab.ClientV6, ssh6)
	mustOpen(t, l, lab.ClientV4, ssh4)
	els := anyoneElements(t, l, "ssh_anyone")
	for _, fam := range []string{"ipv4", "ipv6"} {
		if e, ok := els[fam]; !ok || e[0] != "3s" {
			t.Errorf("ssh_anyone: %s element %v (present %v), want timeout 3s; set holds %v", fam, e, ok, els)
		}
	}
	if len(els) != 2 {
		t.Errorf("ssh_anyone holds %v, want ipv4 and ipv6", els)
	}

	time.Sleep(time.Until(opened.Add(3500 * time.Millisecond)))
	if els := anyoneElements(t, l, "ssh_anyone"); len(els) != 0 {
		t.Errorf("ssh_anyone still holds %v after open_for", els)
	}
	for _, src := range []netip.Addr{lab.ClientV4, lab.Client2V4} {
		mustFiltered(t, l, src, ssh4)
	}
	for _, src := range []netip.Addr{lab.ClientV6, lab.Client2V6} {
		mustFiltered(t, l, src, ssh6)
	}
}

// TestAlwaysAllow: always_allow addresses reach the door's port
// without knocking; others still need the knock.
func TestAlwaysAllow(t *testing.T) {
	l := newLab(t)
	startDaemon(t, l, writeConfig(t, "", `
[[door]]
name = "ssh"
sequence = ["7000:tcp", "8000:udp", "9000:tcp"]
seq_timeout = "5s"
open = ["22:tcp"]
open_for = "30s"
always_allow = ["192.0.2.3/32", "2001:db8::3"]
`))
	mustOpen(t, l, lab.Client2V4, ssh4)
	mustOpen(t, l, lab.Client2V6, ssh6)
	mustFiltered(t, l, lab.ClientV4, ssh4)
	mustFiltered(t, l, lab.ClientV6, ssh6)
	noElements(t, l, "ssh_v4")
	noElements(t, l, "ssh_v6")

	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	mustOpen(t, l, lab.ClientV4, ssh4)
	mustFiltered(t, l, lab.ClientV6, ssh6)
}

// TestInterface: a door counts only knocks that arrive on its
// interface, which it names: the daemon starts although the interface
// does not exist yet, and the door works once an interface of that name
// appears (here: the server's veth, renamed).
func TestInterface(t *testing.T) {
	l := newLab(t)
	if out, err := lab.Run(l.Server, "ip", "-o", "link", "show", "late0"); err == nil {
		t.Fatalf("late0 exists already: %s", out)
	}
	veth := l.ServerLink()
	if out, err := lab.Run(l.Server, "ip", "-o", "link"); err != nil || !strings.Contains(out, " "+veth+"@") {
		t.Fatalf("server veth %q not in `ip -o link`: %v\n%s", veth, err, out)
	}
	d := startDaemon(t, l, writeConfig(t, "", fmt.Sprintf(`
[[door]]
name = "veth"
interface = %q
sequence = ["7000:tcp", "8000:udp", "9000:tcp"]
seq_timeout = "5s"
open = ["22:tcp"]
open_for = "30s"

[[door]]
name = "late"
interface = "late0"
sequence = ["7100:tcp", "7200:udp", "7300:tcp"]
seq_timeout = "5s"
open = ["22:tcp"]
open_for = "30s"
`, veth)))

	// Knocks arrive on the veth: the late0 door does not count them.
	m := markLog(d)
	mustKnock(t, l, false, 0, "7100", "7200:udp", "7300")
	mustKnock(t, l, true, 0, "7100", "7200:udp", "7300")
	mustFiltered(t, l, lab.ClientV4, ssh4)
	mustFiltered(t, l, lab.ClientV6, ssh6)
	if got := m.lines(`"door": "late"`); len(got) > 0 {
		t.Errorf("knocks on %s counted for a door on late0: %q", veth, got)
	}
	// The door on the veth opens.
	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	mustOpen(t, l, lab.ClientV4, ssh4)
	mustKnock(t, l, true, 0, "7000", "8000:udp", "9000")
	mustOpen(t, l, lab.ClientV6, ssh6)
	revoke(t, l, "veth_v4", lab.ClientV4)
	revoke(t, l, "veth_v6", lab.ClientV6)

	// The veth becomes late0: now the late door counts its knocks and
	// the veth door does not. The daemon is not told.
	if err := l.RenameServerLink("late0"); err != nil {
		t.Fatal(err)
	}
	m = markLog(d)
	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	mustFiltered(t, l, lab.ClientV4, ssh4)
	if got := m.lines(`"door": "veth"`); len(got) > 0 {
		t.Errorf("knocks on late0 counted for the door on %s: %q", veth, got)
	}
	mustKnock(t, l, false, 0, "7100", "7200:udp", "7300")
	mustOpen(t, l, lab.ClientV4, ssh4)
	element(t, l, "late_v4", lab.ClientV4)
	noElements(t, l, "veth_v4")
}

// TestICMPSteps: "N:icmp" is an echo request with exactly N bytes
// of payload (ping -s N), over ICMP and ICMPv6, alone or mixed with UDP
// and TCP steps; another size is no knock.
func TestICMPSteps(t *testing.T) {
	needTools(t, "ping")
	l := newLab(t)
	startDaemon(t, l, writeConfig(t, "", `
[[door]]
name = "ping"
sequence = ["1000:icmp", "7000:tcp"]
seq_timeout = "5s"
open = ["22:tcp"]
open_for = "30s"

[[door]]
name = "mixed"
sequence = ["7100:udp", "600:icmp", "7200:tcp"]
seq_timeout = "5s"
open = ["22:tcp"]
open_for = "30s"
`))
	for _, fam := range []struct {
		v6  bool
		src netip.Addr
		ssh netip.AddrPort
		sfx string
	}{{false, lab.ClientV4, ssh4, "_v4"}, {true, lab.ClientV6, ssh6, "_v6"}} {
		t.Run(fam.sfx[1:], func(t *testing.T) {
			// Wrong sizes, one byte either side: no knock.
			for _, size := range []int{999, 1001} {
				mustPing(t, l, fam.v6, size, true) // not a knock: answered
				mustKnock(t, l, fam.v6, 0, "7000")
				mustFiltered(t, l, fam.src, fam.ssh)
			}
			mustPing(t, l, fam.v6, 1000, false) // the knock: dropped
			mustKnock(t, l, fam.v6, 0, "7000")
			mustOpen(t, l, fam.src, fam.ssh)
			element(t, l, "ping"+fam.sfx, fam.src)
			revoke(t, l, "ping"+fam.sfx, fam.src)

			mustKnock(t, l, fam.v6, 0, "7100:udp")
			mustPing(t, l, fam.v6, 601, true)
			mustKnock(t, l, fam.v6, 0, "7200")
			mustFiltered(t, l, fam.src, fam.ssh)

			mustKnock(t, l, fam.v6, 0, "7100:udp")
			mustPing(t, l, fam.v6, 600, false)
			mustKnock(t, l, fam.v6, 0, "7200")
			mustOpen(t, l, fam.src, fam.ssh)
			element(t, l, "mixed"+fam.sfx, fam.src)
			noElements(t, l, "ping"+fam.sfx)
		})
	}
}

// TestOpenPortRanges: open takes several ports and ranges; a knock
// opens a UDP range as well as a TCP port, to the knocking source, and
// the ports just outside the range are not gated.
func TestOpenPortRanges(t *testing.T) {
	l := newLab(t)
	for _, p := range []uint16{60000, 60500, 61000} {
		stop, err := l.UDPEcho(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
	}
	startDaemon(t, l, writeConfig(t, "", `
[[door]]
name = "ssh"
sequence = ["7000:tcp", "8000:udp", "9000:tcp"]
seq_timeout = "5s"
open = ["22:tcp", "60000-61000:udp"]
open_for = "30s"
`))
	udp := func(src, dst netip.Addr, want lab.UDPResult) {
		t.Helper()
		for _, p := range []uint16{60000, 60500, 61000} {
			mustUDP(t, l, src, netip.AddrPortFrom(dst, p), want)
		}
		// Outside the range nothing is gated: no listener, a refusal.
		mustUDP(t, l, src, netip.AddrPortFrom(dst, 59999), lab.UDPRefused)
		mustUDP(t, l, src, netip.AddrPortFrom(dst, 61001), lab.UDPRefused)
	}
	udp(lab.ClientV4, lab.ServerV4, lab.UDPNoAnswer)
	udp(lab.ClientV6, lab.ServerV6, lab.UDPNoAnswer)

	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	mustOpen(t, l, lab.ClientV4, ssh4)
	udp(lab.ClientV4, lab.ServerV4, lab.UDPReplied)
	udp(lab.ClientV6, lab.ServerV6, lab.UDPNoAnswer)
	udp(lab.Client2V4, lab.ServerV4, lab.UDPNoAnswer)

	mustKnock(t, l, true, 0, "7000", "8000:udp", "9000")
	mustOpen(t, l, lab.ClientV6, ssh6)
	udp(lab.ClientV6, lab.ServerV6, lab.UDPReplied)
}
