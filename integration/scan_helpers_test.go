package integration

// Helpers for the tests of knockd's doors and of a hostile network.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nftknock/nftknock/integration/lab"
	"github.com/nftknock/nftknock/integration/nstest"
)

// logMark is a position in a daemon's log: what it logs after it.
type logMark struct {
	d *lab.Daemon
	n int
}

func markLog(d *lab.Daemon) logMark { return logMark{d, len(d.Log())} }

// since returns what the daemon logged after the mark.
func (m logMark) since() string { return m.d.Log()[m.n:] }

// wait waits until the daemon has logged a line after the mark that holds
// every one of parts.
func (m logMark) wait(t testing.TB, within time.Duration, parts ...string) string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		for _, line := range strings.Split(m.since(), "\n") {
			if containsAll(line, parts...) {
				return line
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q within %s; logged since:\n%s", parts, within, m.since())
			return ""
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lines returns the lines logged after the mark that hold every one of parts.
func (m logMark) lines(parts ...string) []string {
	var out []string
	for _, line := range strings.Split(m.since(), "\n") {
		if line != "" && containsAll(line, parts...) {
			out = append(out, line)
		}
	}
	return out
}

func containsAll(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// revoke takes the grant of set (door_v4, door_v6) away by hand, as a
// user would: with `nftknock revoke`, which asks the daemon that owns the
// table.
func revoke(t testing.TB, l *lab.Lab, set string, addr netip.Addr) {
	t.Helper()
	door := strings.TrimSuffix(strings.TrimSuffix(set, "_v4"), "_v6")
	if out, err := lab.Run(l.Server, nftknockBin(t), "revoke", "-door", door, addr.String()); err != nil {
		t.Fatalf("nftknock revoke -door %s %s: %v %s", door, addr, err, out)
	}
}

// runClient runs argv in the client namespace, failing the test if it fails.
func runClient(t testing.TB, l *lab.Lab, argv ...string) string {
	t.Helper()
	out, err := lab.Run(l.Client, argv...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return out
}

// mustUDP sends one datagram from the client and checks what comes back.
func mustUDP(t testing.TB, l *lab.Lab, from netip.Addr, to netip.AddrPort, want lab.UDPResult) {
	t.Helper()
	wait := filteredWait
	if want != lab.UDPNoAnswer {
		wait = 2 * time.Second
	}
	got, err := l.UDPExchange(from, to, wait)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("udp %s → %s: %s, want %s", from, to, got, want)
	}
}

// mustPing pings the server from the client with size bytes of payload
// and checks whether a reply comes.
func mustPing(t testing.TB, l *lab.Lab, v6 bool, size int, wantReply bool) {
	t.Helper()
	wait := 500 * time.Millisecond
	if wantReply {
		wait = 2 * time.Second
	}
	got, err := l.Ping(v6, size, wait)
	if err != nil {
		t.Fatal(err)
	}
	if got != wantReply {
		t.Errorf("ping (v6 %v) -s %d: reply %v, want %v", v6, size, got, wantReply)
	}
}

var anyoneRE = regexp.MustCompile(`\b(ipv4|ipv6) timeout ([0-9a-z]+) expires ([0-9a-z]+)`)

// anyoneElements lists the families in an open_to = "anyone" door's set
// with their timeouts, as `nft list set` shows them.
func anyoneElements(t testing.TB, l *lab.Lab, set string) map[string][2]string {
	t.Helper()
	out, err := lab.Run(l.Server, "nft", "list", "set", "inet", "nftknock", set)
	if err != nil {
		t.Fatal(err)
	}
	els := map[string][2]string{}
	for _, m := range anyoneRE.FindAllStringSubmatch(out, -1) {
		els[m[1]] = [2]string{m[2], m[3]}
	}
	return els
}

// The hook recorder: the test binary itself, run by the daemon as a door
// hook. Its first argument is hookMarker; the rest are what the daemon
// passed. It appends one JSON line to the file named by its second
// argument, then obeys the options among its arguments:
// --sleep=DURATION, --stderr=TEXT, --exit=CODE.
const hookMarker = "nftknock-test-hook-recorder"

// hookRecord is one line of the recorder's file.
type hookRecord struct {
	Args []string `json:"args"` // the arguments after the file name
	Env  []string `json:"env"`
	Pid  int      `json:"pid"`
	PPid int      `json:"ppid"`
	At   time.Time
}

func init() {
	if len(os.Args) < 3 || os.Args[1] != hookMarker {
		return
	}
	os.Exit(hookRecorder(os.Args[2], os.Args[3:]))
}

func hookRecorder(file string, args []string) int {
	rec, _ := json.Marshal(hookRecord{Args: args, Env: os.Environ(), Pid: os.Getpid(), PPid: os.Getppid(), At: time.Now()})
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 99
	}
	f.Write(append(rec, '\n'))
	f.Close()
	code := 0
	for _, a := range args {
		switch {
		case strings.HasPrefix(a, "--sleep="):
			d, _ := time.ParseDuration(strings.TrimPrefix(a, "--sleep="))
			time.Sleep(d)
		case strings.HasPrefix(a, "--stderr="):
			fmt.Fprintln(os.Stderr, strings.TrimPrefix(a, "--stderr="))
		case strings.HasPrefix(a, "--exit="):
			fmt.Sscan(strings.TrimPrefix(a, "--exit="), &code)
		}
	}
	return code
}

// hookRecorderArgv is the start of a hook's argv that runs the recorder,
// appending to file.
func hookRecorderArgv(t testing.TB, file string) []string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return []string{self, hookMarker, file}
}

// hookRecords reads the recorder's file.
func hookRecords(t testing.TB, file string) []hookRecord {
	t.Helper()
	data, err := os.ReadFile(file)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var recs []hookRecord
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if line == "" {
			continue
		}
		var r hookRecord
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("hook record %q: %v", line, err)
		}
		recs = append(recs, r)
	}
	return recs
}

// waitHookRecords waits until file holds at least n records.
func waitHookRecords(t testing.TB, file string, n int, within time.Duration) []hookRecord {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		recs := hookRecords(t, file)
		if len(recs) >= n {
			return recs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s holds %d hook records after %s, want %d: %+v", file, len(recs), within, n, recs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sendOne sends one packet from the client to the server's IPv4 address
// with hping3; args are its mode and port options ("-F", "-p", "7000"). hping3 exits 1 when
// nothing answers, as a knock port does; that is not a failure here.
func sendOne(t testing.TB, l *lab.Lab, args ...string) {
	t.Helper()
	argv := append(append([]string{"hping3", "-q", "-c", "1"}, args...), lab.ServerV4.String())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := lab.Command(ctx, l.Client, argv...).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "1 packets transmitted") {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
}

// tomlList writes strings as a TOML array of basic strings.
func tomlList(items ...string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// needTools is nstest.Require for the tools a test drives beyond the lab's.
func needTools(t testing.TB, tools ...string) {
	t.Helper()
	nstest.Require(t, tools...)
}
