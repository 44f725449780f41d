// Package sshspa is nftknock's public-key single-packet authorization
// format: one UDP datagram, signed with the knocker's SSH key and sealed to
// the server's X25519 key, that asks a door to open. The server needs no
// secret of the knocker's, only the public keys its authorized_keys files
// list (knock/authkeys); the knocker needs the server's public key only.
//
// # Construction
//
// The seal is HPKE (RFC 9180, Go's crypto/hpke) in base mode with
// DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and ChaCha20-Poly1305, info
// "nftknock sshspa v1". Each datagram has its own ephemeral key, so a
// listener sees 688 random-looking bytes behind a 3-byte header: not the
// door, not the key, not the address asked for. ChaCha20-Poly1305 rather
// than AES-256-GCM: it is constant-time in software on every CPU, and
// knock daemons run on small ARM and MIPS routers without AES
// instructions; the AEAD is a rounding error next to the X25519 either way.
//
// Inside the seal, the knocker's SSH key signs, in OpenSSH's SSHSIG form
// (PROTOCOL.sshsig: "SSHSIG", namespace "nftknock-spa", reserved "", hash
// "sha512", SHA-512 of the message), the message
//
//	server's X25519 public key (32) ‖ header (35) ‖ fields (106)
//
// SSHSIG is OpenSSH's own framing for signing anything but an SSH login,
// so the signature can never pass for one (nor for a git or file
// signature: those have other namespaces). The server key in the message
// keeps a datagram opened by one server from being replayed to another
// that trusts the same key; the header binds the ephemeral key. The
// server verifies the signature with the key its authorized_keys lists
// under the fingerprint the fields carry (ssh-ed25519, ecdsa-sha2-nistp256,
// -nistp384, -nistp521, rsa-sha2-256 or rsa-sha2-512; never SHA-1 ssh-rsa).
//
// # Format
//
// Every datagram is exactly Size (691) bytes:
//
//	off  len  field
//	  0    2  magic "NK"
//	  2    1  version, 2 (1 is the shared-key format, knock/spa)
//	  3   32  HPKE encapsulated key: the sender's ephemeral X25519 key
//	 35  640  sealed payload (below), encrypted
//	675   16  ChaCha20-Poly1305 tag
//
// The header (bytes 0-34) is the AEAD's additional data. The payload is:
//
//	off  len  field
//	  0    8  timestamp, Unix nanoseconds, big-endian int64
//	  8   16  request id, random: the replay cache's key
//	 24    1  door name length, 1-32
//	 25   32  door name, zero-padded
//	 57    1  sealed address length: 0 (none: behind NAT), 4 or 16
//	 58   16  sealed address, zero-padded: the one the client sends from,
//	          or another it asks the door to open for
//	 74   32  key fingerprint: SHA-256 of the signing key's SSH wire form
//	          (what `ssh-keygen -lf` shows in base64)
//	106    2  signature length L, big-endian, at most 532
//	108    L  the signature, SSH wire form: string format, string blob
//	108+L  …  zero bytes to 640
//
// Bytes 0-105 are the fields the signature covers. The longest signature
// is RSA-4096's (rsa-sha2-512: 4+12+4+512 = 532 bytes), so every datagram
// has the same size whatever the key: ed25519 (83), ECDSA (at most 169)
// and RSA from 2048 to 4096 bits alike. Nothing leaks but that this is an
// nftknock public-key knock (the header), and its timing; RSA keys over
// 4096 bits cannot knock (knock/authkeys skips them).
//
// # Checks
//
// Open checks, in this order, so that the costly steps come last and a
// datagram that is not sealed to this server never reaches a signature
// check: size, version, the seal (one X25519 and the AEAD), the payload's
// form, the timestamp, the door, the key's presence in the door's set,
// the signature, the key's from= (the source, and the sealed address when
// it differs) and its expiry-time. Replay is the caller's next step
// (spa.Replay.CheckID), and which address to open for the last
// (Request.OpenFor, the same rule as the shared-key format's).
package sshspa

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/hpke"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nftknock/nftknock/knock/authkeys"
	"github.com/nftknock/nftknock/knock/spa"
)

// Sizes of the format.
const (
	encSize    = 32
	headerSize = 3 + encSize
	fieldsSize = 106
	// MaxSignatureSize is the longest signature a datagram holds: an
	// RSA-4096 rsa-sha2-512 one.
	MaxSignatureSize = 4 + 12 + 4 + 512
	plainSize        = fieldsSize + 2 + MaxSignatureSize
	tagSize          = 16
	// Size is the length of every datagram.
	Size = headerSize + plainSize + tagSize
	// Version is the format version this package writes and reads.
	Version    = 2
	maxDoorLen = 32
)

