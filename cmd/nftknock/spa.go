package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nftknock/nftknock/knock/spa"
	"github.com/nftknock/nftknock/knock/sshspa"
)

// defaultSPAPort is the port `nftknock spa` sends to without -p.
const defaultSPAPort = 62201

var keygenCmd = &command{
	name:     "keygen",
	synopsis: "[-server FILE]",
	summary:  "make a door key, or with -server a server key for public-key SPA doors",
	help: `Prints the base64 of 32 random bytes from the system's secure random
source, and a newline: the contents of a door's key_file. Keep it secret:
on the server, root-owned with mode 0600; on a client, a file only its
user can read. For example:

    umask 077; nftknock keygen > /etc/nftknock/ssh.key

With -server FILE, writes a new server key to FILE instead (mode 0600; an
existing file is never overwritten) and prints its public key, one
OpenSSH public-key line: the server_key_file of nftknockd's public-key
SPA doors, and what clients give to nftknock spa -server-key-file. The
key is an ed25519 key in OpenSSH's format (ssh-keygen -y -f FILE prints
the same line); the host key /etc/ssh/ssh_host_ed25519_key serves as
well, and then clients can take it from their known_hosts.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) int {
		server := fs.String("server", "", "write a new server key to `FILE` and print its public key")
		return func(e *env, args []string) int {
			if len(args) != 0 {
				return usageErr(e, "keygen", "takes no arguments")
			}
			if *server == "" {
				fmt.Fprint(e.stdout, spa.GenerateKey())
				return exitOK
			}
			line, err := writeServerKey(*server)
			if err != nil {
				fail(e, "keygen", err)
				return exitFail
			}
			fmt.Fprintln(e.stdout, line)
			return exitOK
		}
	},
}

// writeServerKey writes a new server key to path, which must not exist,
// and returns its public line.
func writeServerKey(path string) (string, error) {
	host, _ := os.Hostname()
	pemBytes, pub, err := sshspa.GenerateServerKey("nftknock server key " + host)
	if err != nil {
		return "", err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("server key: %w", err)
	}
	if _, err = f.Write(pemBytes); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return "", fmt.Errorf("server key %s: %w", path, err)
	}
	return pub.Line() + " nftknock server key " + host, nil
}

var spaCmd = &command{
	name:     "spa",
	synopsis: "-door NAME -key-file FILE [-allow ADDRESS | -nat] [-p PORT] HOST\n       nftknock spa -door NAME {-server-key-file FILE | -known-hosts} [-identity agent|KEYFILE] [-allow ADDRESS | -nat] [-p PORT] [-v] HOST",
	summary:  "open an SPA door with one authenticated UDP datagram",
	help: `Sends HOST one UDP datagram that asks the door to open. The datagram
seals the address it is sent from, so that someone on the path who holds
it back and sends it first from elsewhere gets nothing; with -allow it
seals ADDRESS instead (the door must have spa_allow_requested = true),
with -nat none (behind NAT, where the address the server sees is not
yours: the door opens for whatever source the datagram arrives from).
Nothing answers: check by connecting to the port the door opens.

With -key-file, the door's shared key seals it (a key file that the group
or others can read is refused).

