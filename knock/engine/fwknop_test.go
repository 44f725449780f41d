package engine_test

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

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock/knocktest"
	"github.com/nftknock/nftknock/nft/plan"
)

const goldenDir = "../fwknop/testdata/golden"

// goldenPacket is the payload of a packet the stock fwknop client made,
// and its timestamp.
func goldenPacket(t *testing.T, name string) ([]byte, time.Time) {
	t.Helper()
	f, err := os.Open(filepath.Join(goldenDir, name+".txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var payload []byte
	var at time.Time
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "payload: "); ok {
			payload = []byte(v)
		}
		if v, ok := strings.CutPrefix(sc.Text(), "received: "); ok {
			sec, _ := strconv.ParseInt(v, 10, 64)
			at = time.Unix(sec, 0)
		}
	}
	return payload, at
}

// goldenKeys writes key pair name of keys.txt into two files.
func goldenKeys(t *testing.T, name string) (enc, hmac string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(goldenDir, "keys.txt"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == name {
			path := filepath.Join(dir, strings.ToLower(f[1]))
			if err := os.WriteFile(path, []byte(f[2]+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if f[1] == "KEY_BASE64" {
				enc = path
			} else {
				hmac = path
			}
		}
	}
	return enc, hmac
}

// TestFwknopDoorsShareAPort runs two fwknop doors on one port through the
// whole daemon: one log rule for the port under the first door's prefix,
// each packet opening its own door's port (and only it) in the door's
// address . protocol . port set, for open_for or the client's -f.
func TestFwknopDoorsShareAPort(t *testing.T) {
	_, made := goldenPacket(t, "access")
	// The daemon started just before the client sent its packets.
	now := func() time.Time { return made.Add(-time.Second) }
	encA, macA := goldenKeys(t, "a")
	encB, macB := goldenKeys(t, "b")
	h := startAt(t, now, fmt.Sprintf(`
[[door]]
name = "fw"
fwknop_port = "62201:udp"
fwknop_key_file = %q
fwknop_hmac_key_file = %q
open = ["22:tcp", "2222:tcp"]
open_for = "30s"
[[door]]
name = "fw_2"
fwknop_port = "62201:udp"
fwknop_key_file = %q
fwknop_hmac_key_file = %q
open = ["1194:udp"]
open_for = "45s"
`, encA, macA, encB, macB))
	var logs []string
	for _, r := range h.fw.Plan().Chains[0].Rules {
		for _, e := range r.Exprs {
			if l, ok := e.(*expr.Log); ok {
				logs = append(logs, string(l.Data))
			}
		}
	}
	if strings.Join(logs, ",") != "fw/1" {
		t.Errorf("log prefixes %q, want the shared port's once, fw/1", logs)
	}
	fw := plan.Door{Name: "fw", PerPort: true}
	fw2 := plan.Door{Name: "fw_2", PerPort: true}
	src := netip.MustParseAddr("198.51.100.9")
	send := func(name string) {
		p, _ := goldenPacket(t, name)
		h.src.Log("fw/1", knocktest.UDP(src, server, 62201, p))
	}
	has := func(d plan.Door, a string, proto config.Proto, port uint16) (timeout time.Duration, ok bool) {
		set, key := d.GrantSet(netip.MustParseAddr(a), proto, port)
		for _, e := range h.fw.Elements(set) {
			if string(e.Key) == string(key) {
				return e.Timeout, true
			}
		}
		return 0, false
	}
	wait := func(what string, cond func() bool) {
		deadline := time.Now().Add(3 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("not within 3s: %s; fw_v4 %v, fw_2_v4 %v", what, h.fw.Elements("fw_v4"), h.fw.Elements("fw_2_v4"))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	send("access")     // key a: -A tcp/22 -a 192.0.2.2
	send("other_door") // key b: -A udp/1194 -a 192.0.2.3
	wait("fw's tcp/22 and fw_2's udp/1194", func() bool {
		_, a := has(fw, "192.0.2.2", config.TCP, 22)
		_, b := has(fw2, "192.0.2.3", config.UDP, 1194)
		return a && b
	})
	if d, _ := has(fw, "192.0.2.2", config.TCP, 22); d != 30*time.Second {
		t.Errorf("fw's grant for %v, want open_for", d)
	}
	if d, _ := has(fw2, "192.0.2.3", config.UDP, 1194); d != 45*time.Second {
		t.Errorf("fw_2's grant for %v, want its open_for", d)
	}
	if _, ok := has(fw, "192.0.2.2", config.TCP, 2222); ok {
		t.Error("a request for tcp/22 opened tcp/2222 too")
	}
	send("client_timeout") // key a: -f 60, under fwknopd's 5m cap
	wait("the -f 60 grant", func() bool { d, _ := has(fw, "192.0.2.2", config.TCP, 22); return d == time.Minute })
	send("access") // again: a replay
	h.settle()
	if h.logs.FilterMessageSnippet("fwknop SPA packet rejected: replay").Len() != 1 {
		t.Error("the resent packet was not refused as a replay")
	}
}

// TestFwknopSharedPortReload: a reload that puts the second door first
// moves the port's log rule to its prefix; a packet logged under the old
// first door's prefix before the reload is still the port's doors', and
// both doors open for packets under the new one.
func TestFwknopSharedPortReload(t *testing.T) {
	_, made := goldenPacket(t, "access")
	now := func() time.Time { return made.Add(-time.Second) }
	encA, macA := goldenKeys(t, "a")
	encB, macB := goldenKeys(t, "b")
	door := func(name, enc, mac, open string) string {
		return fmt.Sprintf("[[door]]\nname = %q\nfwknop_port = \"62201:udp\"\nfwknop_key_file = %q\nfwknop_hmac_key_file = %q\nopen = [%q]\nopen_for = \"30s\"\n",
			name, enc, mac, open)
	}
	h := startAt(t, now, door("fw", encA, macA, "22:tcp")+door("fw_2", encB, macB, "1194:udp"))
	h.write(door("fw_2", encB, macB, "1194:udp") + door("fw", encA, macA, "22:tcp"))
	h.doReload()
	var logs []string
	for _, r := range h.fw.Plan().Chains[0].Rules {
		for _, e := range r.Exprs {
			if l, ok := e.(*expr.Log); ok {
				logs = append(logs, string(l.Data))
			}
		}
	}
	if strings.Join(logs, ",") != "fw_2/1" {
		t.Fatalf("after the reload the port logs under %q, want fw_2/1", logs)
	}
	src := netip.MustParseAddr("198.51.100.9")
	access, _ := goldenPacket(t, "access")
	other, _ := goldenPacket(t, "other_door")
	h.src.Log("fw/1", knocktest.UDP(src, server, 62201, other)) // the old rule's prefix
	h.src.Log("fw_2/1", knocktest.UDP(src, server, 62201, access))
	for _, w := range []struct {
		d     plan.Door
		addr  string
		proto config.Proto
		port  uint16
	}{{plan.Door{Name: "fw_2", PerPort: true}, "192.0.2.3", config.UDP, 1194}, {plan.Door{Name: "fw", PerPort: true}, "192.0.2.2", config.TCP, 22}} {
		set, key := w.d.GrantSet(netip.MustParseAddr(w.addr), w.proto, w.port)
		deadline := time.Now().Add(3 * time.Second)
		for {
			found := false
			for _, e := range h.fw.Elements(set) {
				found = found || string(e.Key) == string(key)
			}
			if found {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s holds no grant of %s %s/%d: %v", set, w.addr, w.proto, w.port, h.fw.Elements(set))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}
