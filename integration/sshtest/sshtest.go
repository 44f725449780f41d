// Package sshtest drives the real OpenSSH tools in tests: keys made by
// ssh-keygen, an ssh-agent of the test's own. None of it needs root.
package sshtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// Require skips tb when one of tools is missing, or fails it under
// CI=true, where a test that cannot run is a failure. Debian's
// openssh-client has ssh, ssh-keygen, ssh-agent and ssh-add;
// openssh-server has sshd.
func Require(tb testing.TB, tools ...string) {
	tb.Helper()
	var missing []string
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("needs %s (apt-get install openssh-client openssh-server)", strings.Join(missing, ", "))
	if os.Getenv("CI") == "true" {
		tb.Fatal(msg)
	}
	tb.Skip(msg)
}

// Key is a key pair ssh-keygen made.
type Key struct {
	Path    string     // the private key; Path+".pub" the public one
	Signer  ssh.Signer // nil for a key with a passphrase
	Public  ssh.PublicKey
	Line    string // the .pub file's line, without the newline
	Comment string
}

// Keygen runs `ssh-keygen -t typ [-b bits] -N passphrase -C comment -f
// dir/name` and reads the result (the private key only without a
// passphrase: Signer is nil with one).
func Keygen(tb testing.TB, dir, name, typ string, bits int, comment, passphrase string) *Key {
	tb.Helper()
	Require(tb, "ssh-keygen")
	path := filepath.Join(dir, name)
	args := []string{"-q", "-t", typ, "-N", passphrase, "-C", comment, "-f", path}
	if bits > 0 {
		args = append(args, "-b", strconv.Itoa(bits))
	}
	if passphrase != "" {
		args = append(args, "-a", "1") // one KDF round: a test needs no slow key
	}
	if out, err := exec.Command("ssh-keygen", args...).CombinedOutput(); err != nil {
		tb.Fatalf("ssh-keygen %s: %v: %s", strings.Join(args, " "), err, out)
	}
	line, err := os.ReadFile(path + ".pub")
	if err != nil {
		tb.Fatal(err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(line)
	if err != nil {
		tb.Fatalf("%s.pub: %v", path, err)
	}
	k := &Key{Path: path, Public: pub, Line: strings.TrimSpace(string(line)), Comment: comment}
	// An encrypted key is left unread: its bcrypt KDF takes seconds
	// under the race detector.
	if passphrase == "" {
		pem, err := os.ReadFile(path)
		if err != nil {
			tb.Fatal(err)
		}
		if k.Signer, err = ssh.ParsePrivateKey(pem); err != nil {
			tb.Fatalf("%s: %v", path, err)
		}
	}
	return k
}

// Fingerprint is what `ssh-keygen -lf path` prints as the fingerprint.
func Fingerprint(tb testing.TB, path string) string {
	tb.Helper()
	out, err := exec.Command("ssh-keygen", "-l", "-E", "sha256", "-f", path).CombinedOutput()
	if err != nil {
		tb.Fatalf("ssh-keygen -lf %s: %v: %s", path, err, out)
	}
	f := strings.Fields(string(out))
	if len(f) < 2 {
		tb.Fatalf("ssh-keygen -lf %s: %q", path, out)
	}
	return f[1]
}

// Agent starts `ssh-agent -D -a SOCK` for the test, stopped when it
// ends, adds the keys' private files to it with ssh-add, and returns the
// socket's path (for SSH_AUTH_SOCK).
func Agent(tb testing.TB, keys ...*Key) string {
	tb.Helper()
	Require(tb, "ssh-agent", "ssh-add")
	// A short directory: a unix socket path is at most 107 bytes.
	dir, err := os.MkdirTemp("", "nftk-agent")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "sock")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "ssh-agent", "-D", "-a", sock)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		cancel()
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
	for deadline := time.Now().Add(5 * time.Second); ; {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("ssh-agent did not listen on %s: %v: %s", sock, err, stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, k := range keys {
		add := exec.Command("ssh-add", k.Path)
		add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
		if out, err := add.CombinedOutput(); err != nil {
			tb.Fatalf("ssh-add %s: %v: %s", k.Path, err, out)
		}
	}
	return sock
}
