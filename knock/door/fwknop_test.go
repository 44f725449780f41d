package door

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables/expr"
	"go.uber.org/zap/zaptest/observer"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock"
	"github.com/nftknock/nftknock/knock/knocktest"
	"github.com/nftknock/nftknock/knock/loglimit"
	"github.com/nftknock/nftknock/knock/spa"
	"github.com/nftknock/nftknock/nft/plan"
)

// These tests hand fwknop doors the packets the stock fwknop client made
// (knock/fwknop/testdata/golden, made with their keys there).

const goldenDir = "../fwknop/testdata/golden"

// golden is one packet the stock client made, and when it was received.
type golden struct {
	payload  []byte
	received time.Time
}

func readGolden(t testing.TB, name string) golden {
	t.Helper()
	f, err := os.Open(filepath.Join(goldenDir, name+".txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var g golden
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "payload: "); ok {
			g.payload = []byte(v)
		}
		if v, ok := strings.CutPrefix(sc.Text(), "received: "); ok {
			sec, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			g.received = time.Unix(sec, 0)
		}
	}
	if g.payload == nil || g.received.IsZero() {
		t.Fatalf("%s: no payload or received line", name)
	}
	return g
}

// goldenKeyFiles writes the key pair name ("a" or "b") of keys.txt into
// files, and returns their paths.
func goldenKeyFiles(t testing.TB, name string) (enc, hmac string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(goldenDir, "keys.txt"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != name {
			continue
		}
		path := filepath.Join(dir, name+"."+strings.ToLower(f[1]))
		if err := os.WriteFile(path, []byte(f[2]+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		switch f[1] {
		case "KEY_BASE64":
			enc = path
		case "HMAC_KEY_BASE64":
			hmac = path
		}
	}
	if enc == "" || hmac == "" {
		t.Fatalf("no key pair %q in keys.txt", name)
	}
	return enc, hmac
}

// fwknopLab is a generation of fwknop doors, each with its own recorder,
// on a clock set just after the golden packets were made.
type fwknopLab struct {
	t     testing.TB
	doors []*fwknopDoor
	acts  map[Door]*recorder
	logs  *observer.ObservedLogs
	now   time.Time
}

// fwknopDoors makes one door per spec: its key pair name and the rest of
// its [[door]] table, all on 62201/udp unless the rest says otherwise.
func fwknopDoors(t testing.TB, specs ...[2]string) *fwknopLab {
	t.Helper()
	made := readGolden(t, "access").received
	l := &fwknopLab{t: t, acts: map[Door]*recorder{}, now: made.Add(time.Second)}
	deps, logs := testDeps(t, func() time.Time { return made.Add(-time.Minute) }, nil)
	l.logs = logs
	deps.Shared = NewShared(func(d Door) Actions { return l.acts[d] })
	var toml strings.Builder
	for i, s := range specs {
		enc, mac := goldenKeyFiles(t, s[0])
		fmt.Fprintf(&toml, "[[door]]\nname = \"fw%d\"\nfwknop_key_file = %q\nfwknop_hmac_key_file = %q\nopen_for = \"30s\"\n%s\n", i+1, enc, mac, s[1])
		if !strings.Contains(s[1], "fwknop_port") {
			toml.WriteString("fwknop_port = \"62201:udp\"\n")
		}
	}
	cfg, err := config.Parse("f.toml", []byte(toml.String()))
	if err != nil {
		t.Fatal(err)
	}
	for i := range cfg.Doors {
		d, err := New("f.toml", &cfg.Doors[i], deps, nil)
		if err != nil {
			t.Fatal(err)
		}
		l.doors = append(l.doors, d.(*fwknopDoor))
		l.acts[d] = newRecorder()
	}
	return l
}

// send hands the first door a packet from src, as the engine does with
// every packet of the shared port.
func (l *fwknopLab) send(src netip.Addr, payload []byte) {
	dst := srv
	if src.Is6() {
		dst = netip.MustParseAddr("2001:db8::1")
	}
	first := l.doors[0]
	first.Packet(l.now, &knock.Logged{Payload: knocktest.UDP(src, dst, 62201, payload), Prefix: []byte("fw1/1")}, l.acts[first])
}

// opens lists what each door asked to open, as "door: open ...".
func (l *fwknopLab) opens() []string {
	var out []string
	for _, d := range l.doors {
		for _, o := range l.acts[d].opens() {
			out = append(out, d.cfg.Name+": "+o)
		}
	}
	return out
}

func (l *fwknopLab) reset() {
	for _, r := range l.acts {
		r.asked = nil
	}
}

// rejected is the reason field of every rejection line, in order.
func (l *fwknopLab) rejected() []string {
	var out []string
	for _, e := range l.logs.FilterMessageSnippet("fwknop SPA packet rejected").All() {
		out = append(out, fmt.Sprint(e.ContextMap()["door"], ": ", e.ContextMap()["reason"]))
	}
	return out
}

// TestFwknopDoorsShareAPort: two doors on one port, each with its own
// keys. The kernel logs the port once, under the first door's prefix;
// the first door finds each packet's door by its HMAC key and that door
// opens what the packet asks, through its own actions.
func TestFwknopDoorsShareAPort(t *testing.T) {
	l := fwknopDoors(t, [2]string{"a", `open = ["22:tcp", "2222:tcp"]`}, [2]string{"b", `open = ["1194:udp"]`})
	b := plan.NewBuilder("nftknock", 7113, func(d string) string { return d + "/1" })
	for _, d := range l.doors {
		b.Door(Gate(d.cfg))
		d.Plan(b)
	}
	var prefixes []string
	for _, r := range b.Build().Chains[0].Rules {
		for _, e := range r.Exprs {
			if lg, ok := e.(*expr.Log); ok {
				prefixes = append(prefixes, string(lg.Data))
			}
		}
	}
	if strings.Join(prefixes, ",") != "fw1/1" {
		t.Errorf("the port is logged under %q, want once under fw1/1", prefixes)
	}

	l.send(client, readGolden(t, "access").payload)
	l.send(netip.MustParseAddr("192.0.2.3"), readGolden(t, "other_door").payload)
	want := []string{"fw1: open 192.0.2.2 [22:tcp] for 0s", "fw2: open 192.0.2.3 [1194:udp] for 0s"}
	if got := l.opens(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("opened %q, want %q", got, want)
	}
	if n := l.logs.FilterMessage("fwknop SPA request accepted").Len(); n != 2 {
		t.Errorf("%d accepted lines, want 2", n)
	}
	acc := l.logs.FilterMessage("fwknop SPA request accepted").All()[0].ContextMap()
	if acc["door"] != "fw1" || acc["user"] != "root" || fmt.Sprint(acc["ports"]) != "[22:tcp]" || acc["for"] != "192.0.2.2" {
		t.Errorf("accepted line %v", acc)
	}
}

// TestFwknopRefusals: each packet the door must not open for opens
// nothing, and is logged with its own reason, in fwknop's terms.
func TestFwknopRefusals(t *testing.T) {
	// One bit of the ciphertext flipped: the base64 digit whose value
	// differs in its lowest bit (still base64, so the HMAC refuses it).
	const b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	flipped := []byte(string(readGolden(t, "access").payload))
	flipped[40] = b64[strings.IndexByte(b64, flipped[40])^1]
	for _, tc := range []struct {
		name   string
		door   string
		packet []byte
		src    netip.Addr
		want   string
	}{
		{"wrong HMAC key", `open = ["1194:udp"]`, readGolden(t, "access").payload, client,
			"fw1: HMAC mismatch (wrong HMAC key, or a changed byte)"},
		{"flipped bit", `open = ["22:tcp"]`, flipped, client, "fw1: HMAC mismatch (wrong HMAC key, or a changed byte)"},
		{"stale", `open = ["22:tcp"]`, readGolden(t, "stale").payload, client, "fw1: " + fwknopReasonText[fwStale]},
		{"command", `open = ["22:tcp"]`, readGolden(t, "command").payload, client, "fw1: command message (--server-cmd): never run"},
		{"NAT", `open = ["22:tcp"]`, readGolden(t, "nat").payload, client, "fw1: NAT access message (-N, --nat-local): not supported"},
		{"port not in open", `open = ["2222:tcp"]`, readGolden(t, "access").payload, client, "fw1: " + fwknopReasonText[fwPort]},
		{"one port of two not in open", `open = ["22:tcp"]`, readGolden(t, "two_ports").payload, client, "fw1: " + fwknopReasonText[fwPort]},
		{"source not in fwknop_source", "open = [\"22:tcp\"]\nfwknop_source = [\"10.0.0.0/8\"]", readGolden(t, "access").payload, client,
			"fw1: " + fwknopReasonText[fwSource]},
		{"-s with fwknop_require_source", "open = [\"22:tcp\"]\nfwknop_require_source = true", readGolden(t, "source").payload, client,
			"fw1: " + fwknopReasonText[fwNoAddress]},
		{"-a not the source with fwknop_require_source", "open = [\"22:tcp\"]\nfwknop_require_source = true", readGolden(t, "access").payload,
			netip.MustParseAddr("198.51.100.9"), "fw1: " + fwknopReasonText[fwNotSource]},
		{"not an fwknop packet", `open = ["22:tcp"]`, []byte("hello"), client, "fw1: too short for an SPA packet"},
		{"re-prefixed", `open = ["22:tcp"]`, append([]byte("U2FsdGVkX1"), readGolden(t, "access").payload...), client,
			"fw1: begins with U2FsdGVkX1: a captured packet re-sent with its prefix put back"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := fwknopDoors(t, [2]string{"a", tc.door})
			if tc.name == "wrong HMAC key" {
				l = fwknopDoors(t, [2]string{"b", tc.door})
			}
			l.send(tc.src, tc.packet)
			if got := l.opens(); len(got) != 0 {
				t.Errorf("opened %q", got)
			}
			if got := l.rejected(); len(got) != 1 || got[0] != tc.want {
				t.Errorf("rejections %q, want %q", got, tc.want)
			}
			// An authentic packet's line says whose it was.
			lines := l.logs.FilterMessageSnippet("fwknop SPA packet rejected").All()
			authentic := !strings.Contains(tc.want, "HMAC") && !strings.Contains(tc.want, "too short") && !strings.Contains(tc.want, "U2FsdGVkX1")
			if user := lines[0].ContextMap()["user"]; authentic && user != "root" {
				t.Errorf("user %v, want the packet's root", user)
			}
		})
	}
}

// TestFwknopGrants: what an accepted request opens, for whom, for how
// long: -a's address or the source (-s), the client's -f capped, the
// address the request names though the packet came over IPv6.
func TestFwknopGrants(t *testing.T) {
	v6 := netip.MustParseAddr("2001:db8::2")
	for _, tc := range []struct {
		name, door, packet string
		src                netip.Addr
		want               string
	}{
		{"-a", `open = ["22:tcp", "2222:tcp"]`, "access", netip.MustParseAddr("198.51.100.9"), "fw1: open 192.0.2.2 [22:tcp] for 0s"},
		{"-s", `open = ["22:tcp"]`, "source", netip.MustParseAddr("198.51.100.9"), "fw1: open 198.51.100.9 [22:tcp] for 0s"},
		{"-s over IPv6", `open = ["22:tcp"]`, "source", v6, "fw1: open 2001:db8::2 [22:tcp] for 0s"},
		{"-a over IPv6", `open = ["22:tcp"]`, "access", v6, "fw1: open 192.0.2.2 [22:tcp] for 0s"},
		{"-a is the source, required", "open = [\"22:tcp\"]\nfwknop_require_source = true", "access", client, "fw1: open 192.0.2.2 [22:tcp] for 0s"},
		{"two ports", `open = ["22:tcp", "53:udp"]`, "two_ports", client, "fw1: open 192.0.2.2 [22:tcp 53:udp] for 0s"},
		{"-f 60 under the cap", `open = ["22:tcp"]`, "client_timeout", client, "fw1: open 192.0.2.2 [22:tcp] for 1m0s"},
		{"-f 60 capped", "open = [\"22:tcp\"]\nfwknop_max_open_for = \"20s\"", "client_timeout", client, "fw1: open 192.0.2.2 [22:tcp] for 20s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := fwknopDoors(t, [2]string{"a", tc.door})
			l.send(tc.src, readGolden(t, tc.packet).payload)
			if got := l.opens(); len(got) != 1 || got[0] != tc.want {
				t.Errorf("opened %q, want %q (rejected: %q)", got, tc.want, l.rejected())
			}
		})
	}
}

