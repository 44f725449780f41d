package integration

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nftknock/nftknock/integration/lab"
)

// TestHooks: on_open and on_close run as real processes (argv, no
// shell), with {door} and {src} replaced as whole arguments only, off the
// packet path: a hook that is still running (and then killed at
// hook_timeout) holds up neither its own knock nor the next one. on_close
// runs when the grant ends, by open_for running out or by the close
// sequence, once. Exit status and stderr are logged.
func TestHooks(t *testing.T) {
	l := newLab(t)
	rec := filepath.Join(t.TempDir(), "hooks")
	argv := hookRecorderArgv(t, rec)
	d := startDaemon(t, l, writeConfig(t, "", fmt.Sprintf(`
[[door]]
name = "ssh"
sequence = ["7000:tcp", "8000:udp", "9000:tcp"]
close_sequence = ["9100:tcp", "9200:udp"]
seq_timeout = "5s"
open = ["22:tcp"]
open_for = "2s"
hook_timeout = "1500ms"
on_open = %s
on_close = %s
`,
		tomlList(append(argv, "open", "{door}", "{src}", "x{src}", "{src} ", "--sleep=4s")...),
		tomlList(append(argv, "close", "{door}", "{src}", "--stderr=bye from {src}", "--exit=3")...))))
	pid := d.Pid()

	byEvent := func(recs []hookRecord, event string, src netip.Addr) []hookRecord {
		var out []hookRecord
		for _, r := range recs {
			if len(r.Args) >= 3 && r.Args[0] == event && r.Args[2] == src.String() {
				out = append(out, r)
			}
		}
		return out
	}

	// IPv4 knocks; while its on_open hook sleeps, IPv6 knocks: both open
	// within the usual second.
	m := markLog(d)
	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	opened := time.Now()
	mustOpen(t, l, lab.ClientV4, ssh4)
	mustKnock(t, l, true, 0, "7000", "8000:udp", "9000")
	mustOpen(t, l, lab.ClientV6, ssh6)
	recs := waitHookRecords(t, rec, 2, time.Second)
	if got := m.lines("hook finished"); len(got) > 0 {
		t.Errorf("on_open finished already, though it sleeps 4s: %q", got)
	}
	if got := m.lines("hook failed"); len(got) > 0 {
		t.Errorf("a hook ended already, though it sleeps 4s: %q", got)
	}
	for _, src := range []netip.Addr{lab.ClientV4, lab.ClientV6} {
		r := byEvent(recs, "open", src)
		if len(r) != 1 {
			t.Fatalf("on_open for %s ran %d times: %+v", src, len(r), recs)
		}
		want := []string{"open", "ssh", src.String(), "x{src}", "{src} ", "--sleep=4s"}
		if !slices.Equal(r[0].Args, want) {
			t.Errorf("on_open argv %q, want %q", r[0].Args, want)
		}
		if r[0].PPid != pid {
			t.Errorf("on_open's parent is pid %d, want the daemon, %d", r[0].PPid, pid)
		}
		for _, kv := range []string{"NFTKNOCK_EVENT=on_open", "NFTKNOCK_DOOR=ssh", "NFTKNOCK_SOURCE=" + src.String()} {
			if !slices.Contains(r[0].Env, kv) {
				t.Errorf("on_open's environment %q lacks %s", r[0].Env, kv)
			}
		}
	}

	// open_for (2s) runs out: on_close runs for each source, within the
	// daemon's 1s sweep, and its exit status and stderr are logged.
	recs = waitHookRecords(t, rec, 4, 4*time.Second)
	for _, src := range []netip.Addr{lab.ClientV4, lab.ClientV6} {
		r := byEvent(recs, "close", src)
		if len(r) != 1 {
			t.Fatalf("on_close for %s ran %d times after open_for: %+v", src, len(r), recs)
		}
		want := []string{"close", "ssh", src.String(), "--stderr=bye from {src}", "--exit=3"}
		if !slices.Equal(r[0].Args, want) {
			t.Errorf("on_close argv %q, want %q", r[0].Args, want)
		}
		if after := r[0].At.Sub(opened); after < 2*time.Second || after > 4*time.Second {
			t.Errorf("on_close for %s ran %s after the knock, want after open_for (2s) and within the sweep", src, after)
		}
		m.wait(t, 2*time.Second, "hook failed", `"event": "on_close"`, fmt.Sprintf(`"source": %q`, src), `"status": "3"`,
			`"stderr": "bye from {src}"`)
	}
	noElements(t, l, "ssh_v4")
	// The on_open hooks are killed at hook_timeout (1.5s) and that is logged.
	m.wait(t, 2*time.Second, "hook failed", `"event": "on_open"`, `"status": "timed out after 1.5s"`)

	// Knock again, then the close sequence: on_close runs at once, and
	// not a second time when open_for would have run out.
	m = markLog(d)
	mustKnock(t, l, false, 0, "7000", "8000:udp", "9000")
	mustOpen(t, l, lab.ClientV4, ssh4)
	mustKnock(t, l, false, 0, "9100", "9200:udp")
	closed := time.Now()
	recs = waitHookRecords(t, rec, 6, time.Second)
	if r := byEvent(recs, "close", lab.ClientV4); len(r) != 2 || r[1].At.Sub(closed) > time.Second {
		t.Errorf("on_close after the close sequence: %+v", r)
	}
	noElements(t, l, "ssh_v4")
	mustFiltered(t, l, lab.ClientV4, ssh4)
	time.Sleep(3 * time.Second)
	if r := byEvent(hookRecords(t, rec), "close", lab.ClientV4); len(r) != 2 {
		t.Errorf("on_close for %s ran %d times in all, want 2 (once per grant)", lab.ClientV4, len(r))
	}
	if got := m.lines("hook"); !slices.ContainsFunc(got, func(s string) bool { return strings.Contains(s, `"event": "on_close"`) }) {
		t.Errorf("no on_close hook logged after the close sequence: %q", m.since())
	}
}
