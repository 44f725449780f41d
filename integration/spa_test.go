package integration

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nftknock/nftknock/integration/lab"
	"github.com/nftknock/nftknock/knock/spa"
)

// spaConfig has two SPA doors on port 22: "spa" refuses requested
// addresses, "spa_nat" allows them.
func spaConfig(key string) string {
	return fmt.Sprintf(`
[[door]]
name = "spa"
spa_port = "62201:udp"
key_file = %q
spa_max_age = "30s"
open = ["22:tcp"]
open_for = "2s"

[[door]]
name = "spa_nat"
spa_port = "62202:udp"
key_file = %q
spa_allow_requested = true
open = ["22:tcp"]
open_for = "2s"
`, key, key)
}

func writeKey(t testing.TB, dir string) (string, []byte) {
	t.Helper()
	text := spa.GenerateKey()
	path := filepath.Join(dir, "door.key")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	raw, err := spa.ParseKey([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return path, raw
}

// sendDatagram sends b from the client namespace, from address from.
func sendDatagram(t *testing.T, l *lab.Lab, from netip.Addr, to netip.AddrPort, b []byte) {
	t.Helper()
	err := lab.InNS(l.Client, func() error {
		c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(from, 0)), net.UDPAddrFromAddrPort(to))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func sealed(t *testing.T, raw []byte, door string, req netip.Addr, at time.Time) []byte {
	t.Helper()
	k, err := spa.NewKey(raw)
	if err != nil {
		t.Fatal(err)
	}
	d, err := spa.Seal(k, door, req, at)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestSPA(t *testing.T) {
	l := newLab(t)
	dir := t.TempDir()
	keyPath, raw := writeKey(t, dir)
	d := startDaemon(t, l, writeConfig(t, filepath.Join(dir, "nftknock.toml"), spaConfig(keyPath)))
	bin := nftknockBin(t)
	spa4 := netip.AddrPortFrom(lab.ServerV4, 62201)

	t.Run("client opens v4 and v6", func(t *testing.T) {
		mustFiltered(t, l, lab.ClientV4, ssh4)
		mustFiltered(t, l, lab.ClientV6, ssh6)
		mustUDP(t, l, lab.ClientV4, spa4, lab.UDPNoAnswer)
		runClient(t, l, bin, "spa", "-door", "spa", "-key-file", keyPath, lab.ServerV4.String())
		mustOpen(t, l, lab.ClientV4, ssh4)
		runClient(t, l, bin, "spa", "-door", "spa", "-key-file", keyPath, "-p", "62201", lab.ServerV6.String())
		mustOpen(t, l, lab.ClientV6, ssh6)
		element(t, l, "spa_v6", lab.ClientV6)
	})

	t.Run("replay after the grant ended opens nothing", func(t *testing.T) {
		time.Sleep(2500 * time.Millisecond) // earlier grants end
		b := sealed(t, raw, "spa", netip.Addr{}, time.Now())
		m := markLog(d)
		sendDatagram(t, l, lab.ClientV4, spa4, b)
		mustOpen(t, l, lab.ClientV4, ssh4)
		m.wait(t, time.Second, "SPA request authenticated", `"door": "spa"`)
		time.Sleep(2500 * time.Millisecond) // the grant ends
		mustFiltered(t, l, lab.ClientV4, ssh4)
		m = markLog(d)
		sendDatagram(t, l, lab.ClientV4, spa4, b)
		m.wait(t, 2*time.Second, "SPA datagram rejected", "replay")
		mustFiltered(t, l, lab.ClientV4, ssh4)
		noElements(t, l, "spa_v4")
	})

	otherKey := make([]byte, spa.KeySize)
	good := sealed(t, raw, "spa", netip.Addr{}, time.Now())
	flipped := append([]byte(nil), good...)
	flipped[40] ^= 0x10
	for _, c := range []struct {
		name, reason string
		b            []byte
	}{
		{"wrong key", "not authentic", sealed(t, otherKey, "spa", netip.Addr{}, time.Now())},
		{"flipped bit", "not authentic", flipped},
		{"stale", "stale", sealed(t, raw, "spa", netip.Addr{}, time.Now().Add(-2*time.Minute))},
		{"requested address refused", "requested address not allowed", sealed(t, raw, "spa", lab.Client2V4, time.Now())},
		{"truncated", "truncated", good[:40]},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := markLog(d)
			sendDatagram(t, l, lab.ClientV4, spa4, c.b)
			m.wait(t, 2*time.Second, "SPA datagram rejected", c.reason)
			mustFiltered(t, l, lab.ClientV4, ssh4)
			mustFiltered(t, l, lab.Client2V4, ssh4)
			noElements(t, l, "spa_v4")
			if n := len(m.lines("SPA request authenticated")); n != 0 {
				t.Errorf("%d requests authenticated", n)
			}
		})
	}

	t.Run("allow opens for the named address", func(t *testing.T) {
		runClient(t, l, bin, "spa", "-door", "spa_nat", "-key-file", keyPath, "-p", "62202", "-allow", lab.Client2V4.String(), lab.ServerV4.String())
		mustOpen(t, l, lab.Client2V4, ssh4)
		element(t, l, "spa_nat_v4", lab.Client2V4)
		mustFiltered(t, l, lab.ClientV4, ssh4)
	})

	t.Run("client refuses a key others can read", func(t *testing.T) {
		loose := filepath.Join(dir, "loose.key")
		if err := os.WriteFile(loose, []byte(spa.GenerateKey()), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := lab.Run(l.Client, bin, "spa", "-door", "spa", "-key-file", loose, lab.ServerV4.String())
		if err == nil {
			t.Fatalf("nftknock spa with a 0644 key succeeded: %s", out)
		}
	})
}