// TestFwknopReplay: a packet opens once; sent again, while it could still
// be fresh, it is a replay; a packet sent before the daemon started is
// refused, as the cache cannot know whether it was used.
func TestFwknopReplay(t *testing.T) {
	l := fwknopDoors(t, [2]string{"a", `open = ["22:tcp"]`})
	p := readGolden(t, "access").payload
	l.send(client, p)
	l.now = l.now.Add(100 * time.Second) // still within fwknop_max_age
	l.send(netip.MustParseAddr("198.51.100.9"), p)
	if got := l.opens(); len(got) != 1 {
		t.Errorf("opened %q, want once", got)
	}
	if got := l.rejected(); len(got) != 1 || got[0] != "fw1: "+fwknopReasonText[fwReplay] {
		t.Errorf("rejections %q", got)
	}
	l.doors[0].deps.Replay.Prune(l.now)
	if l.doors[0].deps.Replay.Len() != 1 {
		t.Error("the replay id was forgotten while the packet is fresh")
	}
	l.doors[0].deps.Replay.Prune(readGolden(t, "access").received.Add(config.DefaultFwknopMaxAge + time.Second))
	if l.doors[0].deps.Replay.Len() != 0 {
		t.Error("the replay id outlives the packet's freshness")
	}

	late := fwknopDoors(t, [2]string{"a", `open = ["22:tcp"]`})
	late.doors[0].deps.Replay = spa.NewReplay(0, late.now) // the daemon started after the packet was made
	late.send(client, p)
	if got := late.rejected(); len(late.opens()) != 0 || len(got) != 1 || got[0] != "fw1: "+fwknopReasonText[fwBeforeStart] {
		t.Errorf("a packet from before the start: opened %q, rejected %q", late.opens(), got)
	}
}

