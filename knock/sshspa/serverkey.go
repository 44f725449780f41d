package sshspa

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/hpke"
	"crypto/rand"
	"crypto/sha512"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"

	"filippo.io/edwards25519"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// The server's key is an OpenSSH ed25519 key: the host key
// (/etc/ssh/ssh_host_ed25519_key), one made by `ssh-keygen -t ed25519`, or
// one `nftknock keygen -server` writes (the same format: an unencrypted
// OpenSSH private key). Its X25519 form is the one age uses for
// ssh-ed25519 recipients (filippo.io/age, agessh): the public key is the
// Montgomery form of the Edwards point (edwards25519's BytesMontgomery),
// the private scalar the first half of SHA-512 of the ed25519 seed, which
// is the scalar ed25519 itself signs with. So a client that has the
// server's ssh-ed25519 public key line, from `ssh-keygen -y`, from
// known_hosts or from keygen -server, can seal to it.

// ServerKey is the server's private key, ready to open datagrams. Safe for
// concurrent use.
type ServerKey struct {
	hpke   hpke.PrivateKey
	public *ServerPublicKey
}

// ServerPublicKey is what a client seals to.
type ServerPublicKey struct {
	hpke   hpke.PublicKey
	x25519 []byte
	ssh    ssh.PublicKey
}

// Public is the key's public half.
func (k *ServerKey) Public() *ServerPublicKey { return k.public }

// SSH is the ssh-ed25519 public key.
func (p *ServerPublicKey) SSH() ssh.PublicKey { return p.ssh }

// Line is the public key as one OpenSSH public-key line ("ssh-ed25519
// AAAA…"), without a newline: what a client's server_key_file holds.
func (p *ServerPublicKey) Line() string {
	return strings.TrimSuffix(string(ssh.MarshalAuthorizedKey(p.ssh)), "\n")
}

// Fingerprint is the key's SHA256 fingerprint, as ssh-keygen -lf shows it.
func (p *ServerPublicKey) Fingerprint() string { return ssh.FingerprintSHA256(p.ssh) }

// maxKeyFile bounds what is read of a key file: an OpenSSH ed25519
// private key is about 400 bytes, a public key line under 100 and a long
// comment.
const maxKeyFile = 64 << 10

// LoadServerKey reads server_key_file. It refuses a file that is not a
// regular file, or that its group or others can read or write (as ssh and
// sshd refuse a private key anyone but its owner can use: a copy of the
// key lets one read every knock, and forge none, but that is enough to
// learn who knocks and from where).
func LoadServerKey(path string) (*ServerKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("server key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("server key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("server key %s: not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("server key %s: group or others may use it (mode %04o): a private key must stay private. Fix: chmod 600 %s", path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("server key %s: %w", path, err)
	}
	if len(data) > maxKeyFile {
		return nil, fmt.Errorf("server key %s: larger than %d bytes: not a key", path, maxKeyFile)
	}
	k, err := ParseServerKey(data)
	if err != nil {
		return nil, fmt.Errorf("server key %s: %w", path, err)
	}
	return k, nil
}

// ParseServerKey reads an unencrypted OpenSSH ed25519 private key.
func ParseServerKey(pemBytes []byte) (*ServerKey, error) {
	raw, err := ssh.ParseRawPrivateKey(pemBytes)
	var missing *ssh.PassphraseMissingError
	switch {
	case errors.As(err, &missing):
		return nil, errors.New("encrypted with a passphrase, which the daemon cannot ask for: use an unencrypted key (host keys are; or nftknock keygen -server FILE)")
	case err != nil:
		return nil, fmt.Errorf("not an OpenSSH private key: %v", err)
	}
	var priv ed25519.PrivateKey
	switch k := raw.(type) {
	case *ed25519.PrivateKey:
		priv = *k
	case ed25519.PrivateKey:
		priv = k
	default:
		return nil, fmt.Errorf("a %T, not an ed25519 key: server_key_file must be an ed25519 key (/etc/ssh/ssh_host_ed25519_key, ssh-keygen -t ed25519, or nftknock keygen -server)", raw)
	}
	return newServerKey(priv)
}

func newServerKey(priv ed25519.PrivateKey) (*ServerKey, error) {
	pub, err := ssh.NewPublicKey(priv.Public())
	if err != nil {
		return nil, err
	}
	sp, err := NewServerPublicKey(pub)
	if err != nil {
		return nil, err
	}
	h := sha512.Sum512(priv.Seed())
	xk, err := x25519.NewPrivateKey(h[:32])
	if err != nil {
		return nil, err
	}
	// The scalar's public key must be the Edwards key's Montgomery form,
	// or the file's halves do not belong together.
	if !bytes.Equal(xk.PublicKey().Bytes(), sp.x25519) {
		return nil, errors.New("its private and public halves do not match")
	}
	hk, err := hpke.NewDHKEMPrivateKey(xk)
	if err != nil {
		return nil, err
	}
	return &ServerKey{hpke: hk, public: sp}, nil
}

// GenerateServerKey makes a new server key: the file's contents (an
// unencrypted OpenSSH ed25519 private key with comment) and its public
// key.
func GenerateServerKey(comment string) ([]byte, *ServerPublicKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, nil, err
	}
	k, err := newServerKey(priv)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(block), k.public, nil
}

