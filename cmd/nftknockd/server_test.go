package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock"
)

// fakeFirewall records what the server asks of the firewall. The real one
// is exercised by the nft package's kernel tests and by integration/.
type fakeFirewall struct {
	installs  []*config.Config
	rotations []string
	noneValid bool
	grants    []string
	grantErr  error
}

func (f *fakeFirewall) Install(cfg *config.Config) error {
	f.installs = append(f.installs, cfg)
	return nil
}

func (f *fakeFirewall) Grant(door string, addr netip.Addr, d time.Duration) error {
	if f.grantErr != nil {
		return f.grantErr
	}
	f.grants = append(f.grants, fmt.Sprintf("%s %s %s", door, addr, d))
	return nil
}

func (f *fakeFirewall) Revoke(door string, addr netip.Addr) error {
	f.grants = append(f.grants, fmt.Sprintf("revoke %s %s", door, addr))
	return nil
}

func (f *fakeFirewall) Prune(time.Time) {}

func (f *fakeFirewall) Rotate(door string, seqs [][]config.Port) error {
	f.rotations = append(f.rotations, fmt.Sprintf("%s %v", door, seqs))
	return nil
}

// StillValid answers as the kernel's sets would after a clean stop: both
// sequences unused, unless the test says otherwise.
func (f *fakeFirewall) StillValid(door string, seqs [][]config.Port) ([]bool, error) {
	v := make([]bool, len(seqs))
	for i := range v {
		v[i] = !f.noneValid
	}
	return v, nil
}

func testServer(t *testing.T, toml string) (*server, *fakeFirewall, *observer.ObservedLogs, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "nftknock.toml")
	if err := os.WriteFile(path, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.DebugLevel)
	fw := &fakeFirewall{}
	s, err := newServer(zap.New(core), path, cfg, fw)
	if err != nil {
		t.Fatal(err)
	}
	return s, fw, logs, path
}

var src = netip.MustParseAddr("2001:db8::7")

func knockPkts(ports ...config.Port) []knock.Packet {
	var ps []knock.Packet
	for _, p := range ports {
		// As door 0's knock rules log them.
		ps = append(ps, knock.Packet{Src: src, Proto: p.Proto, DstPort: p.Num, TCPFlags: knock.FlagSYN, Door: 0})
	}
	return ps
}

func feed(s *server, pkts []knock.Packet) {
	for i := range pkts {
		s.packet(&pkts[i])
	}
}

func TestServerGrantsCompletedKnock(t *testing.T) {
	s, fw, logs, _ := testServer(t, string(config.DefaultTOML()))
	feed(s, knockPkts(config.Port{Num: 7000, Proto: config.TCP}, config.Port{Num: 8000, Proto: config.UDP}))
	if len(fw.grants) != 0 {
		t.Fatalf("granted before the sequence was complete: %v", fw.grants)
	}
	feed(s, knockPkts(config.Port{Num: 9000, Proto: config.TCP}))
	if want := "ssh 2001:db8::7 30s"; len(fw.grants) != 1 || fw.grants[0] != want {
		t.Fatalf("grants = %v, want [%s]", fw.grants, want)
	}
	var msgs []string
	for _, e := range logs.All() {
		msgs = append(msgs, e.Message)
	}
	if got, want := strings.Join(msgs, "|"), "knock stage reached|knock stage reached|door opened"; got != want {
		t.Errorf("log lines %q, want %q", got, want)
	}
	if e := logs.FilterMessage("knock stage reached").All()[1]; e.ContextMap()["step"] != "2/3" || e.ContextMap()["door"] != "ssh" {
		t.Errorf("stage line fields: %v", e.ContextMap())
	}
}

func TestServerLogsFailedGrant(t *testing.T) {
	s, fw, logs, _ := testServer(t, string(config.DefaultTOML()))
	fw.grantErr = errors.New("netlink: boom")
	feed(s, knockPkts(config.Port{Num: 7000, Proto: config.TCP}, config.Port{Num: 8000, Proto: config.UDP}, config.Port{Num: 9000, Proto: config.TCP}))
	if logs.FilterMessage("door opened").Len() != 0 {
		t.Error("logged the door as opened although the grant failed")
	}
	if logs.FilterMessageSnippet("NOT opened").Len() != 1 {
		t.Errorf("failed grant not logged: %v", logs.All())
	}
}