// TestFwknopSharedKeysLookOn: two doors with one key pair, told apart by
// SOURCE as fwknopd does: a packet the first refuses is the second's.
func TestFwknopSharedKeysLookOn(t *testing.T) {
	l := fwknopDoors(t, [2]string{"a", "open = [\"22:tcp\"]\nfwknop_source = [\"10.0.0.0/8\"]"}, [2]string{"a", `open = ["22:tcp"]`})
	l.send(client, readGolden(t, "access").payload)
	if got := l.opens(); len(got) != 1 || got[0] != "fw2: open 192.0.2.2 [22:tcp] for 0s" {
		t.Errorf("opened %q, want by fw2", got)
	}
	l.reset()
	l.send(client, readGolden(t, "two_ports").payload) // udp/53: neither opens it
	if got := l.rejected(); len(l.opens()) != 0 || len(got) != 1 || got[0] != "fw1: "+fwknopReasonText[fwPort] {
		t.Errorf("refused by both: opened %q, rejected %q (want the first door's reason)", l.opens(), got)
	}
}

// TestFwknopSharedPortOneInterface: doors that share a port must take its
// packets on one interface: one log rule serves them all.
func TestFwknopSharedPortOneInterface(t *testing.T) {
	enc, mac := goldenKeyFiles(t, "a")
	cfg, err := config.Parse("f.toml", []byte(fmt.Sprintf(`
[[door]]
name = "fw1"
interface = "eth0"
fwknop_port = "62201:udp"
fwknop_key_file = %[1]q
fwknop_hmac_key_file = %[2]q
open = ["22:tcp"]
open_for = "30s"
[[door]]
name = "fw2"
fwknop_port = "62201:udp"
fwknop_key_file = %[1]q
fwknop_hmac_key_file = %[2]q
open = ["23:tcp"]
open_for = "30s"
`, enc, mac)))
	if err != nil {
		t.Fatal(err)
	}
	deps, _ := testDeps(t, time.Now, nil)
	deps.Shared = NewShared(func(Door) Actions { return nil })
	if _, err := New("f.toml", &cfg.Doors[0], deps, nil); err != nil {
		t.Fatal(err)
	}
	_, err = New("f.toml", &cfg.Doors[1], deps, nil)
	if err == nil || !strings.Contains(err.Error(), `door "fw2": interface: door "fw2" shares fwknop_port 62201:udp with door "fw1", whose interface is "eth0"`) {
		t.Errorf("got %v", err)
	}
}

