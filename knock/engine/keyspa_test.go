package engine_test

import (
	"crypto/ed25519"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nftknock/nftknock/knock/knocktest"
	"github.com/nftknock/nftknock/knock/sshspa"
)

// keySPAConfig is a public-key SPA door "team" beside the knock door
// "ssh", with a fresh server key and alice's key in its authorized_keys;
// it returns the config and what a client needs to knock.
func keySPAConfig(t *testing.T) (toml string, serverKey *sshspa.ServerPublicKey, aliceKey ssh.Signer) {
	t.Helper()
	dir := t.TempDir()
	pemBytes, serverKey, err := sshspa.GenerateServerKey("")
	if err != nil {
		t.Fatal(err)
	}
	aliceKey, err = ssh.NewSignerFromKey(ed25519.NewKeyFromSeed(make([]byte, 32)))
	if err != nil {
		t.Fatal(err)
	}
	keyFile, keys := filepath.Join(dir, "server.key"), filepath.Join(dir, "team.authorized_keys")
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(aliceKey.PublicKey()))) + " alice@laptop\n"
	for path, data := range map[string][]byte{keyFile: pemBytes, keys: []byte(line)} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return fmt.Sprintf("server_key_file = %q\n%s\n[[door]]\nname = \"team\"\nspa_port = \"62203:udp\"\nauthorized_keys = [%q]\nopen = [\"22:tcp\"]\nopen_for = \"30s\"\n",
		keyFile, sshDoor, keys), serverKey, aliceKey
}

// TestKeySPADoorOpens: a datagram signed by alice's key, verified on the
// engine's worker, opens the door for its source; the grant's element
// and the "door opened" line name her key.
func TestKeySPADoorOpens(t *testing.T) {
	toml, serverKey, aliceKey := keySPAConfig(t)
	h := start(t, toml)
	d, err := sshspa.Seal(serverKey, aliceKey, "team", alice, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	h.src.Log("team/1", knocktest.UDP(alice, server, 62203, d))
	by := `'alice@laptop' ` + ssh.FingerprintSHA256(aliceKey.PublicKey())
	if e := h.element("team_v4", alice); e.Comment != by || e.Timeout != 30*time.Second {
		t.Errorf("grant %+v, want 30s with comment %q", e, by)
	}
	h.settle()
	opened := h.logs.FilterMessage("door opened").All()
	if len(opened) != 1 || opened[0].ContextMap()["key"] != by {
		t.Errorf("door opened lines %v, want one naming %s", opened, by)
	}
	// The same datagram again: a replay, refused.
	h.src.Log("team/1", knocktest.UDP(alice, server, 62203, d))
	h.settle()
	if n := h.logged("SPA datagram rejected: replay"); n != 1 {
		t.Errorf("%d replay rejections, want 1", n)
	}
}

// TestKeySPAFloodLeavesOtherDoors: a flood of datagrams to the public-key
// door, each costing an X25519 to refuse, is verified on the worker: the
// door refuses what its queue has no room for (counted), and a knock on
// the other door, sent in the middle of the flood, opens it.
func TestKeySPAFloodLeavesOtherDoors(t *testing.T) {
	toml, serverKey, aliceKey := keySPAConfig(t)
	h := start(t, toml)
	forged := make([]byte, sshspa.Size)
	copy(forged, "NK\x02")
	for i := range 3000 {
		src := netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)})
		h.src.Log("team/1", knocktest.UDP(src, server, 62203, forged))
		if i == 1500 {
			h.knock("ssh/1", alice, "7000:tcp", "8000:udp", "9000:tcp")
		}
	}
	h.element("ssh_v4", alice)
	// Then a real knock on the flooded door still gets through.
	d, err := sshspa.Seal(serverKey, aliceKey, "team", alice, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(h.fw.Elements("team_v4")) == 0 && time.Now().Before(deadline) {
		h.src.Log("team/1", knocktest.UDP(alice, server, 62203, d))
		time.Sleep(50 * time.Millisecond)
	}
	h.element("team_v4", alice)
	h.settle()
	if h.logged("SPA datagram rejected: verification queue full (a flood?)")+h.logged("more lines than are logged one by one (a flood?): SPA datagram rejected: verification queue full (a flood?)") == 0 {
		t.Error("no datagram of the flood was refused for a full queue: the flood was not bounded")
	}
	if h.logged("SPA datagram rejected: not sealed to this server's key (another server's key, or a changed byte)") == 0 {
		t.Error("no forged datagram was verified and refused")
	}
}