const (
	magic = "NK"
	// hpkeInfo binds the HPKE context to this format.
	hpkeInfo = "nftknock sshspa v1"
	// sigNamespace is the SSHSIG namespace of a knock's signature.
	sigNamespace = "nftknock-spa"
)

// Errors Open returns: values, never wrapped, each a distinct log reason.
// The ones before ErrUnknownKey say nothing of who sent the datagram;
// ErrUnknownKey and ErrBadSignature name a key the datagram claims, which
// anyone who has the server's public key can claim; only ErrFromRefused
// and ErrKeyExpired come from a datagram that key really signed.
var (
	ErrTruncated = errors.New("sshspa: truncated datagram")
	ErrOversized = errors.New("sshspa: oversized datagram")
	ErrVersion   = errors.New("sshspa: not an nftknock public-key SPA datagram of a known version")
	// ErrSeal: not sealed to this server's key (another server's, or
	// forged), or a byte changed. Nothing inside was looked at.
	ErrSeal      = errors.New("sshspa: seal does not open (sealed to another server key, or changed)")
	ErrMalformed = errors.New("sshspa: malformed payload")
	ErrStale     = errors.New("sshspa: timestamp outside the allowed age")
	ErrWrongDoor = errors.New("sshspa: sealed for another door")
	// ErrUnknownKey: the key the datagram names is in none of the door's
	// authorized_keys lines (now).
	ErrUnknownKey = errors.New("sshspa: key not authorized for this door")
	// ErrSignatureAlgorithm: signed with an algorithm the key's type does
	// not allow here (ssh-rsa with SHA-1, or a mismatch).
	ErrSignatureAlgorithm = errors.New("sshspa: signature algorithm not accepted")
	ErrBadSignature       = errors.New("sshspa: bad signature")
	// ErrFromRefused: the key's from= does not match the source (or the
	// sealed address).
	ErrFromRefused = errors.New("sshspa: refused by the key's from= option")
	// ErrKeyExpired: the key's expiry-time has passed.
	ErrKeyExpired = errors.New("sshspa: key past its expiry-time")
)

// suite is the HPKE ciphersuite; the KEM comes with the keys.
var (
	kdf  = hpke.HKDFSHA256()
	aead = hpke.ChaCha20Poly1305()
)

// Request is what an authentic, fresh datagram signed by a trusted key
// asks for.
type Request struct {
	// Time is when the client sealed it.
	Time time.Time
	// ID is the random request id, the replay cache's key.
	ID [16]byte
	// Requested is the address sealed: the client's own, or another it
	// asks to open for; invalid when none was (behind NAT).
	Requested netip.Addr
	// Key is the authorized_keys line that let it in: its comment and
	// fingerprint name who knocked.
	Key *authkeys.Key
	// KeyHash is the fingerprint's bytes of the key the datagram names.
	KeyHash [32]byte
}

// OpenFor is the address the request opens its door for, given the
// datagram's source: see spa.OpenFor (spa.ErrRequestedRefused when the
// sealed address is another and the door does not allow that).
func (r *Request) OpenFor(src netip.Addr, allowRequested bool) (netip.Addr, error) {
	return spa.OpenFor(r.Requested, src, allowRequested)
}

// keyHash is the SHA-256 of a key's wire form: the fingerprint's bytes.
func keyHash(k ssh.PublicKey) [32]byte { return sha256.Sum256(k.Marshal()) }

// signatureFormats are the signature algorithms accepted for each key
// type: never ssh-rsa's SHA-1.
var signatureFormats = map[string][]string{
	ssh.KeyAlgoED25519:  {ssh.KeyAlgoED25519},
	ssh.KeyAlgoECDSA256: {ssh.KeyAlgoECDSA256},
	ssh.KeyAlgoECDSA384: {ssh.KeyAlgoECDSA384},
	ssh.KeyAlgoECDSA521: {ssh.KeyAlgoECDSA521},
	ssh.KeyAlgoRSA:      {ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256},
}