// NewServerPublicKey converts a server's ssh-ed25519 public key.
func NewServerPublicKey(pub ssh.PublicKey) (*ServerPublicKey, error) {
	ek, ok := ed25519Key(pub)
	if !ok || pub.Type() != ssh.KeyAlgoED25519 {
		return nil, fmt.Errorf("a %s key: the server key must be ssh-ed25519", pub.Type())
	}
	p, err := new(edwards25519.Point).SetBytes(ek)
	if err != nil {
		return nil, fmt.Errorf("not a valid ed25519 key: %v", err)
	}
	// A point of small order would make every shared secret one of a
	// handful of values: no key at all.
	if new(edwards25519.Point).MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()) == 1 {
		return nil, errors.New("not a valid ed25519 key (a point of small order)")
	}
	xp, err := x25519.NewPublicKey(p.BytesMontgomery())
	if err != nil {
		return nil, err
	}
	hp, err := hpke.NewDHKEMPublicKey(xp)
	if err != nil {
		return nil, err
	}
	return &ServerPublicKey{hpke: hp, x25519: xp.Bytes(), ssh: pub}, nil
}

// ParseServerPublicKey reads a server public key file's contents: one
// OpenSSH public-key line (ssh-ed25519 AAAA… [comment]); blank lines and
// # comments around it are allowed.
func ParseServerPublicKey(data []byte) (*ServerPublicKey, error) {
	var found *ServerPublicKey
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1024), maxKeyFile)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if found != nil {
			return nil, errors.New("more than one key: a server key file holds one public-key line")
		}
		if strings.HasPrefix(line, "-----BEGIN") {
			return nil, errors.New("a private key: give the server's public key (ssh-keygen -y -f KEY prints it), never its private key")
		}
		pub, _, opts, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil || len(opts) > 0 {
			return nil, errors.New("not an OpenSSH public-key line (ssh-ed25519 AAAA…)")
		}
		if found, err = NewServerPublicKey(pub); err != nil {
			return nil, err
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if found == nil {
		return nil, errors.New("no public-key line")
	}
	return found, nil
}

// ReadServerPublicKeyFile reads a client's server_key_file.
func ReadServerPublicKeyFile(path string) (*ServerPublicKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("server key file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("server key file %s: %w", path, err)
	}
	if len(data) > maxKeyFile {
		return nil, fmt.Errorf("server key file %s: larger than %d bytes: not a public key", path, maxKeyFile)
	}
	k, err := ParseServerPublicKey(data)
	if err != nil {
		return nil, fmt.Errorf("server key file %s: %w", path, err)
	}
	return k, nil
}

// KnownHostsKey finds host's ssh-ed25519 host key in known_hosts files
// (OpenSSH's format, hashed host names included), as ssh would look it up
// for a connection to host on sshPort: so a client that has logged in
// before needs no other copy of the server's key.
func KnownHostsKey(files []string, host string, sshPort int) (*ServerPublicKey, error) {
	var existing []string
	for _, f := range files {
		if _, err := os.Stat(f); err == nil {
			existing = append(existing, f)
		}
	}
	if len(existing) == 0 {
		return nil, fmt.Errorf("known_hosts: none of %s exists", strings.Join(files, ", "))
	}
	cb, err := knownhosts.New(existing...)
	if err != nil {
		return nil, fmt.Errorf("known_hosts: %w", err)
	}
	// knownhosts only checks keys: offered one no file can hold, it
	// answers with every key it knows for the host.
	probe, err := ssh.NewPublicKey(ed25519.PublicKey(make([]byte, ed25519.PublicKeySize)))
	if err != nil {
		return nil, err
	}
	hostPort := net.JoinHostPort(host, strconv.Itoa(sshPort))
	addr := knownhosts.Normalize(hostPort) // as known_hosts writes it
	err = cb(hostPort, &net.TCPAddr{IP: net.IPv4zero, Port: sshPort}, probe)
	var kerr *knownhosts.KeyError
	var rerr *knownhosts.RevokedError
	switch {
	case errors.As(err, &kerr):
	case err == nil:
		return nil, errors.New("known_hosts: accepted an impossible key")
	default:
		return nil, fmt.Errorf("known_hosts: %w", err)
	}
	var found []knownhosts.KnownKey
	for _, k := range kerr.Want {
		if k.Key.Type() == ssh.KeyAlgoED25519 {
			found = append(found, k)
		}
	}
	switch len(found) {
	case 0:
		if len(kerr.Want) == 0 {
			return nil, fmt.Errorf("known_hosts: no key for %s in %s (log in once with ssh, or give the server key file)", addr, strings.Join(existing, ", "))
		}
		return nil, fmt.Errorf("known_hosts: %s has no ssh-ed25519 key, only %s: give the server key file instead", addr, kerr.Want[0].Key.Type())
	case 1:
	default:
		for _, k := range found[1:] {
			if !bytes.Equal(k.Key.Marshal(), found[0].Key.Marshal()) {
				return nil, fmt.Errorf("known_hosts: %s has several ssh-ed25519 keys (%s:%d, %s:%d): give the server key file instead", addr, found[0].Filename, found[0].Line, k.Filename, k.Line)
			}
		}
	}
	// The probe is never revoked; the key found may be (@revoked).
	switch err := cb(hostPort, &net.TCPAddr{IP: net.IPv4zero, Port: sshPort}, found[0].Key); {
	case errors.As(err, &rerr):
		return nil, fmt.Errorf("known_hosts: %s's ssh-ed25519 key is revoked (@revoked in %s)", addr, rerr.Revoked.Filename)
	case err != nil:
		return nil, fmt.Errorf("known_hosts: %w", err)
	}
	return NewServerPublicKey(found[0].Key)
}
