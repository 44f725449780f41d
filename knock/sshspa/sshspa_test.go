package sshspa

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/nftknock/nftknock/integration/sshtest"
	"github.com/nftknock/nftknock/knock/authkeys"
	"github.com/nftknock/nftknock/knock/spa"
)

var t0 = time.Date(2026, 11, 22, 7, 0, 0, 0, time.UTC)

const maxAge = 30 * time.Second

var (
	src4  = netip.MustParseAddr("192.0.2.7")
	src6  = netip.MustParseAddr("2001:db8::7")
	other = netip.MustParseAddr("198.51.100.9")
)

// serverKey is a server key from a fixed seed: tests and fuzz seeds stay
// the same from run to run.
func serverKey(tb testing.TB, seed byte) *ServerKey {
	tb.Helper()
	k, err := newServerKey(ed25519.NewKeyFromSeed(seedOf(seed)))
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func seedOf(b byte) []byte {
	s := make([]byte, ed25519.SeedSize)
	for i := range s {
		s[i] = b
	}
	return s
}

func ed25519Signer(tb testing.TB, seed byte) ssh.Signer {
	tb.Helper()
	s, err := ssh.NewSignerFromKey(ed25519.NewKeyFromSeed(seedOf(seed)))
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// trusted makes the authorized_keys line for signer, with options.
func trusted(tb testing.TB, signer ssh.Signer, options, comment string) *authkeys.Key {
	tb.Helper()
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))) + " " + comment
	if options != "" {
		line = options + " " + line
	}
	keys, problems := authkeys.Parse("test", []byte(line), 10)
	if len(keys) != 1 {
		tb.Fatalf("%s: %v", line, problems)
	}
	return keys[0]
}

func seal(tb testing.TB, server *ServerKey, s ssh.Signer, door string, req netip.Addr, now time.Time) []byte {
	tb.Helper()
	d, err := Seal(server.Public(), s, door, req, now)
	if err != nil {
		tb.Fatal(err)
	}
	if len(d) != Size {
		tb.Fatalf("datagram is %d bytes, want %d", len(d), Size)
	}
	return d
}

func TestRoundTripEachKeyType(t *testing.T) {
	server := serverKey(t, 1)
	dir := t.TempDir()
	for _, c := range []struct {
		typ  string
		bits int
	}{{"ed25519", 0}, {"ecdsa", 256}, {"ecdsa", 384}, {"ecdsa", 521}, {"rsa", 2048}, {"rsa", 3072}, {"rsa", 4096}} {
		name := c.typ
		if c.bits > 0 {
			name += "-" + strconv.Itoa(c.bits)
		}
		t.Run(name, func(t *testing.T) {
			k := sshtest.Keygen(t, dir, name, c.typ, c.bits, "alice@"+name, "")
			line := trusted(t, k.Signer, "", k.Comment)
			if fp := sshtest.Fingerprint(t, k.Path+".pub"); line.Fingerprint != fp {
				t.Errorf("fingerprint %s, ssh-keygen -lf says %s", line.Fingerprint, fp)
			}
			set := authkeys.NewSet([]*authkeys.Key{line})
			for _, req := range []netip.Addr{{}, src4, src6} {
				from := req
				if !from.IsValid() {
					from = src4
				}
				d := seal(t, server, k.Signer, "team", req, t0)
				r, err := Open(server, "team", set, d, from, t0.Add(time.Second), maxAge)
				if err != nil {
					t.Fatalf("sealed address %v: %v", req, err)
				}
				if !r.Time.Equal(t0) || r.Requested != req || r.ID == [16]byte{} || r.Key != line {
					t.Errorf("sealed address %v: got %+v", req, r)
				}
				if got := r.Key.String(); got != `"alice@`+name+`" `+line.Fingerprint {
					t.Errorf("key names itself %s", got)
				}
			}
		})
	}
}

// countingKey counts the signature checks made with a key.
type countingKey struct {
	ssh.PublicKey
	verifies *atomic.Int32
}