func TestServerReload(t *testing.T) {
	s, fw, logs, path := testServer(t, string(config.DefaultTOML()))
	write := func(toml string) {
		if err := os.WriteFile(path, []byte(toml), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	newSeq := strings.Replace(string(config.DefaultTOML()), `["7000:tcp", "8000:udp", "9000:tcp"]`, `["7100:udp", "7200:tcp"]`, 1)

	for _, bad := range []string{
		strings.Replace(newSeq, `"7200:tcp"`, `"72000:tcp"`, 1),          // invalid
		strings.Replace(newSeq, `table = "nftknock"`, `table = "t2"`, 1), // moves table
		strings.Replace(newSeq, `nflog_group = 7113`, `nflog_group = 1`, 1),
	} {
		write(bad)
		s.reload()
		if len(fw.installs) != 0 {
			t.Fatalf("a refused config was installed")
		}
	}
	if n := logs.FilterMessageSnippet("reload refused").Len(); n != 3 {
		t.Errorf("%d reloads refused in the log, want 3", n)
	}
	// The old sequence still works.
	feed(s, knockPkts(config.Port{Num: 7000, Proto: config.TCP}, config.Port{Num: 8000, Proto: config.UDP}, config.Port{Num: 9000, Proto: config.TCP}))
	if len(fw.grants) != 1 {
		t.Fatalf("old config not running after refused reloads: grants %v", fw.grants)
	}

	write(newSeq)
	s.reload()
	if len(fw.installs) != 1 || len(fw.installs[0].Doors[0].Sequence) != 2 {
		t.Fatalf("good config not installed: %v", fw.installs)
	}
	feed(s, knockPkts(config.Port{Num: 7000, Proto: config.TCP}, config.Port{Num: 8000, Proto: config.UDP}, config.Port{Num: 9000, Proto: config.TCP}))
	feed(s, knockPkts(config.Port{Num: 7100, Proto: config.UDP}, config.Port{Num: 7200, Proto: config.TCP}))
	if len(fw.grants) != 2 {
		t.Errorf("after reload: grants %v, want the new sequence (only) to open", fw.grants)
	}
}

func TestServerForwardCountsBadPackets(t *testing.T) {
	s, _, _, _ := testServer(t, string(config.DefaultTOML()))
	q := make(chan knock.Packet, 1)
	s.forward(knock.Logged{Payload: []byte{0x45, 0}, Prefix: []byte("ssh")}, q)
	if s.parseErrors.Load() != 1 || len(q) != 0 {
		t.Errorf("truncated packet: parseErrors %d, queued %d", s.parseErrors.Load(), len(q))
	}
	udp := []byte{0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 192, 0, 2, 2, 192, 0, 2, 1, 0x30, 0x39, 0x1f, 0x40, 0, 8, 0, 0}
	s.forward(knock.Logged{Payload: udp, Prefix: []byte("nosuchdoor")}, q)
	if s.parseErrors.Load() != 2 || len(q) != 0 {
		t.Errorf("unknown prefix: parseErrors %d, queued %d", s.parseErrors.Load(), len(q))
	}
	s.forward(knock.Logged{Payload: udp, Prefix: []byte("*")}, q)
	s.forward(knock.Logged{Payload: udp, Prefix: []byte("ssh")}, q) // queue full
	if len(q) != 1 || s.queueDrops.Load() != 1 {
		t.Errorf("queued %d, drops %d; want 1 and 1", len(q), s.queueDrops.Load())
	}
	if p := <-q; p.DstPort != 8000 || p.Src != netip.MustParseAddr("192.0.2.2") || p.Door != -1 {
		t.Errorf("queued %+v, want the scan rule's packet (door -1)", p)
	}
}

// TestSPARejectLinesBounded: a flood of forged datagrams gives at most
// spaLinesPerSweep lines per reason a second, then one summary line with
// the count, and every rejection is still counted.
func TestSPARejectLinesBounded(t *testing.T) {
	s, _, logs, _ := testServer(t, string(config.DefaultTOML()))
	for range 25 {
		s.spaReject("spa", src, spaNotAuthentic)
	}
	if n := logs.FilterMessageSnippet("SPA datagram rejected").Len(); n != spaLinesPerSweep {
		t.Errorf("%d rejection lines, want %d", n, spaLinesPerSweep)
	}
	s.spaSummary()
	sum := logs.FilterMessageSnippet("more than are logged one by one").All()
	if len(sum) != 1 || sum[0].ContextMap()["since_last"] != uint64(25) {
		t.Fatalf("summary lines %v, want one with since_last 25", sum)
	}
	// A new second: lines again, and no summary while under the bound.
	s.spaReject("spa", src, spaNotAuthentic)
	s.spaSummary()
	if n := logs.FilterMessageSnippet("SPA datagram rejected").Len(); n != spaLinesPerSweep+1 {
		t.Errorf("after a new second: %d rejection lines, want %d", n, spaLinesPerSweep+1)
	}
	if n := logs.FilterMessageSnippet("more than are logged").Len(); n != 1 {
		t.Errorf("%d summaries, want still 1", n)
	}
}
