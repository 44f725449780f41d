package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nftknock/nftknock/integration/nstest"
	"github.com/nftknock/nftknock/integration/sshtest"
	"github.com/nftknock/nftknock/knock/authkeys"
	"github.com/nftknock/nftknock/knock/spa"
	"github.com/nftknock/nftknock/knock/sshspa"
)

// asMainEnv makes the test binary run as nftknock itself: ssh's
// ProxyCommand runs it so, in TestProxySSHThroughGate.
const asMainEnv = "NFTKNOCK_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asMainEnv) == "1" {
		main()
	}
	os.Exit(m.Run())
}

const (
	gateSSHPort = 2222
	gateSPAPort = 62299
)

// TestProxySSHThroughGate: real OpenSSH on both ends, in a scratch
// network namespace. sshd listens on loopback port 2222, which nftables
// drops but for the addresses in a timeout set; a stand-in for the door
// (the daemon's is not wired yet) opens a datagram with knock/sshspa and
// knock/authkeys, as the door will, and adds its source to the set. Plain
// ssh times out; ssh -o ProxyCommand='nftknock proxy %h %p' logs in, and
// so does ssh with `Match exec "nftknock open -wait %p %h"`, over IPv4 and
// IPv6, with the key in ssh-agent and the server key from known_hosts.
func TestProxySSHThroughGate(t *testing.T) {
	nstest.Require(t, "nft", "ip")
	sshtest.Require(t, "/usr/sbin/sshd", "ssh", "ssh-agent", "ssh-add", "ssh-keygen")
	ns := nstest.New(t)
	// A short directory: sshd and ssh-agent want short socket paths.
	dir, err := os.MkdirTemp("", "nftk-proxy")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	host := sshtest.Keygen(t, dir, "ssh_host_ed25519_key", "ed25519", 0, "root@gate", "")
	alice := sshtest.Keygen(t, dir, "id_alice", "ed25519", 0, "alice@laptop", "")
	if err := os.WriteFile(filepath.Join(dir, "login_keys"), []byte(alice.Line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "team.authorized_keys"), []byte(alice.Line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	ns.Run(t, fmt.Sprintf(`table inet proxytest {
	set allowed4 { type ipv4_addr; flags timeout; }
	set allowed6 { type ipv6_addr; flags timeout; }
	chain input {
		type filter hook input priority 0; policy accept;
		tcp dport %[1]d ip saddr @allowed4 accept
		tcp dport %[1]d ip6 saddr @allowed6 accept
		tcp dport %[1]d drop
	}
}
`, gateSSHPort), "nft", "-f", "-")
	startSSHD(t, ns, dir, host.Path)
	g := startNamespaceGate(t, ns, host.Path, filepath.Join(dir, "team.authorized_keys"))

	home := filepath.Join(dir, "home")
	kh := filepath.Join(home, ".ssh", "known_hosts")
	if err := os.MkdirAll(filepath.Dir(kh), 0o700); err != nil {
		t.Fatal(err)
	}
	hostKey := strings.Join(strings.Fields(host.Line)[:2], " ")
	if err := os.WriteFile(kh, []byte(fmt.Sprintf("[127.0.0.1]:%d %s\n[::1]:%d %s\n", gateSSHPort, hostKey, gateSSHPort, hostKey)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ssh-keygen", "-H", "-f", kh).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen -H: %v: %s", err, out)
	}
	cf := filepath.Join(dir, "client.toml")
	var entries strings.Builder
	for _, h := range []string{"127.0.0.1", "::1"} {
		fmt.Fprintf(&entries, "[[server]]\nhost = %q\ndoor = \"team\"\nspa_port = \"%d:udp\"\nknown_hosts = true\n\n", h, gateSPAPort)
	}
	if err := os.WriteFile(cf, []byte(entries.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	agentSock := sshtest.Agent(t, alice)
	sshConfig := filepath.Join(dir, "ssh_config")
	if err := os.WriteFile(sshConfig, []byte(fmt.Sprintf("Match exec \"%s open -config %s -wait %%p %%h\"\n", self, cf)), 0o600); err != nil {
		t.Fatal(err)
	}
	ssh := func(hostAddr string, timeout time.Duration, extra ...string) (string, error) {
		config := "/dev/null"
		if len(extra) > 0 && extra[0] == "-F" {
			config, extra = extra[1], extra[2:]
		}
		args := []string{"netns", "exec", ns.Name, "ssh", "-F", config,
			"-o", "UserKnownHostsFile=" + kh, "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
			"-o", "ConnectTimeout=2", "-p", fmt.Sprint(gateSSHPort)}
		args = append(args, extra...)
		args = append(args, "root@"+hostAddr, "echo", "through-the-gate")
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, "ip", args...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "SSH_AUTH_SOCK=" + agentSock, asMainEnv + "=1"}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	proxy := fmt.Sprintf("ProxyCommand=%s proxy -config %s %%h %%p", self, cf)
	for _, addr := range []string{"127.0.0.1", "::1"} {
		// Plain ssh: the port is filtered, the connection times out.
		out, err := ssh(addr, 20*time.Second)
		if err == nil || !strings.Contains(out, "timed out") {
			t.Fatalf("plain ssh to %s: %v: %s", addr, err, out)
		}
		// Through nftknock proxy: it knocks, waits, relays.
		out, err = ssh(addr, 20*time.Second, "-o", proxy)
		if err != nil || !strings.Contains(out, "through-the-gate") {
			t.Fatalf("ssh -o ProxyCommand to %s: %v: %s\ngate: %v", addr, err, out, g.log())
		}
		if want := fmt.Sprintf(`door opened for %s key "alice@laptop" %s`, addr, sshtest.Fingerprint(t, alice.Path+".pub")); !strings.Contains(g.log(), want) {
			t.Errorf("gate log lacks %q:\n%s", want, g.log())
		}
		// Shut again, then the Match exec form: nftknock open -wait
		// knocks before ssh connects by itself.
		ns.Run(t, "", "nft", "flush", "set", "inet", "proxytest", "allowed4")
		ns.Run(t, "", "nft", "flush", "set", "inet", "proxytest", "allowed6")
		if out, err := ssh(addr, 20*time.Second); err == nil {
			t.Fatalf("plain ssh to %s after the flush: %s", addr, out)
		}
		out, err = ssh(addr, 20*time.Second, "-F", sshConfig)
		if err != nil || !strings.Contains(out, "through-the-gate") {
			t.Fatalf("ssh with Match exec to %s: %v: %s\ngate: %v", addr, err, out, g.log())
		}
	}
}

// startSSHD runs sshd in ns on loopback port 2222, stopped when t ends.
func startSSHD(t *testing.T, ns *nstest.NS, dir, hostKey string) {
	t.Helper()
	// sshd wants its privilege separation directory, which its init
	// script makes when it starts the host's sshd.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "sshd_config")
	text := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
ListenAddress ::1
HostKey %s
PidFile none
AuthorizedKeysFile %s
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
`, gateSSHPort, hostKey, filepath.Join(dir, "login_keys"))
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns.Name, "/usr/sbin/sshd", "-D", "-e", "-f", cfg)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	var mu sync.Mutex
	var log strings.Builder
	listening := make(chan struct{}, 2)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			mu.Lock()
			log.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if strings.Contains(sc.Text(), "Server listening on") {
				listening <- struct{}{}
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			mu.Lock()
			t.Logf("sshd:\n%s", log.String())
			mu.Unlock()
		}
	})
	for range 2 { // one line per ListenAddress
		select {
		case <-listening:
		case <-time.After(10 * time.Second):
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("sshd did not start:\n%s", log.String())
		}
	}
}

// nsGate is the door's stand-in: the sealed datagrams to gateSPAPort on
// loopback, opened against the server key and an authorized_keys file,
// open the SSH port for their source by adding it to the set.
type nsGate struct {
	mu    sync.Mutex
	lines []string
}

func (g *nsGate) logf(format string, a ...any) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.lines = append(g.lines, fmt.Sprintf(format, a...))
}

func (g *nsGate) log() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return strings.Join(g.lines, "\n")
}

func startNamespaceGate(t *testing.T, ns *nstest.NS, serverKeyFile, authorizedKeys string) *nsGate {
	t.Helper()
	server, err := sshspa.LoadServerKey(serverKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	g := &nsGate{}
	keys, err := authkeys.NewWatcher([]string{authorizedKeys}, authkeys.Options{Report: func(p authkeys.Problem) { g.logf("authorized_keys: %v", p) }})
	if err != nil {
		t.Fatal(err)
	}
	replay := spa.NewReplay(0, time.Now())
	var conns []*net.UDPConn
	ns.In(t, func() error {
		for _, a := range []string{"127.0.0.1", "::1"} {
			c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(a), gateSPAPort)))
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	})
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := make([]byte, 2048)
			for {
				n, from, err := c.ReadFromUDPAddrPort(b)
				if err != nil {
					return
				}
				src := from.Addr().Unmap()
				now := time.Now()
				req, err := sshspa.Open(server, "team", keys.Set(), b[:n], src, now, 30*time.Second)
				if err == nil {
					err = replay.CheckID(req.ID, req.Time, now, 30*time.Second)
				}
				var addr netip.Addr
				if err == nil {
					addr, err = req.OpenFor(src, false)
				}
				if err != nil {
					g.logf("rejected from %s: %v", src, err)
					continue
				}
				set := "allowed4"
				if addr.Is6() {
					set = "allowed6"
				}
				if _, err := ns.TryRun("", "nft", "add", "element", "inet", "proxytest", set, fmt.Sprintf("{ %s timeout 30s }", addr)); err != nil {
					g.logf("nft: %v", err)
					continue
				}
				g.logf("door opened for %s key %s", addr, req.Key)
			}
		}()
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	})
	return g
}