// signedData is what the SSH key signs: SSHSIG framing around the SHA-512
// of server key ‖ header ‖ fields.
func signedData(server []byte, header, fields []byte) []byte {
	h := sha512.New()
	h.Write(server)
	h.Write(header)
	h.Write(fields)
	digest := h.Sum(nil)
	b := make([]byte, 0, 6+4+len(sigNamespace)+4+4+6+4+len(digest))
	b = append(b, "SSHSIG"...)
	b = appendString(b, []byte(sigNamespace))
	b = appendString(b, nil)
	b = appendString(b, []byte("sha512"))
	b = appendString(b, digest)
	return b
}

func appendString(b, s []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// Seal returns a datagram for door, sealed to server at now and signed by
// signer, naming requested (the address the client sends from, another to
// open for, or the zero Addr for none). An RSA key signs with
// rsa-sha2-512; a signer that cannot is an error.
func Seal(server *ServerPublicKey, signer ssh.Signer, door string, requested netip.Addr, now time.Time) ([]byte, error) {
	if door == "" || len(door) > maxDoorLen {
		return nil, fmt.Errorf("sshspa: door name must be 1-%d bytes", maxDoorLen)
	}
	pub := signer.PublicKey()
	formats, ok := signatureFormats[pub.Type()]
	if !ok {
		return nil, fmt.Errorf("sshspa: cannot knock with a %s key (ssh-ed25519, ecdsa-sha2-nistp256/384/521 and ssh-rsa can)", pub.Type())
	}
	var plain [plainSize]byte
	fields := plain[:fieldsSize]
	binary.BigEndian.PutUint64(fields[0:8], uint64(now.UnixNano()))
	if _, err := rand.Read(fields[8:24]); err != nil {
		return nil, err
	}
	fields[24] = byte(len(door))
	copy(fields[25:57], door)
	if requested.IsValid() {
		a := requested.Unmap().WithZone("")
		s := a.AsSlice()
		fields[57] = byte(len(s))
		copy(fields[58:74], s)
	}
	h := keyHash(pub)
	copy(fields[74:106], h[:])

	enc, sender, err := hpkeSender(server)
	if err != nil {
		return nil, fmt.Errorf("sshspa: seal to the server key: %w", err)
	}
	header := make([]byte, 0, Size)
	header = append(header, magic...)
	header = append(header, Version)
	header = append(header, enc...)
	if len(header) != headerSize {
		return nil, fmt.Errorf("sshspa: encapsulated key of %d bytes", len(enc))
	}
	msg := signedData(server.x25519, header, fields)
	var sig *ssh.Signature
	if pub.Type() == ssh.KeyAlgoRSA {
		as, ok := signer.(ssh.AlgorithmSigner)
		if !ok {
			return nil, errors.New("sshspa: this RSA signer cannot sign with rsa-sha2-512")
		}
		sig, err = as.SignWithAlgorithm(rand.Reader, msg, ssh.KeyAlgoRSASHA512)
	} else {
		sig, err = signer.Sign(rand.Reader, msg)
	}
	if err != nil {
		return nil, fmt.Errorf("sshspa: sign with %s: %w", ssh.FingerprintSHA256(pub), err)
	}
	if !contains(formats, sig.Format) {
		return nil, fmt.Errorf("sshspa: the key signed with %s, which the server refuses (it takes %v)", sig.Format, formats)
	}
	sb := ssh.Marshal(sig)
	if len(sb) > MaxSignatureSize {
		return nil, fmt.Errorf("sshspa: a %d-byte signature does not fit in a knock (RSA keys over 4096 bits cannot knock)", len(sb))
	}
	binary.BigEndian.PutUint16(plain[106:108], uint16(len(sb)))
	copy(plain[108:], sb)
	out, err := sender.Seal(header, plain[:])
	if err != nil {
		return nil, fmt.Errorf("sshspa: seal: %w", err)
	}
	return append(header, out...), nil
}

// hpkeSender and hpkeRecipient set up the seal of one datagram; d is a
// whole datagram, at least headerSize long.
func hpkeSender(server *ServerPublicKey) ([]byte, *hpke.Sender, error) {
	return hpke.NewSender(server.hpke, kdf, aead, []byte(hpkeInfo))
}

func hpkeRecipient(k *ServerKey, d []byte) (*hpke.Recipient, error) {
	return hpke.NewRecipient(d[3:headerSize], k.hpke, kdf, aead, []byte(hpkeInfo))
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Open authenticates datagram, from src, as a request for door at now:
// sealed to k, no more than maxAge away from now either way, and signed
// by a key keys trusts from src. It does not consult a replay cache: that
// is the caller's next step (spa.Replay.CheckID with Request.ID and
// Request.Time).
//
// With ErrUnknownKey, ErrSignatureAlgorithm and ErrBadSignature the
// Request holds KeyHash alone: the key the datagram claims, which anyone
// with the server's public key can claim. With ErrFromRefused and
// ErrKeyExpired it holds Key too: the line that refused a key that did
// sign.
//
// The datagram is hostile input: Open reads nothing outside it and does
// not change it; see the package doc for the order of its checks.
func Open(k *ServerKey, door string, keys *authkeys.Set, datagram []byte, src netip.Addr, now time.Time, maxAge time.Duration) (Request, error) {
	switch {
	case len(datagram) < Size:
		return Request{}, ErrTruncated
	case len(datagram) > Size:
		return Request{}, ErrOversized
	case string(datagram[:2]) != magic || datagram[2] != Version:
		return Request{}, ErrVersion
	}
	header := datagram[:headerSize]
	rcpt, err := hpkeRecipient(k, datagram)
	if err != nil {
		return Request{}, ErrSeal // an encapsulated key X25519 refuses
	}
	plain, err := rcpt.Open(header, datagram[headerSize:])
	if err != nil || len(plain) != plainSize {
		return Request{}, ErrSeal
	}
	fields := plain[:fieldsSize]

	var r Request
	ts := int64(binary.BigEndian.Uint64(fields[0:8]))
	r.Time = time.Unix(0, ts)
	copy(r.ID[:], fields[8:24])
	n := int(fields[24])
	if n == 0 || n > maxDoorLen || !allZero(fields[25+n:57]) {
		return Request{}, ErrMalformed
	}
	switch fields[57] {
	case 0:
		if !allZero(fields[58:74]) {
			return Request{}, ErrMalformed
		}
	case 4:
		if !allZero(fields[62:74]) {
			return Request{}, ErrMalformed
		}
		r.Requested = netip.AddrFrom4([4]byte(fields[58:62]))
	case 16:
		r.Requested = netip.AddrFrom16([16]byte(fields[58:74])).Unmap()
	default:
		return Request{}, ErrMalformed
	}
	sigLen := int(binary.BigEndian.Uint16(plain[106:108]))
	if sigLen == 0 || sigLen > MaxSignatureSize || !allZero(plain[108+sigLen:]) {
		return Request{}, ErrMalformed
	}
	// now is a real clock, far from int64's ends: no overflow.
	if t := now.UnixNano(); ts < t-int64(maxAge) || ts > t+int64(maxAge) {
		return Request{}, ErrStale
	}
	if string(fields[25:25+n]) != door {
		return Request{}, ErrWrongDoor
	}
	r.KeyHash = [32]byte(fields[74:106])
	claimed := Request{KeyHash: r.KeyHash}
	lines := keys.Lookup(r.KeyHash)
	if len(lines) == 0 {
		return claimed, ErrUnknownKey
	}
	var sig ssh.Signature
	if err := ssh.Unmarshal(plain[108:108+sigLen], &sig); err != nil || len(sig.Rest) != 0 {
		return claimed, ErrBadSignature
	}
	pub := lines[0].PublicKey // every line under one hash holds the same key
	if !contains(signatureFormats[pub.Type()], sig.Format) {
		return claimed, ErrSignatureAlgorithm
	}
	if err := pub.Verify(signedData(k.public.x25519, header, fields), &sig); err != nil {
		return claimed, ErrBadSignature
	}
	// As sshd does with a key listed twice, any line may let it in.
	reason, refusing := ErrFromRefused, lines[0]
	for _, line := range lines {
		switch {
		case !line.PermitsAddr(src), r.Requested.IsValid() && r.Requested != src.Unmap() && !line.PermitsAddr(r.Requested):
			continue
		case line.Expired(now):
			reason, refusing = ErrKeyExpired, line
			continue
		}
		r.Key = line
		return r, nil
	}
	claimed.Key = refusing
	return claimed, reason
}

func allZero(b []byte) bool { return len(bytes.Trim(b, "\x00")) == 0 }

// ed25519Key returns the ed25519 key an ssh public key holds.
func ed25519Key(pub ssh.PublicKey) (ed25519.PublicKey, bool) {
	ck, ok := pub.(ssh.CryptoPublicKey)
	if !ok {
		return nil, false
	}
	k, ok := ck.CryptoPublicKey().(ed25519.PublicKey)
	return k, ok
}

// x25519 is the curve of the server keys.
var x25519 = ecdh.X25519()
