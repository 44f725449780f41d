package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nftknock/nftknock/knock"
	"github.com/nftknock/nftknock/knock/spa"
)

// udp4 is an IPv4/UDP packet from 192.0.2.2 to 192.0.2.1:62201, as NFLOG
// hands it over.
func udp4(payload []byte) []byte {
	n := 28 + len(payload)
	p := []byte{0x45, 0, byte(n >> 8), byte(n), 0, 0, 0, 0, 64, 17, 0, 0, 192, 0, 2, 2, 192, 0, 2, 1,
		0x30, 0x39, 0xf2, 0xf9, byte((n - 20) >> 8), byte(n - 20), 0, 0}
	return append(p, payload...)
}

// TestSPARefusesRequestsSealedBeforeStart: a restarted daemon's replay
// cache is empty, so a datagram sealed before the start (which the daemon
// that ran then may have taken) is refused; one sealed after is granted.
func TestSPARefusesRequestsSealedBeforeStart(t *testing.T) {
	keyPath := filepath.Join(t.TempDir(), "spa.key")
	keyText := spa.GenerateKey()
	if err := os.WriteFile(keyPath, []byte(keyText), 0o600); err != nil {
		t.Fatal(err)
	}
	before := time.Now() // the server, and its replay cache, begin after this
	s, _, logs, _ := testServer(t, `
[[door]]
name = "spa"
spa_port = "62201:udp"
key_file = "`+keyPath+`"
open = ["22:tcp"]
open_for = "30s"
`)
	raw, err := spa.ParseKey([]byte(keyText))
	if err != nil {
		t.Fatal(err)
	}
	k, err := spa.NewKey(raw)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for _, c := range []struct {
		sealed time.Time
		grant  bool
	}{
		{before, false}, // within spa_max_age, but before the start
		{start.Add(time.Second), true},
	} {
		d, err := spa.Seal(k, "spa", netip.Addr{}, c.sealed)
		if err != nil {
			t.Fatal(err)
		}
		if !s.forwardSPA(knock.Logged{Payload: udp4(d), Prefix: []byte("spa")}, start.Add(2*time.Second)) {
			t.Fatal("the SPA door's prefix was not taken")
		}
		if got := len(s.spa.grants) == 1; got != c.grant {
			t.Errorf("sealed %v after the start: granted %v, want %v", c.sealed.Sub(start), got, c.grant)
		}
		for len(s.spa.grants) > 0 {
			<-s.spa.grants
		}
	}
	if n := logs.FilterMessageSnippet("sealed before the daemon started").Len(); n != 1 || s.spa.rejects[spaBeforeStart].Load() != 1 {
		t.Errorf("%d log lines, counter %d; want 1 and 1", n, s.spa.rejects[spaBeforeStart].Load())
	}
}