// TestFwknopFloodAllocatesNothing: junk to the port, and well-formed
// packets no key made, cost no allocation once the log lines of the
// second are spent: a flood is no work for the garbage collector.
func TestFwknopFloodAllocatesNothing(t *testing.T) {
	l := fwknopDoors(t, [2]string{"a", `open = ["22:tcp"]`}, [2]string{"b", `open = ["1194:udp"]`})
	junk := knocktest.UDP(netip.MustParseAddr("10.9.8.7"), srv, 62201, []byte("flood"))
	forged := []byte(string(readGolden(t, "access").payload))
	const b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	forged[50] = b64[strings.IndexByte(b64, forged[50])^1] // well-formed, but no key made it
	unauth := knocktest.UDP(netip.MustParseAddr("10.9.8.7"), srv, 62201, forged)
	first := l.doors[0]
	a := l.acts[first]
	for range 2 * loglimit.PerSecond {
		first.Packet(l.now, &knock.Logged{Payload: junk}, a)
		first.Packet(l.now, &knock.Logged{Payload: unauth}, a)
	}
	if got := l.rejected(); len(got) != 2*loglimit.PerSecond || got[0] != "fw1,fw2: too short for an SPA packet" ||
		got[1] != "fw1,fw2: HMAC mismatch (wrong HMAC key, or a changed byte)" {
		t.Errorf("rejection lines %q: want %d, a budget a reason", got, 2*loglimit.PerSecond)
	}
	if raceEnabled {
		t.Skip("allocation counts mean nothing under the race detector (sync.Pool drops items)")
	}
	lg := &knock.Logged{}
	allocs := testing.AllocsPerRun(1000, func() {
		lg.Payload = junk
		first.Packet(l.now, lg, a)
		lg.Payload = unauth
		first.Packet(l.now, lg, a)
	})
	if allocs != 0 {
		t.Errorf("%.2f allocations per pair of flood packets, want 0", allocs)
	}
}

// BenchmarkFwknopRefusal is what a flood costs an fwknop door, per packet
// (the log lines of the second spent): junk to the port (hping3's empty
// datagrams), and well-formed packets no key made, tried against two doors
// that share the port.
func BenchmarkFwknopRefusal(b *testing.B) {
	l := fwknopDoors(b, [2]string{"a", `open = ["22:tcp"]`}, [2]string{"b", `open = ["1194:udp"]`})
	const b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	forged := []byte(string(readGolden(b, "access").payload))
	forged[50] = b64[strings.IndexByte(b64, forged[50])^1]
	for name, payload := range map[string][]byte{"junk": nil, "unauthentic": forged} {
		b.Run(name, func(b *testing.B) {
			lg := &knock.Logged{Payload: knocktest.UDP(netip.MustParseAddr("10.9.8.7"), srv, 62201, payload)}
			first := l.doors[0]
			a := l.acts[first]
			b.ReportAllocs()
			for b.Loop() {
				first.Packet(l.now, lg, a)
			}
		})
	}
}