func (k countingKey) Verify(data []byte, sig *ssh.Signature) error {
	k.verifies.Add(1)
	return k.PublicKey.Verify(data, sig)
}

func TestRejections(t *testing.T) {
	server := serverKey(t, 1)
	alice := ed25519Signer(t, 2)
	mallory := ed25519Signer(t, 3)
	var verifies atomic.Int32
	line := trusted(t, alice, `from="192.0.2.0/24,2001:db8::/32"`, "alice@laptop")
	line.PublicKey = countingKey{line.PublicKey, &verifies}
	expired := trusted(t, mallory, `expiry-time="20261122UTC"`, "mallory@old") // t0 is 07:00 that day
	set := authkeys.NewSet([]*authkeys.Key{line, expired})

	good := seal(t, server, alice, "team", src4, t0)
	flip := func(i int) []byte { c := append([]byte(nil), good...); c[i] ^= 1; return c }
	otherServer := seal(t, serverKey(t, 9), alice, "team", src4, t0)
	stranger := seal(t, server, ed25519Signer(t, 4), "team", src4, t0)
	// mallory's datagram claiming alice's key: an authentic seal, a
	// signature by another key.
	forged := forgeSignature(t, server, alice, mallory, "team", src4, t0)
	cases := []struct {
		name string
		dg   []byte
		src  netip.Addr
		now  time.Time
		want error
		// verified: the datagram reaches the signature check.
		verified bool
	}{
		{"empty", nil, src4, t0, ErrTruncated, false},
		{"truncated", good[:Size-1], src4, t0, ErrTruncated, false},
		{"oversized", append(append([]byte(nil), good...), 0), src4, t0, ErrOversized, false},
		{"magic", flip(0), src4, t0, ErrVersion, false},
		{"version", flip(2), src4, t0, ErrVersion, false},
		{"shared-key datagram", spaDatagram(t), src4, t0, ErrTruncated, false},
		{"another server's key", otherServer, src4, t0, ErrSeal, false},
		{"encapsulated key bit", flip(3), src4, t0, ErrSeal, false},
		{"payload bit", flip(100), src4, t0, ErrSeal, false},
		{"tag bit", flip(Size - 1), src4, t0, ErrSeal, false},
		{"stale", good, src4, t0.Add(maxAge + time.Nanosecond), ErrStale, false},
		{"future", good, src4, t0.Add(-maxAge - time.Nanosecond), ErrStale, false},
		{"unknown key", stranger, src4, t0, ErrUnknownKey, false},
		{"bad signature", forged, src4, t0, ErrBadSignature, true},
		{"from= refuses the source", good, other, t0, ErrFromRefused, true},
		{"from= refuses the sealed address", seal(t, server, alice, "team", other, t0), src4, t0, ErrFromRefused, true},
		{"expired key", seal(t, server, mallory, "team", src4, t0), src4, t0, ErrKeyExpired, false},
	}
	for _, c := range cases {
		verifies.Store(0)
		if _, err := Open(server, "team", set, c.dg, c.src, c.now, maxAge); err != c.want {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
		if got := verifies.Load() > 0; got != c.verified {
			t.Errorf("%s: reached the signature check: %v, want %v", c.name, got, c.verified)
		}
	}
	if _, err := Open(server, "ops", set, good, src4, t0, maxAge); err != ErrWrongDoor {
		t.Errorf("wrong door: %v", err)
	}
	// At the edge of the window either way it is still fresh.
	for _, now := range []time.Time{t0.Add(maxAge), t0.Add(-maxAge)} {
		if _, err := Open(server, "team", set, good, src4, now, maxAge); err != nil {
			t.Errorf("at %v: %v", now.Sub(t0), err)
		}
	}
	if _, err := Seal(server.Public(), alice, "", src4, t0); err == nil {
		t.Error("Seal with no door name succeeded")
	}
	if _, err := Seal(server.Public(), alice, strings.Repeat("d", 33), src4, t0); err == nil {
		t.Error("Seal with a 33-byte door name succeeded")
	}
}

// TestKeyListedTwice: as with sshd, any of a key's lines may let it in,
// and the one that did names it.
func TestKeyListedTwice(t *testing.T) {
	server := serverKey(t, 1)
	alice := ed25519Signer(t, 2)
	office := trusted(t, alice, `from="192.0.2.0/24"`, "alice@office")
	home := trusted(t, alice, `from="198.51.100.0/24",expiry-time="20261123Z"`, "alice@home")
	set := authkeys.NewSet([]*authkeys.Key{office, home})
	r, err := Open(server, "team", set, seal(t, server, alice, "team", other, t0), other, t0, maxAge)
	if err != nil || r.Key != home {
		t.Fatalf("from the home line's network: %v, %+v", err, r.Key)
	}
	late := t0.Add(17*time.Hour + time.Second) // a second past 2026-11-23 00:00 UTC
	if _, err := Open(server, "team", set, seal(t, server, alice, "team", other, late), other, late, maxAge); err != ErrKeyExpired {
		t.Fatalf("home line expired: %v, want ErrKeyExpired", err)
	}
	if _, err := Open(server, "team", set, seal(t, server, alice, "team", src4, late), src4, late, maxAge); err != nil {
		t.Fatalf("office line, no expiry: %v", err)
	}
}

// forgeSignature seals, to server, a datagram that names claimed's key
// but carries a signature by signer: what someone who knows the server's
// public key and a trusted public key can send.
func forgeSignature(tb testing.TB, server *ServerKey, claimed, signer ssh.Signer, door string, req netip.Addr, now time.Time) []byte {
	tb.Helper()
	return Reseal(tb, server, seal(tb, server, signer, door, req, now), func(plain []byte) {
		h := keyHash(claimed.PublicKey())
		copy(plain[74:106], h[:])
	})
}

// Reseal opens d with server, lets mutate change its payload and seals it
// again, under a fresh encapsulated key: an authentic seal around a
// payload Seal would not write.
func Reseal(tb testing.TB, server *ServerKey, d []byte, mutate func(plain []byte)) []byte {
	tb.Helper()
	rcpt, err := hpkeRecipient(server, d)
	if err != nil {
		tb.Fatal(err)
	}
	plain, err := rcpt.Open(d[:headerSize], d[headerSize:])
	if err != nil {
		tb.Fatal(err)
	}
	mutate(plain)
	enc, sender, err := hpkeSender(server.Public())
	if err != nil {
		tb.Fatal(err)
	}
	header := append([]byte(magic+"\x02"), enc...)
	ct, err := sender.Seal(header, plain)
	if err != nil {
		tb.Fatal(err)
	}
	return append(header, ct...)
}

func TestMalformedPayloads(t *testing.T) {
	server := serverKey(t, 1)
	alice := ed25519Signer(t, 2)
	set := authkeys.NewSet([]*authkeys.Key{trusted(t, alice, "", "alice")})
	good := seal(t, server, alice, "team", src4, t0)
	for name, mutate := range map[string]func([]byte){
		"door length 0":            func(p []byte) { p[24] = 0 },
		"door length 33":           func(p []byte) { p[24] = 33 },
		"door padding":             func(p []byte) { p[56] = 'x' },
		"address length 5":         func(p []byte) { p[57] = 5 },
		"address padding (none)":   func(p []byte) { p[57] = 0 },
		"address padding (IPv4)":   func(p []byte) { p[70] = 1 },
		"signature length 0":       func(p []byte) { binary.BigEndian.PutUint16(p[106:], 0) },
		"signature length too big": func(p []byte) { binary.BigEndian.PutUint16(p[106:], MaxSignatureSize+1) },
		"signature padding":        func(p []byte) { p[plainSize-1] = 1 },
	} {
		d := Reseal(t, server, good, mutate)
		if _, err := Open(server, "team", set, d, src4, t0, maxAge); err != ErrMalformed {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
	// The payload moved, unchanged, under another encapsulated key: the
	// signature covers the header, so it no longer holds.
	if _, err := Open(server, "team", set, Reseal(t, server, good, func([]byte) {}), src4, t0, maxAge); err != ErrBadSignature {
		t.Errorf("resealed unchanged: %v, want ErrBadSignature", err)
	}
	signed := func(msg []byte) *ssh.Signature {
		sig, err := alice.Sign(rand.Reader, msg)
		if err != nil {
			t.Fatal(err)
		}
		return sig
	}
	// Resealed and signed anew: good (the helper itself is sound).
	if _, err := Open(server, "team", set, resign(t, server, good, signed, nil), src4, t0, maxAge); err != nil {
		t.Fatalf("resealed and signed again: %v", err)
	}
	// A field changed after the signing: the seal is authentic, the
	// signature does not cover what the payload says.
	for name, off := range map[string]int{"timestamp": 7, "request id": 9, "sealed address": 60, "key": 80} {
		d := resign(t, server, good, signed, func(p []byte) { p[off] ^= 1 })
		if _, err := Open(server, "team", set, d, src4, t0, maxAge); err != ErrBadSignature && !(name == "key" && err == ErrUnknownKey) {
			t.Errorf("changed %s: %v, want ErrBadSignature", name, err)
		}
	}
	// A signature in a form the key does not allow.
	d := Reseal(t, server, good, func(p []byte) {
		n := binary.BigEndian.Uint16(p[106:])
		var sig ssh.Signature
		if err := ssh.Unmarshal(p[108:108+n], &sig); err != nil {
			t.Fatal(err)
		}
		sig.Format = "ssh-rsa"
		b := ssh.Marshal(&sig)
		clear(p[106:])
		binary.BigEndian.PutUint16(p[106:], uint16(len(b)))
		copy(p[108:], b)
	})
	if _, err := Open(server, "team", set, d, src4, t0, maxAge); err != ErrSignatureAlgorithm {
		t.Errorf("ssh-rsa format on an ed25519 key: %v, want ErrSignatureAlgorithm", err)
	}
}

// TestRSARefusesSHA1: an RSA key's ssh-rsa (SHA-1) signature is refused,
// even a valid one.
func TestRSARefusesSHA1(t *testing.T) {
	server := serverKey(t, 1)
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(rk)
	if err != nil {
		t.Fatal(err)
	}
	set := authkeys.NewSet([]*authkeys.Key{trusted(t, s, "", "rsa")})
	good := seal(t, server, s, "team", src4, t0)
	if _, err := Open(server, "team", set, good, src4, t0, maxAge); err != nil {
		t.Fatal(err)
	}
	// The real message, signed with SHA-1.
	d := resign(t, server, good, func(msg []byte) *ssh.Signature {
		sig, err := s.(ssh.AlgorithmSigner).SignWithAlgorithm(rand.Reader, msg, ssh.KeyAlgoRSA)
		if err != nil {
			t.Fatal(err)
		}
		return sig
	}, nil)
	if _, err := Open(server, "team", set, d, src4, t0, maxAge); err != ErrSignatureAlgorithm {
		t.Errorf("ssh-rsa (SHA-1) signature: %v, want ErrSignatureAlgorithm", err)
	}
	d = resign(t, server, good, func(msg []byte) *ssh.Signature {
		sig, err := s.(ssh.AlgorithmSigner).SignWithAlgorithm(rand.Reader, msg, ssh.KeyAlgoRSASHA256)
		if err != nil {
			t.Fatal(err)
		}
		return sig
	}, nil)
	if _, err := Open(server, "team", set, d, src4, t0, maxAge); err != nil {
		t.Errorf("rsa-sha2-256 signature: %v", err)
	}
}

// resign reseals d with a signature sign makes over its real message,
// then lets after (if not nil) change the payload.
func resign(tb testing.TB, server *ServerKey, d []byte, sign func(msg []byte) *ssh.Signature, after func(plain []byte)) []byte {
	tb.Helper()
	rcpt, err := hpkeRecipient(server, d)
	if err != nil {
		tb.Fatal(err)
	}
	plain, err := rcpt.Open(d[:headerSize], d[headerSize:])
	if err != nil {
		tb.Fatal(err)
	}
	enc, sender, err := hpkeSender(server.Public())
	if err != nil {
		tb.Fatal(err)
	}
	header := append([]byte(magic+"\x02"), enc...)
	sig := ssh.Marshal(sign(signedData(server.Public().x25519, header, plain[:fieldsSize])))
	clear(plain[106:])
	binary.BigEndian.PutUint16(plain[106:], uint16(len(sig)))
	copy(plain[108:], sig)
	if after != nil {
		after(plain)
	}
	ct, err := sender.Seal(header, plain)
	if err != nil {
		tb.Fatal(err)
	}
	return append(header, ct...)
}

func spaDatagram(tb testing.TB) []byte {
	k, err := spa.NewKey(make([]byte, spa.KeySize))
	if err != nil {
		tb.Fatal(err)
	}
	d, err := spa.Seal(k, "team", netip.Addr{}, t0)
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

// TestReplayCacheShared: the shared-key format's replay cache takes these
// requests too.
func TestReplayCacheShared(t *testing.T) {
	server := serverKey(t, 1)
	alice := ed25519Signer(t, 2)
	set := authkeys.NewSet([]*authkeys.Key{trusted(t, alice, "", "alice")})
	c := spa.NewReplay(0, t0)
	d := seal(t, server, alice, "team", src4, t0.Add(time.Second))
	r, err := Open(server, "team", set, d, src4, t0.Add(time.Second), maxAge)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CheckID(r.ID, r.Time, t0.Add(time.Second), maxAge); err != nil {
		t.Fatal(err)
	}
	if err := c.CheckID(r.ID, r.Time, t0.Add(2*time.Second), maxAge); err != spa.ErrReplay {
		t.Fatalf("the same datagram again: %v, want ErrReplay", err)
	}
	early := seal(t, server, alice, "team", src4, t0.Add(-time.Second))
	r, err = Open(server, "team", set, early, src4, t0.Add(time.Second), maxAge)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CheckID(r.ID, r.Time, t0.Add(time.Second), maxAge); err != spa.ErrBeforeStart {
		t.Fatalf("sealed before the cache began: %v, want ErrBeforeStart", err)
	}
}

func TestOpenFor(t *testing.T) {
	for _, c := range []struct {
		requested, src netip.Addr
		allow          bool
		want           netip.Addr
		err            error
	}{
		{netip.Addr{}, src4, false, src4, nil},
		{src4, src4, false, src4, nil},
		{netip.MustParseAddr("::ffff:192.0.2.7"), src4, false, src4, nil},
		{src4, netip.MustParseAddr("::ffff:192.0.2.7"), false, src4, nil},
		{other, src4, false, netip.Addr{}, spa.ErrRequestedRefused},
		{other, src4, true, other, nil},
		{src6, src4, false, netip.Addr{}, spa.ErrRequestedRefused},
	} {
		r := Request{Requested: c.requested}
		got, err := r.OpenFor(c.src, c.allow)
		if got != c.want || err != c.err {
			t.Errorf("sealed %v from %v (allow %v): %v, %v; want %v, %v", c.requested, c.src, c.allow, got, err, c.want, c.err)
		}
	}
}

func TestServerKeyFromSSHKeygen(t *testing.T) {
	dir := t.TempDir()
	host := sshtest.Keygen(t, dir, "ssh_host_ed25519_key", "ed25519", 0, "root@server", "")
	k, err := LoadServerKey(host.Path)
	if err != nil {
		t.Fatal(err)
	}
	// The client's copy: `ssh-keygen -y -f`, what the .pub holds.
	out, err := exec.Command("ssh-keygen", "-y", "-f", host.Path).Output()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ParseServerPublicKey(out)
	if err != nil {
		t.Fatal(err)
	}
	if pub.Line() != k.Public().Line() || pub.Fingerprint() != sshtest.Fingerprint(t, host.Path+".pub") {
		t.Fatalf("public key %s (%s), server key's %s", pub.Line(), pub.Fingerprint(), k.Public().Line())
	}
	alice := ed25519Signer(t, 2)
	set := authkeys.NewSet([]*authkeys.Key{trusted(t, alice, "", "alice")})
	d, err := Seal(pub, alice, "team", src4, t0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(k, "team", set, d, src4, t0, maxAge); err != nil {
		t.Fatal(err)
	}

	// What LoadServerKey refuses, each with its reason.
	if err := os.Chmod(host.Path, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadServerKey(host.Path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("mode 0640: %v", err)
	}
	enc := sshtest.Keygen(t, dir, "encrypted", "ed25519", 0, "", "secret")
	if _, err := LoadServerKey(enc.Path); err == nil || !strings.Contains(err.Error(), "passphrase") {
		t.Errorf("encrypted key: %v", err)
	}
	rsaKey := sshtest.Keygen(t, dir, "ssh_host_rsa_key", "rsa", 2048, "", "")
	if _, err := LoadServerKey(rsaKey.Path); err == nil || !strings.Contains(err.Error(), "ed25519") {
		t.Errorf("RSA key: %v", err)
	}
	if _, err := LoadServerKey(host.Path + ".pub"); err == nil {
		t.Error("a public key loaded as the server key")
	}
	if _, err := ParseServerPublicKey([]byte(rsaKey.Line)); err == nil {
		t.Error("an RSA public key taken as the server key")
	}
	if _, err := ParseServerPublicKey(mustRead(t, enc.Path)); err == nil || !strings.Contains(err.Error(), "private key") {
		t.Errorf("private key as the public one: %v", err)
	}
	if _, err := ParseServerPublicKey([]byte(host.Line + "\n" + host.Line + "\n")); err == nil {
		t.Error("two keys taken")
	}
}

func mustRead(tb testing.TB, path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// TestGenerateServerKey: keygen -server's file is an OpenSSH key that
// ssh-keygen reads, and its public line is ssh-keygen -y's.
func TestGenerateServerKey(t *testing.T) {
	sshtest.Require(t, "ssh-keygen")
	pemBytes, pub, err := GenerateServerKey("nftknock server key")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "server.key")
	if err := os.WriteFile(path, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ssh-keygen", "-y", "-f", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(out)); len(got) < 2 || got[0]+" "+got[1] != strings.Join(strings.Fields(pub.Line())[:2], " ") {
		t.Fatalf("ssh-keygen -y: %q, keygen printed %q", out, pub.Line())
	}
	k, err := LoadServerKey(path)
	if err != nil || k.Public().Line() != pub.Line() {
		t.Fatalf("%v: %s vs %s", err, k.Public().Line(), pub.Line())
	}
}

func TestSmallOrderServerKeyRefused(t *testing.T) {
	// The identity point: y = 1.
	id := make([]byte, 32)
	id[0] = 1
	pub, err := ssh.NewPublicKey(ed25519.PublicKey(id))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewServerPublicKey(pub); err == nil {
		t.Fatal("the identity point taken as a server key")
	}
}

func TestKnownHostsKey(t *testing.T) {
	sshtest.Require(t, "ssh-keygen")
	dir := t.TempDir()
	host := sshtest.Keygen(t, dir, "host", "ed25519", 0, "", "")
	rsaHost := sshtest.Keygen(t, dir, "rsahost", "rsa", 2048, "", "")
	ecdsaHost := sshtest.Keygen(t, dir, "ecdsahost", "ecdsa", 256, "", "")
	other := sshtest.Keygen(t, dir, "other", "ed25519", 0, "", "")
	// @revoked revokes a key for every host, as in ssh.
	revoked := sshtest.Keygen(t, dir, "revoked", "ed25519", 0, "", "")
	kh := filepath.Join(dir, "known_hosts")
	fields := func(k *sshtest.Key) string { f := strings.Fields(k.Line); return f[0] + " " + f[1] }
	text := strings.Join([]string{
		"web1.example.org " + fields(ecdsaHost),
		"web1.example.org,192.0.2.10 " + fields(host),
		"[web1.example.org]:2222 " + fields(other),
		"rsaonly.example.org " + fields(rsaHost),
		"hashed.example.org " + fields(host),
		"@revoked * " + fields(revoked),
		"revoked.example.org " + fields(revoked),
	}, "\n") + "\n"
	if err := os.WriteFile(kh, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	// Hash the names in place, as HashKnownHosts yes writes them.
	if out, err := exec.Command("ssh-keygen", "-H", "-f", kh).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen -H: %v: %s", err, out)
	}
	if b := mustRead(t, kh); strings.Contains(string(b), "hashed.example.org") {
		t.Fatalf("known_hosts not hashed: %s", b)
	}
	files := []string{filepath.Join(dir, "absent"), kh}
	for _, c := range []struct {
		host string
		port int
		want *sshtest.Key
		err  string
	}{
		{"web1.example.org", 22, host, ""},
		{"192.0.2.10", 22, host, ""},
		{"web1.example.org", 2222, other, ""},
		{"hashed.example.org", 22, host, ""},
		{"rsaonly.example.org", 22, nil, "no ssh-ed25519 key"},
		{"unknown.example.org", 22, nil, "no key for"},
		{"revoked.example.org", 22, nil, "revoked"},
	} {
		k, err := KnownHostsKey(files, c.host, c.port)
		switch {
		case c.want != nil && err != nil:
			t.Errorf("%s:%d: %v", c.host, c.port, err)
		case c.want != nil && k.Line() != fields(c.want):
			t.Errorf("%s:%d: got %s, want %s", c.host, c.port, k.Line(), fields(c.want))
		case c.want == nil && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s:%d: error %v, want one saying %q", c.host, c.port, err, c.err)
		}
	}
	if _, err := KnownHostsKey([]string{filepath.Join(dir, "absent")}, "web1.example.org", 22); err == nil {
		t.Error("no known_hosts file, no error")
	}
}

// TestSealWithAgent signs through a real ssh-agent: ed25519, ECDSA and
// RSA (which must sign with rsa-sha2-512 through the agent's flags).
func TestSealWithAgent(t *testing.T) {
	dir := t.TempDir()
	keys := []*sshtest.Key{
		sshtest.Keygen(t, dir, "ed", "ed25519", 0, "alice@ed", ""),
		sshtest.Keygen(t, dir, "ec", "ecdsa", 256, "alice@ec", ""),
		sshtest.Keygen(t, dir, "rsa", "rsa", 3072, "alice@rsa", ""),
	}
	sock := sshtest.Agent(t, keys...)
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	signers, err := agent.NewClient(conn).Signers()
	if err != nil || len(signers) != len(keys) {
		t.Fatalf("agent signers: %d, %v", len(signers), err)
	}
	server := serverKey(t, 1)
	var lines []*authkeys.Key
	for _, k := range keys {
		lines = append(lines, trusted(t, k.Signer, "", k.Comment))
	}
	set := authkeys.NewSet(lines)
	for _, s := range signers {
		d := seal(t, server, s, "team", src4, t0)
		r, err := Open(server, "team", set, d, src4, t0, maxAge)
		if err != nil {
			t.Fatalf("%s: %v", s.PublicKey().Type(), err)
		}
		if r.Key.Fingerprint != ssh.FingerprintSHA256(s.PublicKey()) {
			t.Errorf("%s: opened as %s", s.PublicKey().Type(), r.Key)
		}
	}
}

// benchKey makes a signer of each benchmarked type.
func benchKey(b *testing.B, typ string) ssh.Signer {
	var key any
	var err error
	switch typ {
	case "ed25519":
		key = ed25519.NewKeyFromSeed(seedOf(2))
	case "ecdsa-p256":
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "rsa-2048":
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	case "rsa-4096":
		key, err = rsa.GenerateKey(rand.Reader, 4096)
	}
	if err != nil {
		b.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(key)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkOpen is one authentic datagram verified, per key type: what a
// door's worth of real knocks costs.
func BenchmarkOpen(b *testing.B) {
	server := serverKey(b, 1)
	for _, typ := range []string{"ed25519", "ecdsa-p256", "rsa-2048", "rsa-4096"} {
		b.Run(typ, func(b *testing.B) {
			s := benchKey(b, typ)
			set := authkeys.NewSet([]*authkeys.Key{trusted(b, s, "", "bench")})
			d := seal(b, server, s, "team", src4, t0)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Open(server, "team", set, d, src4, t0, maxAge); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "datagrams/s")
		})
	}
}

// BenchmarkOpenForged is the cost of datagrams that must be refused:
// "seal" one byte changed (or sealed to another key, or random bytes of
// the right size: all fail at the AEAD, after the X25519); "unknown-key"
// an authentic seal naming a key the door does not list; "bad-signature"
// the worst: an authentic seal naming a listed ed25519 key, with a
// signature by another, which anyone holding the server's public key and
// that public key can send.
func BenchmarkOpenForged(b *testing.B) {
	server := serverKey(b, 1)
	alice := ed25519Signer(b, 2)
	set := authkeys.NewSet([]*authkeys.Key{trusted(b, alice, "", "alice")})
	good := seal(b, server, alice, "team", src4, t0)
	flipped := append([]byte(nil), good...)
	flipped[100] ^= 1
	for _, c := range []struct {
		name string
		d    []byte
		want error
	}{
		{"seal", flipped, ErrSeal},
		{"unknown-key", seal(b, server, ed25519Signer(b, 5), "team", src4, t0), ErrUnknownKey},
		{"bad-signature", forgeSignature(b, server, alice, ed25519Signer(b, 5), "team", src4, t0), ErrBadSignature},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Open(server, "team", set, c.d, src4, t0, maxAge); err != c.want {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "datagrams/s")
		})
	}
}

// fuzzDoor is what FuzzOpen opens against: fixed keys, so that the seeds
// under testdata/fuzz/FuzzOpen (datagrams sealed at t0) stay authentic.
func fuzzDoor(tb testing.TB) (*ServerKey, *authkeys.Set, ssh.Signer) {
	server := serverKey(tb, 1)
	alice := ed25519Signer(tb, 2)
	line := trusted(tb, alice, `from="192.0.2.0/24",expiry-time="20300101Z"`, "alice@laptop")
	return server, authkeys.NewSet([]*authkeys.Key{line}), alice
}

func FuzzOpen(f *testing.F) {
	server, set, alice := fuzzDoor(f)
	f.Add(seal(f, server, alice, "team", src4, t0))
	f.Add(seal(f, server, alice, "team", netip.Addr{}, t0))
	f.Add([]byte("NK\x02"))
	f.Fuzz(func(t *testing.T, d []byte) {
		orig := string(d)
		r, err := Open(server, "team", set, d, src4, t0, maxAge)
		if string(d) != orig {
			t.Fatal("Open changed its input")
		}
		if err != nil {
			if r != (Request{}) {
				t.Fatalf("refused (%v) with a request: %+v", err, r)
			}
			return
		}
		// Only a datagram alice signed opens: the fuzzer cannot forge one.
		if r.Key == nil || r.Key.Comment != "alice@laptop" || len(d) != Size {
			t.Fatalf("opened: %+v", r)
		}
		if r.Requested.IsValid() && r.Requested != src4 {
			t.Fatalf("opened for %v", r.Requested)
		}
	})
}
