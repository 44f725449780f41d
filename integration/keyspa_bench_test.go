package integration

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/integration/lab"
	"github.com/nftknock/nftknock/knock/spa"
	"github.com/nftknock/nftknock/knock/sshspa"
)

// BenchmarkSPAToOpen measures what a user of an SPA door waits for: the
// time from the datagram leaving the client to the first TCP connection
// to the opened port completing, in the namespace lab, for a public-key
// door per key type and, in the same run, a shared-key door. Each
// datagram is sealed (and signed) before the clock starts: that is the
// client's time. Each comes from one of 20 sources in turn, whose grant is
// deleted after each measurement, so that every one is a first grant and
// no source passes the per-source rate limit. Pinned as
// BenchmarkKnockToOpen is (the daemon on CPU 1, the spinning client on
// CPU 0). Run it with -benchtime 60x and -args -race-daemon=false.
func BenchmarkSPAToOpen(b *testing.B) {
	if err := lab.PinProcess(0); err != nil {
		b.Fatal(err)
	}
	l := newLab(b)
	dir := b.TempDir()
	serverPEM, server, err := sshspa.GenerateServerKey("")
	if err != nil {
		b.Fatal(err)
	}
	signers := map[string]ssh.Signer{}
	var lines strings.Builder
	for _, typ := range []string{"ed25519", "ecdsa-p256", "rsa-2048"} {
		var key any
		switch typ {
		case "ed25519":
			_, key, err = ed25519.GenerateKey(rand.Reader)
		case "ecdsa-p256":
			key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		case "rsa-2048":
			key, err = rsa.GenerateKey(rand.Reader, 2048)
		}
		if err != nil {
			b.Fatal(err)
		}
		s, err := ssh.NewSignerFromKey(key)
		if err != nil {
			b.Fatal(err)
		}
		signers[typ] = s
		fmt.Fprintf(&lines, "%s %s@bench\n", strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey()))), typ)
	}
	serverFile, keysFile := filepath.Join(dir, "server.key"), filepath.Join(dir, "team.authorized_keys")
	for path, data := range map[string]string{serverFile: string(serverPEM), keysFile: lines.String()} {
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	keyPath, raw := writeKey(b, dir)
	sharedKey, err := spa.NewKey(raw)
	if err != nil {
		b.Fatal(err)
	}
	cfg := writeConfig(b, filepath.Join(dir, "nftknock.toml"), fmt.Sprintf(`server_key_file = %q

[[door]]
name = "team"
spa_port = "62203:udp"
authorized_keys = [%q]
open = ["22:tcp"]
open_for = "30s"

[[door]]
name = "spa"
spa_port = "62201:udp"
key_file = %q
open = ["22:tcp"]
open_for = "30s"
`, serverFile, keysFile, keyPath))
	d, err := l.Start(lab.DaemonOptions{Bin: daemonBin, Config: cfg, CPUs: "1"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := d.Stop(); err != nil {
			b.Errorf("nftknockd did not exit 0 on SIGTERM: %v", err)
		}
	})
	var srcs []netip.Addr
	for i := range 20 {
		a := netip.AddrFrom4([4]byte{192, 0, 2, byte(20 + i)})
		if _, err := lab.Run(l.Client, "ip", "addr", "add", a.String()+"/24", "dev", l.ClientLink()); err != nil {
			b.Fatal(err)
		}
		srcs = append(srcs, a)
	}
	for _, c := range []struct {
		name string
		port int
		set  string
		seal func(src netip.Addr) ([]byte, error)
	}{
		{"ed25519", 62203, "team_v4", func(src netip.Addr) ([]byte, error) {
			return sshspa.Seal(server, signers["ed25519"], "team", src, time.Now())
		}},
		{"ecdsa-p256", 62203, "team_v4", func(src netip.Addr) ([]byte, error) {
			return sshspa.Seal(server, signers["ecdsa-p256"], "team", src, time.Now())
		}},
		{"rsa-2048", 62203, "team_v4", func(src netip.Addr) ([]byte, error) {
			return sshspa.Seal(server, signers["rsa-2048"], "team", src, time.Now())
		}},
		{"shared-key", 62201, "spa_v4", func(src netip.Addr) ([]byte, error) {
			return spa.Seal(sharedKey, "spa", src, time.Now())
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			var lat []time.Duration
			for i := 0; b.Loop(); i++ {
				src := srcs[i%len(srcs)]
				datagram, err := c.seal(src)
				if err != nil {
					b.Fatal(err)
				}
				var took time.Duration
				err = lab.InNS(l.Client, func() error {
					var err error
					took, err = sendAndConnect(src, lab.ServerV4, c.port, datagram)
					return err
				})
				if err != nil {
					b.Fatalf("datagram %d: %v\n%s", i+1, err, d.Log())
				}
				lat = append(lat, took)
				if _, err := lab.Run(l.Server, nftknockBin(b), "revoke", "-door", strings.TrimSuffix(c.set, "_v4"), src.String()); err != nil {
					b.Fatal(err)
				}
			}
			p50, p90 := percentiles(lat)
			b.ReportMetric(us(p50), "p50-µs")
			b.ReportMetric(us(p90), "p90-µs")
			b.Logf("%s, %d datagrams: datagram → open p50 %s p90 %s", c.name, len(lat), p50, p90)
		})
	}
}

// sendAndConnect sends datagram from src to port of server and returns how
// long after it a connection to port 22 completed (awaitOpen).
func sendAndConnect(src, server netip.Addr, port int, datagram []byte) (time.Duration, error) {
	fd, err := boundSocket(src, unix.SOCK_DGRAM)
	if err != nil {
		return 0, err
	}
	err = unix.Sendto(fd, datagram, 0, &unix.SockaddrInet4{Addr: server.As4(), Port: port})
	unix.Close(fd)
	if err != nil {
		return 0, fmt.Errorf("send the datagram: %w", err)
	}
	return awaitOpen(src, server, time.Now())
}
