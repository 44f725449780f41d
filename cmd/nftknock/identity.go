package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/sys/unix"
)

// identitySigners returns the keys to sign a public-key knock with, and a
// function that lets go of the agent connection they may need:
//
//   - "agent" (or ""): each key of the agent at $SSH_AUTH_SOCK that can
//     knock, at most maxAgentKeys, in the agent's order (as ssh offers
//     them);
//   - a public key file: the agent's key that matches it;
//   - a private key file: that key, after asking for its passphrase on
//     the terminal if it has one.
func identitySigners(e *env, identity string) ([]ssh.Signer, func(), error) {
	nothing := func() {}
	if identity == "" || identity == "agent" {
		ag, closeAgent, err := dialAgent(e)
		if err != nil {
			return nil, nothing, err
		}
		signers, err := agentSigners(ag)
		if err != nil {
			closeAgent()
			return nil, nothing, err
		}
		return signers, closeAgent, nil
	}
	path := expandHome(e, identity)
	data, err := readSmall(path)
	if err != nil {
		return nil, nothing, fmt.Errorf("identity: %w", err)
	}
	if pub, _, _, _, err := ssh.ParseAuthorizedKey(data); err == nil {
		ag, closeAgent, err := dialAgent(e)
		if err != nil {
			return nil, nothing, fmt.Errorf("identity %s is a public key, so the agent must sign: %w", path, err)
		}
		signers, err := ag.Signers()
		if err != nil {
			closeAgent()
			return nil, nothing, fmt.Errorf("agent: %w", err)
		}
		for _, s := range signers {
			if bytes.Equal(s.PublicKey().Marshal(), pub.Marshal()) {
				return []ssh.Signer{s}, closeAgent, nil
			}
		}
		closeAgent()
		return nil, nothing, fmt.Errorf("identity %s: the agent does not hold this key (%s): ssh-add its private key", path, ssh.FingerprintSHA256(pub))
	}
	s, err := ssh.ParsePrivateKey(data)
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		var pass []byte
		pass, err = askPassphrase(fmt.Sprintf("Enter passphrase for %s: ", path))
		if err != nil {
			return nil, nothing, fmt.Errorf("identity %s has a passphrase: %w (or add it to your agent: ssh-add %s)", path, err, path)
		}
		s, err = ssh.ParsePrivateKeyWithPassphrase(data, pass)
		clear(pass)
	}
	if err != nil {
		return nil, nothing, fmt.Errorf("identity %s: not an OpenSSH public or private key: %v", path, err)
	}
	if !canKnock(s.PublicKey()) {
		return nil, nothing, fmt.Errorf("identity %s: a %s key cannot knock (ssh-ed25519, ecdsa-sha2-nistp256/384/521 and ssh-rsa can)", path, s.PublicKey().Type())
	}
	return []ssh.Signer{s}, nothing, nil
}

// dialAgent connects to the agent at $SSH_AUTH_SOCK.
func dialAgent(e *env) (agent.ExtendedAgent, func(), error) {
	sock := e.env("SSH_AUTH_SOCK")
	if sock == "" {
		return nil, nil, errors.New("no SSH agent ($SSH_AUTH_SOCK is not set): start one and ssh-add your key, or give -identity KEYFILE (identity in the client file)")
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		return nil, nil, fmt.Errorf("SSH agent at $SSH_AUTH_SOCK: %w", err)
	}
	return agent.NewClient(c), func() { c.Close() }, nil
}

// agentSigners are the agent's keys that can knock, each once (an agent
// lists a certificate as well as its key), at most maxAgentKeys.
func agentSigners(ag agent.ExtendedAgent) ([]ssh.Signer, error) {
	all, err := ag.Signers()
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	var out []ssh.Signer
	seen := map[string]bool{}
	for _, s := range all {
		k := s.PublicKey()
		if !canKnock(k) || seen[string(k.Marshal())] {
			continue
		}
		seen[string(k.Marshal())] = true
		out = append(out, s)
		if len(out) == maxAgentKeys {
			break
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("the SSH agent holds no key that can knock (%d keys; ssh-ed25519, ecdsa-sha2-nistp256/384/521 and ssh-rsa can): ssh-add one", len(all))
	}
	return out, nil
}

// canKnock reports whether a key's type can sign a knock.
func canKnock(k ssh.PublicKey) bool {
	switch k.Type() {
	case ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521, ssh.KeyAlgoRSA:
		return true
	}
	return false
}

// readSmall reads a key file, refusing one larger than a key can be.
func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, 1<<20+1))
	if err != nil {
		return nil, err
	}
	if len(data) > 1<<20 {
		return nil, fmt.Errorf("%s: larger than 1 MiB: not a key", path)
	}
	return data, nil
}

// askPassphrase asks for a passphrase on the controlling terminal with
// echo off, as ssh does (under ProxyCommand, standard input and output
// are ssh's connection, but /dev/tty is still the user's terminal).
func askPassphrase(prompt string) ([]byte, error) {
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return nil, errors.New("no terminal to ask on")
	}
	defer tty.Close()
	fd := int(tty.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, errors.New("no terminal to ask on")
	}
	noEcho := *old
	noEcho.Lflag &^= unix.ECHO
	noEcho.Lflag |= unix.ICANON | unix.ISIG
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &noEcho); err != nil {
		return nil, fmt.Errorf("terminal: %w", err)
	}
	defer unix.IoctlSetTermios(fd, unix.TCSETS, old)
	fmt.Fprint(tty, prompt)
	defer fmt.Fprintln(tty)
	var line []byte
	buf := make([]byte, 1)
	for len(line) < 1024 {
		n, err := tty.Read(buf)
		if n == 0 || err != nil || buf[0] == '\n' || buf[0] == '\r' {
			break
		}
		line = append(line, buf[0])
	}
	return line, nil
}
