// Package spa is nftknock's single-packet authorization format: one UDP
// datagram, sealed with AES-256-GCM under a key derived from the door's
// key, that asks a door to open.
//
// Every datagram is exactly Size bytes:
//
//	off  len  field
//	  0    2  magic "NK"
//	  2    1  version, 1
//	  3   12  GCM nonce, random
//	 15   74  sealed payload (below), encrypted
//	 89   16  GCM tag
//
// The header (bytes 0-14) is the AEAD's additional data. The payload is:
//
//	off  len  field
//	  0    8  timestamp, Unix nanoseconds, big-endian int64
//	  8   16  request id, random: the replay cache's key
//	 24    1  requested address length: 0 (none), 4 or 16
//	 25   16  requested address, zero-padded
//	 41    1  door name length, 1-32
//	 42   32  door name, zero-padded
//
// The fixed size tells a listener nothing, not even the door's name length
// or whether an address was requested.
package spa

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
)

// Sizes of the format.
const (
	KeySize    = 32 // a door key: 32 random bytes
	headerSize = 15
	nonceSize  = 12
	tagSize    = 16
	plainSize  = 74
	maxDoorLen = 32
	// Size is the length of every datagram.
	Size = headerSize + plainSize + tagSize
	// Version is the format version this package writes and reads.
	Version = 1
)

const magic = "NK"

// hkdfInfo separates the SPA key from anything else a door key may be used
// for later (rotating sequences), so one never weakens the other.
const hkdfInfo = "nftknock spa v1 aes-256-gcm"

// Errors Open and the replay cache return: values, never wrapped, so the
// packet path does not allocate. Each is a distinct log reason.
var (
	ErrTruncated = errors.New("spa: truncated datagram")
	ErrOversized = errors.New("spa: oversized datagram")
	ErrVersion   = errors.New("spa: not an nftknock SPA datagram of a known version")
	ErrAuth      = errors.New("spa: not authentic (wrong key or changed byte)")
	ErrMalformed = errors.New("spa: malformed payload")
	ErrStale     = errors.New("spa: timestamp outside the allowed age")
	ErrWrongDoor = errors.New("spa: sealed for another door")
	ErrReplay    = errors.New("spa: replayed request")
	// ErrBeforeStart: sealed before the replay cache began (a restart),
	// so a replay cannot be ruled out.
	ErrBeforeStart = errors.New("spa: sealed before the daemon started")
	ErrBusy        = errors.New("spa: replay cache full")
	// ErrRequestedRefused: the request names an address other than its
	// datagram's source, and the door does not allow that.
	ErrRequestedRefused = errors.New("spa: requested address is not the source, and the door does not allow requested addresses")
)

// Key is a door's SPA key, ready to seal and open. It is safe for
// concurrent use.
type Key struct {
	aead cipher.AEAD
}

// NewKey derives the SPA key from a door's 32-byte key with HKDF-SHA256.
func NewKey(raw []byte) (*Key, error) {
	if len(raw) != KeySize {
		return nil, fmt.Errorf("spa: key is %d bytes, want %d", len(raw), KeySize)
	}
	k, err := hkdf.Key(sha256.New, raw, nil, hkdfInfo, 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Key{aead: aead}, nil
}

// ParseKey reads a key file's contents: the base64 of 32 bytes, surrounding
// white space allowed.
func ParseKey(text []byte) ([]byte, error) {
	s := strings.TrimSpace(string(text))
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, errors.New("not base64: a key file holds the base64 of 32 random bytes (nftknock keygen makes one)")
	}
	if len(raw) != KeySize {
		return nil, fmt.Errorf("holds %d bytes, want %d (nftknock keygen makes a key)", len(raw), KeySize)
	}
	return raw, nil
}

// ReadKeyFile reads and parses a key file, refusing one that is not a
// regular file or that its group or others can read: a key must stay
// secret. Both the daemon (for a door's key_file) and the client use it.
func ReadKeyFile(path string) ([]byte, error) {
	data, err := ReadSecretFile(path)
	if err != nil {
		return nil, err
	}
	raw, err := ParseKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return raw, nil
}

// ReadSecretFile reads the first 1 KiB of a file that holds a key,
// refusing one that is not a regular file or that its group or others can
// read. The caller parses what it returns (ReadKeyFile here; the fwknop
// doors' key files too).
func ReadSecretFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Stat the open file, not the path, so the checks and the read are
	// about the same file.
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o044 != 0 {
		return nil, fmt.Errorf("%s: readable by group or others (mode %04o): a key must stay secret. Fix: chmod 600 %s", path, perm, path)
	}
	return io.ReadAll(io.LimitReader(f, maxKeyFile))
}

// maxKeyFile bounds what is read of a key file: base64 of 32 bytes and a
// newline need 45; an fwknop HMAC key of 128 bytes, 173.
const maxKeyFile = 1024

// GenerateKey returns a new key file's contents: base64 of 32 random
// bytes and a newline.
func GenerateKey() string {
	raw := make([]byte, KeySize)
	if _, err := rand.Read(raw); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return base64.StdEncoding.EncodeToString(raw) + "\n"
}

