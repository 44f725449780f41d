package boot

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// SSHTools are the host commands SSH needs (Debian's openssh-client).
var SSHTools = []string{"ssh", "ssh-keygen"}

// hostKeyAlias names the container's host key in the client's known_hosts
// whatever address or port the client connects to.
const hostKeyAlias = "sdboot-machine"

// SSH is Debian's OpenSSH client on the test's side of the veth, logging
// in as root with a key of its own and checking the container's host key
// strictly: the container's sshd, with the keys its package made.
type SSH struct {
	m          *Machine
	dir        string
	key        string
	knownHosts string
	sessions   int // control sockets made so far, for their names
}

// Key is the client's private key file, the one root's authorized_keys
// in the machine lists.
func (s *SSH) Key() string { return s.key }

// NewSSH makes a client key, authorizes it for root in the machine and
// records the machine's host key. Call it before the first Boot.
func NewSSH(tb testing.TB, m *Machine) *SSH {
	tb.Helper()
	// Control sockets have a short path limit (108 bytes): a short
	// directory of their own.
	dir, err := os.MkdirTemp("", "sdboot-ssh")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	s := &SSH{m: m, dir: dir, key: filepath.Join(dir, "id_ed25519"), knownHosts: filepath.Join(dir, "known_hosts")}
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sdboot-test", "-f", s.key).CombinedOutput(); err != nil {
		tb.Fatalf("ssh-keygen: %v: %s", err, out)
	}
	pub, err := os.ReadFile(s.key + ".pub")
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(m.Dir, "root/.ssh"), 0o700); err != nil {
		tb.Fatal(err)
	}
	m.WriteFile(tb, "/root/.ssh/authorized_keys", string(pub), 0o600)
	hostKey := strings.Fields(m.ReadFile(tb, "/etc/ssh/ssh_host_ed25519_key.pub"))
	if len(hostKey) < 2 {
		tb.Fatalf("the machine's host key: %q", hostKey)
	}
	if err := os.WriteFile(s.knownHosts, []byte(hostKeyAlias+" "+hostKey[0]+" "+hostKey[1]+"\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	return s
}

// options are the client's whole configuration: nothing is read from the
// host's ~/.ssh or /etc/ssh/ssh_config.
func (s *SSH) options(port int) []string {
	return []string{
		"-F", "/dev/null", "-i", s.key, "-p", strconv.Itoa(port),
		"-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
		"-o", "UserKnownHostsFile=" + s.knownHosts, "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "HostKeyAlias=" + hostKeyAlias, "-o", "HostKeyAlgorithms=ssh-ed25519",
		"-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
		"-o", "LogLevel=ERROR",
	}
}

// Run logs in afresh (a new TCP connection) to addr:port, runs remote in
// root's shell there with stdin, and returns its standard output; the
// error carries standard error.
func (s *SSH) Run(addr netip.Addr, port int, remote, stdin string) (string, error) {
	return s.run(s.options(port), addr, remote, stdin)
}

func (s *SSH) run(opts []string, addr netip.Addr, remote, stdin string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	argv := append([]string{"netns", "exec", s.m.NetNS, "ssh"}, opts...)
	cmd := exec.CommandContext(ctx, "ip", append(argv, "root@"+addr.String(), remote)...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("ssh root@%s %q: %w: %s", addr, remote, err, stderr.String())
	}
	return string(out), nil
}

// Session is one SSH connection kept open (an OpenSSH control master), as
// an administrator keeps a session open while changing the firewall in
// front of it: commands run over that same TCP connection.
type Session struct {
	s      *SSH
	addr   netip.Addr
	ctl    string
	master *exec.Cmd
	done   chan struct{}
}

// Open logs in to addr:port and keeps the connection until Close (or
// until the machine goes down).
func (s *SSH) Open(tb testing.TB, addr netip.Addr, port int) (*Session, error) {
	tb.Helper()
	s.sessions++
	se := &Session{s: s, addr: addr, ctl: filepath.Join(s.dir, fmt.Sprintf("ctl%d", s.sessions)), done: make(chan struct{})}
	argv := append([]string{"netns", "exec", s.m.NetNS, "ssh"}, s.options(port)...)
	argv = append(argv, "-M", "-S", se.ctl, "-o", "ControlPersist=no", "-N", "root@"+addr.String())
	se.master = exec.Command("ip", argv...)
	var stderr strings.Builder
	se.master.Stderr = &stderr
	if err := se.master.Start(); err != nil {
		return nil, err
	}
	go func() { se.master.Wait(); close(se.done) }()
	tb.Cleanup(se.Close)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-se.done:
			return nil, fmt.Errorf("ssh session to %s:%d: %v: %s", addr, port, se.master.ProcessState, stderr.String())
		default:
		}
		if exec.Command("ssh", "-S", se.ctl, "-O", "check", "x").Run() == nil {
			return se, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	se.Close()
	return nil, fmt.Errorf("ssh session to %s:%d: not up within 15s: %s", addr, port, stderr.String())
}

// Run runs remote over the session's connection. Should the connection be
// gone, the client's fallback, a new connection, goes to port 9, where
// nothing listens: a dead session is an error, never silently replaced.
func (se *Session) Run(remote, stdin string) (string, error) {
	opts := append(se.s.options(9), "-S", se.ctl, "-o", "ControlMaster=no")
	return se.s.run(opts, se.addr, remote, stdin)
}

// Alive reports whether the session's connection is still up.
func (se *Session) Alive() bool {
	select {
	case <-se.done:
		return false
	default:
		return exec.Command("ssh", "-S", se.ctl, "-O", "check", "x").Run() == nil
	}
}

// Close ends the session.
func (se *Session) Close() {
	select {
	case <-se.done:
	default:
		se.master.Process.Kill()
		<-se.done
	}
}