With -server-key-file or -known-hosts, it is a public-key SPA door: the
datagram is sealed to the server's public key and signed with your SSH
key, which one of the door's authorized_keys files must list.
-server-key-file FILE holds the server's public key, one OpenSSH
public-key line (ssh-keygen -y -f of the server key, or what
nftknock keygen -server printed); -known-hosts takes the server's
ssh-ed25519 host key from ~/.ssh/known_hosts or /etc/ssh/ssh_known_hosts
(hashed names too), as ssh would for HOST on port 22, so a server you
have logged in to needs nothing more. The identity is by default the SSH agent at $SSH_AUTH_SOCK:
as ssh does, each of its keys in turn, one datagram per key, at most 8.
-identity KEYFILE names one key: a public key file (the agent's matching
key signs), or a private key file (asking for its passphrase on the
terminal if it has one).`,
	flags: func(fs *flag.FlagSet) func(*env, []string) int {
		door := fs.String("door", "", "the `door` to open (required)")
		keyFile := fs.String("key-file", "", "the door's shared key `file`")
		serverKey := fs.String("server-key-file", "", "public-key door: the server's public key `file`")
		knownHosts := fs.Bool("known-hosts", false, "public-key door: take the server's ed25519 host key from ~/.ssh/known_hosts (or /etc/ssh/ssh_known_hosts)")
		identity := fs.String("identity", "agent", "public-key door: `agent`, or a key file (public: the agent's matching key; private: that key)")
		allow := fs.String("allow", "", "ask the door to open for this `address` instead of the one the datagram is sent from")
		nat := fs.Bool("nat", false, "seal no address: the door opens for the datagram's source (behind NAT)")
		port := fs.Int("p", defaultSPAPort, "the door's spa_port")
		verbose := fs.Bool("v", false, "print a line per datagram sent")
		return func(e *env, args []string) int {
			if len(args) != 1 || args[0] == "" {
				return usageErr(e, "spa", "give one HOST")
			}
			p := &knockPlan{host: args[0], door: *door, spaPort: *port, keyFile: *keyFile,
				serverKeyFile: *serverKey, knownHosts: *knownHosts, identity: *identity, nat: *nat, sshPort: 22}
			kinds := 0
			for _, set := range []bool{*keyFile != "", *serverKey != "", *knownHosts} {
				if set {
					kinds++
				}
			}
			switch {
			case *door == "":
				return usageErr(e, "spa", "-door is required")
			case kinds != 1:
				return usageErr(e, "spa", "give one of -key-file (a shared-key door), -server-key-file or -known-hosts (a public-key door)")
			case *port < 1 || *port > 65535:
				return usageErr(e, "spa", "-p %d is out of range 1-65535", *port)
			case *allow != "" && *nat:
				return usageErr(e, "spa", "give -allow or -nat, not both")
			case *keyFile != "" && *identity != "agent":
				return usageErr(e, "spa", "-identity is for public-key doors: a shared-key door's datagram is sealed with -key-file")
			}
			p.kind = kindSharedSPA
			if *keyFile == "" {
				p.kind = kindKeySPA
			}
			if *allow != "" {
				a, err := netip.ParseAddr(*allow)
				if err != nil || a.Zone() != "" {
					return usageErr(e, "spa", "-allow %q is not an IPv4 or IPv6 address", *allow)
				}
				p.allow = a
			}
			out := io.Discard
			if *verbose {
				out = e.stdout
			}
			ctx := context.Background()
			addr, err := resolveHost(ctx, p.host, 0)
			if err == nil {
				err = p.knock(ctx, e, out, addr, nil)
			}
			var uerr usageError
			switch {
			case errors.As(err, &uerr):
				return usageErr(e, "spa", "%v", err)
			case err != nil:
				fmt.Fprintf(e.stderr, "nftknock spa: %v\n", err)
				return exitFail
			}
			return exitOK
		}
	},
}

// maxAgentKeys bounds the datagrams one knock sends, one per agent key,
// as ssh bounds the keys it offers (a server's MaxAuthTries is 6 by
// default; 8 leaves room).
const maxAgentKeys = 8

// spaSender sends SPA datagrams to one door, each from a fresh socket
// connected to it, sealing the address that socket sends from.
type spaSender struct {
	to    netip.AddrPort
	allow netip.Addr // sealed instead of the socket's address
	nat   bool       // seal none
}

// send seals with seal, given the address to seal, and sends. It returns
// the address the datagram was sent from.
func (s spaSender) send(seal func(sealed netip.Addr) ([]byte, error)) (netip.Addr, error) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(s.to))
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	local := c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap().WithZone("")
	sealed := local
	switch {
	case s.nat:
		sealed = netip.Addr{}
	case s.allow.IsValid():
		sealed = s.allow
	}
	b, err := seal(sealed)
	if err != nil {
		return local, err
	}
	n, err := c.Write(b)
	if err == nil && n != len(b) {
		err = errors.New("short write")
	}
	if err != nil {
		return local, fmt.Errorf("send to %s: %w", s.to, err)
	}
	return local, nil
}

// sealFromFile reads a client key file and seals a request.
func sealFromFile(path, door string, req netip.Addr, now time.Time) ([]byte, error) {
	raw, err := spa.ReadKeyFile(path)
	if err != nil {
		return nil, err
	}
	k, err := spa.NewKey(raw)
	if err != nil {
		return nil, err
	}
	return spa.Seal(k, door, req, now)
}

// serverPublicKey finds the public key a public-key door's datagrams are
// sealed to: the plan's server key file, or known_hosts.
func (p *knockPlan) serverPublicKey(e *env) (*sshspa.ServerPublicKey, error) {
	if p.serverKeyFile != "" {
		return sshspa.ReadServerPublicKeyFile(expandHome(e, p.serverKeyFile))
	}
	// ssh's default UserKnownHostsFile and GlobalKnownHostsFile.
	var files []string
	if home := e.env("HOME"); home != "" {
		files = append(files, filepath.Join(home, ".ssh", "known_hosts"), filepath.Join(home, ".ssh", "known_hosts2"))
	}
	files = append(files, "/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
	return sshspa.KnownHostsKey(files, p.host, p.sshPort)
}

// sendKeySPA sends one datagram per identity key to a public-key door,
// signed by each in turn, and stops early when stop (if not nil) says so:
// between two datagrams, it waits up to wait for it.
func (p *knockPlan) sendKeySPA(ctx context.Context, e *env, out io.Writer, to netip.AddrPort, stop func(wait time.Duration) bool) error {
	server, err := p.serverPublicKey(e)
	if err != nil {
		return err
	}
	signers, closeAgent, err := identitySigners(e, p.identity)
	if err != nil {
		return err
	}
	defer closeAgent()
	s := spaSender{to: to, allow: p.allow, nat: p.nat}
	for i, signer := range signers {
		if i > 0 && stop != nil && stop(perKeyWait) {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		from, err := s.send(func(sealed netip.Addr) ([]byte, error) {
			return sshspa.Seal(server, signer, p.door, sealed, e.now())
		})
		if err != nil {
			return fmt.Errorf("knock with %s: %w", ssh.FingerprintSHA256(signer.PublicKey()), err)
		}
		fmt.Fprintf(out, "sent %s from %s, signed by %s %s\n", to, from, signer.PublicKey().Type(), ssh.FingerprintSHA256(signer.PublicKey()))
	}
	return nil
}

// perKeyWait is how long nftknock proxy waits for the port to answer
// before it sends the datagram of the agent's next key: a door opens
// within a millisecond of a datagram, so this is the round trip and the
// retry of a connect, no more.
const perKeyWait = 400 * time.Millisecond

// expandHome expands a leading ~/ to $HOME, for paths from the client
// file (the shell does it for flags).
func expandHome(e *env, path string) string {
	if len(path) >= 2 && path[:2] == "~/" {
		if home := e.env("HOME"); home != "" {
			return filepath.Join(home, path[2:])
		}
	}
	return path
}