// Request is what an authentic datagram asks for.
type Request struct {
	// Time is when the client sealed it.
	Time time.Time
	// ID is the random request id, the replay cache's key.
	ID [16]byte
	// Requested is the address the client sealed: the one it sends from,
	// or with -allow another; invalid when it sealed none (behind NAT,
	// where it cannot know the address the server sees).
	Requested netip.Addr
}

// OpenFor is the address an authentic request opens its door for, given
// the datagram's source src: the source when no address was sealed or the
// sealed one equals it, the sealed address when the door allows requested
// addresses (allowRequested), and ErrRequestedRefused otherwise.
//
// A client seals the address it sends from so that someone on the path who
// holds its datagram back and sends it first from an address of their own
// gets nothing: the sealed address no longer equals the source.
func (r *Request) OpenFor(src netip.Addr, allowRequested bool) (netip.Addr, error) {
	return OpenFor(r.Requested, src, allowRequested)
}

// OpenFor is Request.OpenFor for a sealed address of any format: the
// public-key SPA format (knock/sshspa) shares the rule.
func OpenFor(requested, src netip.Addr, allowRequested bool) (netip.Addr, error) {
	src = src.Unmap()
	switch requested = requested.Unmap(); {
	case !requested.IsValid(), requested == src:
		return src, nil
	case allowRequested:
		return requested, nil
	}
	return netip.Addr{}, ErrRequestedRefused
}

// Seal returns a datagram for door sealed at now, naming requested: the
// address the client sends from, another one (which the door must allow),
// or the zero Addr for none (the datagram's source, whatever it is).
func Seal(k *Key, door string, requested netip.Addr, now time.Time) ([]byte, error) {
	if door == "" || len(door) > maxDoorLen {
		return nil, fmt.Errorf("spa: door name must be 1-%d bytes", maxDoorLen)
	}
	var plain [plainSize]byte
	binary.BigEndian.PutUint64(plain[0:8], uint64(now.UnixNano()))
	if _, err := rand.Read(plain[8:24]); err != nil {
		return nil, err
	}
	if requested.IsValid() {
		a := requested.Unmap()
		if a.Zone() != "" {
			return nil, errors.New("spa: a requested address has no zone")
		}
		s := a.AsSlice()
		plain[24] = byte(len(s))
		copy(plain[25:41], s)
	}
	plain[41] = byte(len(door))
	copy(plain[42:], door)

	out := make([]byte, headerSize, Size)
	copy(out, magic)
	out[2] = Version
	if _, err := rand.Read(out[3:headerSize]); err != nil {
		return nil, err
	}
	return k.aead.Seal(out, out[3:headerSize], plain[:], out[:headerSize]), nil
}

// scratch holds decrypted payloads: a pool, so that Open allocates nothing
// in the steady state and stays safe for concurrent use.
var scratch = sync.Pool{New: func() any { return new([Size]byte) }}

// Open authenticates datagram as a request for door at now, and checks its
// timestamp is within maxAge of now, either way. It does not consult a
// replay cache: that is the caller's next step (Replay.Check).
//
// The datagram is hostile input: Open reads nothing outside it, does not
// change it, allocates nothing, and compares the tag in constant time (the
// AEAD does).
func Open(k *Key, door string, datagram []byte, now time.Time, maxAge time.Duration) (Request, error) {
	switch {
	case len(datagram) < Size:
		return Request{}, ErrTruncated
	case len(datagram) > Size:
		return Request{}, ErrOversized
	case string(datagram[:2]) != magic || datagram[2] != Version:
		return Request{}, ErrVersion
	}
	buf := scratch.Get().(*[Size]byte)
	defer scratch.Put(buf)
	plain, err := k.aead.Open(buf[:0], datagram[3:headerSize], datagram[headerSize:], datagram[:headerSize])
	if err != nil || len(plain) != plainSize {
		return Request{}, ErrAuth
	}
	var r Request
	ts := int64(binary.BigEndian.Uint64(plain[0:8]))
	r.Time = time.Unix(0, ts)
	// now is a real clock, far from int64's ends: no overflow.
	if n := now.UnixNano(); ts < n-int64(maxAge) || ts > n+int64(maxAge) {
		return Request{}, ErrStale
	}
	copy(r.ID[:], plain[8:24])
	switch n := plain[24]; n {
	case 0:
	case 4:
		r.Requested = netip.AddrFrom4([4]byte(plain[25:29]))
	case 16:
		r.Requested = netip.AddrFrom16([16]byte(plain[25:41])).Unmap()
	default:
		return Request{}, ErrMalformed
	}
	n := int(plain[41])
	if n == 0 || n > maxDoorLen {
		return Request{}, ErrMalformed
	}
	if string(plain[42:42+n]) != door || !allZero(plain[42+n:]) {
		return Request{}, ErrWrongDoor
	}
	return r, nil
}

func allZero(b []byte) bool { return len(bytes.Trim(b, "\x00")) == 0 }
