// Package fwknop reads the single-packet authorization (SPA) payloads that
// stock fwknop clients send (Debian's fwknop-client 2.6.10, libfko 3.0.0
// and its ports), so that their users can switch servers without touching
// a client. It decodes and verifies; it never builds packets.
//
// # The format
//
// Implemented from fwknop's documentation (fwknop(8), fwknopd(8), the
// libfko manual's "SPA Data Format") and checked against packets the stock
// client made (testdata/golden). A payload is base64 text, at most 1500
// bytes:
//
//	wire     = enc[10:] || mac
//	enc      = base64("Salted__" || salt(8) || AES-256-CBC(key, iv, plain || PKCS#7)), '=' stripped
//	mac      = base64(HMAC-SHA256(hmac_key, enc)), '=' stripped: 43 characters
//	key, iv  = EVP_BytesToKey(MD5, 1 round, pass = the KEY_BASE64-decoded bytes, salt): 32 + 16 bytes
//	plain    = fields || ":" || base64(SHA-256(fields)), '=' stripped
//	fields   = rand(16 digits) ":" base64(user) ":" unix seconds ":" "3.0.0" ":" type ":"
//	           base64(message) [":" base64(nat_access)] [":" base64(server_auth)] [":" client timeout]
//	message  = allow_ip "," proto "/" port ["," proto "/" port ...]     (type 1 and 3)
//
// enc always begins with "U2FsdGVkX1" (base64 of "Salted__"), so the
// client leaves those 10 characters off and the server puts them back.
// Open checks, in this order, and stops at the first failure:
//
//  1. the length (76 to 1500 bytes), that the payload does not begin with
//     "U2FsdGVkX1" (fwknopd's guard against a captured packet re-sent with
//     the prefix put back, which the replay cache would not recognise) nor
//     with GnuPG's "hQ", and that it is base64 text;
//  2. the HMAC, over "U2FsdGVkX1" + the rest, compared in constant time:
//     nothing is decrypted before it matches, so a packet made without
//     the HMAC key costs one HMAC;
//  3. the OpenSSL "Salted__" header, whole AES blocks, the PKCS#7 padding;
//  4. the plaintext: printable ASCII, the SHA-256 digest of the fields,
//     then each field; the timestamp within maxAge of now, either way;
//  5. the message type: access (1) and access with a client timeout (3)
//     are accepted.
//
// # What differs from fwknop, and what is refused
//
//   - Only Rijndael (AES-256-CBC) with an HMAC-SHA256 key: GnuPG payloads,
//     payloads without an HMAC, and other HMAC types (the client's
//     --hmac-digest-type) are refused; so are digest types other than
//     SHA-256 (the client's -m/--digest-type), with a reason of their own.
//     fwknopd's "legacy" encryption mode (clients before 2.5) is not
//     implemented.
//   - Command messages (type 0, the client's --server-cmd) are refused
//     always: nftknock never runs a command a packet names.
//   - NAT messages (types 2, 4, 5, 6: -N, --nat-local) are refused for now.
//   - A server_auth field is refused: it asks the server to check a
//     password nftknock does not keep.
//   - The allow address must be IPv4, as the stock client sends (it refuses
//     IPv6); the packet itself may arrive over either family.
//   - Protocols other than tcp and udp in the access message are refused.
//
// What a request may open, and for whom, is the door's business, not this
// package's: Open reports what was asked (Request) and the caller checks it
// against the door (allowed ports, a required source address, source
// networks, a cap on the client timeout) and against a replay cache keyed
// by Request.Digest.
//
// Every rejection is a distinct error value, never wrapped, so that the log
// can name the reason and refusing a packet made without the HMAC key
// allocates nothing.
package fwknop

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Limits of the format.
const (
	// MaxPayload is fwknop's largest SPA packet (its MAX_SPA_PACKET_LEN).
	MaxPayload = 1500
	// MinPayload is the shortest payload that can hold the HMAC, the
	// OpenSSL header and one AES block.
	MinPayload = blobMinB64 - len(saltedPrefix) + macLen
	// MaxEncKey is the longest encryption key libfko accepts
	// (RIJNDAEL_MAX_KEYSIZE); fwknop --key-gen makes 32 random bytes.
	MaxEncKey = 32
	// MaxHMACKey bounds an HMAC key: fwknopd --key-gen makes at most 128
	// bytes (64 by default).
	MaxHMACKey = 128
	// Version is the only protocol version accepted: libfko's
	// FKO_PROTOCOL_VERSION, which every 2.5+ client sends.
	Version = "3.0.0"
)

const (
	// saltedPrefix is base64("Salted__")'s first 10 characters, which the
	// client leaves off the wire.
	saltedPrefix = "U2FsdGVkX1"
	gpgPrefix    = "hQ"
	macLen       = 43 // base64 of a 32-byte HMAC-SHA256, '=' stripped
	digestLen    = 43 // base64 of a SHA-256 digest, '=' stripped
	saltLen      = 8
	headerLen    = len("Salted__") + saltLen
	// blobMinB64 is the base64 length of the header and one AES block.
	blobMinB64 = (8*(headerLen+aes.BlockSize) + 5) / 6
	maxText    = MaxPayload - macLen + len(saltedPrefix)
	maxBlob    = maxText * 6 / 8
	randLen    = 16
	maxUser    = 64
)

// Errors Open returns: values, never wrapped, each a distinct log reason.
var (
	ErrTooShort   = errors.New("fwknop: too short for an SPA packet")
	ErrTooLong    = errors.New("fwknop: longer than fwknop's 1500-byte maximum")
	ErrReprefixed = errors.New("fwknop: begins with U2FsdGVkX1: a captured packet re-sent with its prefix put back")
	ErrGPG        = errors.New("fwknop: GnuPG-encrypted packet: only Rijndael keys with HMAC are supported")
	ErrNotFwknop  = errors.New("fwknop: not an fwknop packet (not base64 text)")
	ErrHMAC       = errors.New("fwknop: HMAC mismatch (wrong HMAC key, or a changed byte)")
	ErrCiphertext = errors.New("fwknop: bad ciphertext (not OpenSSL Salted__ format or not whole AES blocks)")
	ErrPadding    = errors.New("fwknop: bad padding after decryption (the HMAC key matched but the encryption key did not)")
	ErrMalformed  = errors.New("fwknop: malformed SPA fields")
	ErrDigestType = errors.New("fwknop: digest type other than SHA-256 (the client's -m/--digest-type)")
	ErrDigest     = errors.New("fwknop: SPA digest mismatch")
	ErrVersion    = errors.New("fwknop: protocol version other than 3.0.0")
	ErrStale      = errors.New("fwknop: timestamp outside the allowed age (client clock, or --time-offset)")
	ErrCommand    = errors.New("fwknop: command message (--server-cmd): never run")
	ErrNAT        = errors.New("fwknop: NAT access message (-N, --nat-local): not supported")
	ErrServerAuth = errors.New("fwknop: server_auth field: not supported")
)

// MessageType is the SPA message type field.
type MessageType uint8

// The message types libfko defines.
const (
	TypeCommand                     MessageType = 0
	TypeAccess                      MessageType = 1
	TypeNATAccess                   MessageType = 2
	TypeClientTimeoutAccess         MessageType = 3
	TypeClientTimeoutNATAccess      MessageType = 4
	TypeLocalNATAccess              MessageType = 5
	TypeClientTimeoutLocalNATAccess MessageType = 6
)

func (t MessageType) String() string {
	switch t {
	case TypeCommand:
		return "command"
	case TypeAccess:
		return "access"
	case TypeNATAccess:
		return "nat access"
	case TypeClientTimeoutAccess:
		return "access with client timeout"
	case TypeClientTimeoutNATAccess:
		return "nat access with client timeout"
	case TypeLocalNATAccess:
		return "local nat access"
	case TypeClientTimeoutLocalNATAccess:
		return "local nat access with client timeout"
	}
	return "type " + strconv.Itoa(int(t))
}

// Proto is an IP protocol number: TCP or UDP.
type Proto uint8

// The protocols an access request may name.
const (
	TCP Proto = 6
	UDP Proto = 17
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return "proto " + strconv.Itoa(int(p))
}

// Access is one proto/port of an access request.
type Access struct {
	Proto Proto
	Port  uint16
}

// String writes it as the fwknop client does: "tcp/22".
func (a Access) String() string { return a.Proto.String() + "/" + strconv.Itoa(int(a.Port)) }

// Request is what an authentic, fresh access packet asks for.
type Request struct {
	// User is the client's user name (its login, or -U/--spoof-user):
	// the client says so; nothing proves it.
	User string
	// Time is the client's timestamp, whole seconds.
	Time time.Time
	// Type is TypeAccess or TypeClientTimeoutAccess.
	Type MessageType
	// Allow is the IPv4 address the client asks to open for (-a); the
	// zero Addr (invalid) when it sent 0.0.0.0 (-s): open for the packet's
	// source.
	Allow netip.Addr
	// Access lists the requested ports in the packet's order (-A), at
	// least one.
	Access []Access
	// ClientTimeout is how long the client asks the ports to stay open
	// (-f, type 3 only); 0 otherwise.
	ClientTimeout time.Duration
	// Digest is the SHA-256 of the payload as received: the replay
	// cache's key. The HMAC binds every byte, so no two payloads of one
	// authentic packet exist.
	Digest [32]byte
}

// Key is a door's pair of fwknop keys, ready to open packets. It is safe
// for concurrent use.
type Key struct {
	enc []byte
	// macs holds HMAC states keyed with the HMAC key, reused: an HMAC
	// check is the only work an unauthentic packet costs, and allocating
	// for it would make a flood cost the garbage collector too.
	macs sync.Pool
}

// NewKey makes a Key from the decoded bytes of a stanza's KEY_BASE64 (or a
// KEY passphrase's bytes) and HMAC_KEY_BASE64 (or HMAC_KEY's bytes).
func NewKey(encKey, hmacKey []byte) (*Key, error) {
	switch {
	case len(encKey) == 0 || len(encKey) > MaxEncKey:
		return nil, fmt.Errorf("fwknop: encryption key is %d bytes, want 1-%d (fwknop --key-gen makes 32)", len(encKey), MaxEncKey)
	case len(hmacKey) == 0 || len(hmacKey) > MaxHMACKey:
		return nil, fmt.Errorf("fwknop: HMAC key is %d bytes, want 1-%d (fwknop --key-gen makes 64)", len(hmacKey), MaxHMACKey)
	}
	k := &Key{enc: append([]byte(nil), encKey...)}
	mk := append([]byte(nil), hmacKey...)
	k.macs.New = func() any { return hmac.New(sha256.New, mk) }
	return k, nil
}

// scratch is Open's working memory, pooled so that refusing a packet
// allocates nothing and Open stays safe for concurrent use.
type scratch struct {
	text [maxText]byte // "U2FsdGVkX1" + the payload without its HMAC
	blob [maxBlob]byte // text decoded, then decrypted in place
	mac  [sha256.Size]byte
	tag  [macLen]byte
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// Match runs the checks that do not depend on a key once, then tries each
// key's HMAC in turn, and returns the index of the first key that
// authenticates payload. It decrypts nothing: a door sharing its port with
// others finds its packet at the cost of one HMAC per key. Its errors are
// Open's first ones (length, prefix, alphabet) and ErrHMAC when no key
// matches. The caller then opens the packet with Open and the matched
// door's key and age (one more HMAC, for authentic packets only). Doors
// that share one HMAC key cannot be told apart by it: a caller that wants
// fwknopd's "try the next stanza" looks on with Match(keys[i+1:], …) when
// door i refuses the request.
func Match(keys []*Key, payload []byte) (int, error) {
	if err := precheck(payload); err != nil {
		return -1, err
	}
	s := scratchPool.Get().(*scratch)
	defer scratchPool.Put(s)
	for i, k := range keys {
		if k.authentic(s, payload) {
			return i, nil
		}
	}
	return -1, ErrHMAC
}

// precheck refuses what no key could authenticate, cheaply.
func precheck(p []byte) error {
	switch {
	case len(p) < MinPayload:
		return ErrTooShort
	case len(p) > MaxPayload:
		return ErrTooLong
	case string(p[:len(saltedPrefix)]) == saltedPrefix:
		return ErrReprefixed
	case string(p[:len(gpgPrefix)]) == gpgPrefix:
		// A Rijndael payload can never begin so: its first character
		// carries the last bits of "Salted__".
		return ErrGPG
	}
	for _, c := range p {
		if !isBase64(c) {
			return ErrNotFwknop
		}
	}
	return nil
}

func isBase64(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/'
}

// authentic reports whether payload's HMAC is k's, leaving the HMAC'd
// text ("U2FsdGVkX1" + the payload without its HMAC) in s.text.
func (k *Key) authentic(s *scratch, p []byte) bool {
	n := copy(s.text[:], saltedPrefix)
	n += copy(s.text[n:], p[:len(p)-macLen])
	h := k.macs.Get().(hash.Hash)
	h.Write(s.text[:n])
	sum := h.Sum(s.mac[:0])
	h.Reset()
	k.macs.Put(h)
	base64.RawStdEncoding.Encode(s.tag[:], sum)
	// The HMAC is compared as the text it is sent as: a second spelling
	// of the same bytes (other trailing bits) does not pass, so a
	// payload has one form and the replay digest one value.
	return hmac.Equal(s.tag[:], p[len(p)-macLen:])
}

// Open verifies payload with k and returns what it asks, if its timestamp
// is within maxAge of now either way. The checks run in the order the
// package documentation gives. It does not consult a replay cache: that is
// the caller's next step, keyed by Request.Digest.
//
// An authentic packet refused for its age (ErrStale), its type
// (ErrCommand, ErrNAT) or a server_auth field (ErrServerAuth) comes with
// what was read of it before (User, Time; Type but for ErrStale), for the
// log: it asks for nothing, and nothing must be opened for it. On every
// other error the Request is zero.
//
// The payload is hostile input: Open reads nothing outside it, does not
// change it, allocates nothing to refuse it before the plaintext, and
// compares the HMAC in constant time.
func Open(k *Key, payload []byte, now time.Time, maxAge time.Duration) (Request, error) {
	if err := precheck(payload); err != nil {
		return Request{}, err
	}
	s := scratchPool.Get().(*scratch)
	defer scratchPool.Put(s)
	if !k.authentic(s, payload) {
		return Request{}, ErrHMAC
	}
	plain, err := k.decrypt(s, len(saltedPrefix)+len(payload)-macLen)
	if err != nil {
		return Request{}, err
	}
	r, err := parsePlain(plain, now, maxAge)
	if err != nil {
		return r, err
	}
	r.Digest = sha256.Sum256(payload)
	return r, nil
}

// decrypt decodes s.text[:n] and decrypts it in s.blob, returning the
// plaintext without its padding.
func (k *Key) decrypt(s *scratch, n int) ([]byte, error) {
	m, err := base64.RawStdEncoding.Decode(s.blob[:], s.text[:n])
	if err != nil || m < headerLen+aes.BlockSize || (m-headerLen)%aes.BlockSize != 0 ||
		string(s.blob[:8]) != "Salted__" {
		return nil, ErrCiphertext
	}
	keyIV := bytesToKey(k.enc, s.blob[8:headerLen])
	block, err := aes.NewCipher(keyIV[:32])
	if err != nil {
		return nil, ErrCiphertext // cannot happen: the key is 32 bytes
	}
	ct := s.blob[headerLen:m]
	cipher.NewCBCDecrypter(block, keyIV[32:]).CryptBlocks(ct, ct)
	pad := int(ct[len(ct)-1])
	if pad == 0 || pad > aes.BlockSize {
		return nil, ErrPadding
	}
	for _, b := range ct[len(ct)-pad:] {
		if int(b) != pad {
			return nil, ErrPadding
		}
	}
	return ct[:len(ct)-pad], nil
}

// bytesToKey is OpenSSL's EVP_BytesToKey with MD5 and one round, as libfko
// derives the AES-256 key and the CBC IV: D1 = MD5(pass || salt),
// Di = MD5(Di-1 || pass || salt), key || iv = D1 || D2 || D3.
func bytesToKey(pass, salt []byte) [48]byte {
	var out [48]byte
	var buf [md5.Size + MaxEncKey + saltLen]byte
	var prev []byte
	for i := 0; i < 3; i++ {
		n := copy(buf[:], prev)
		n += copy(buf[n:], pass)
		n += copy(buf[n:], salt)
		d := md5.Sum(buf[:n])
		copy(out[i*md5.Size:], d[:])
		prev = out[i*md5.Size : (i+1)*md5.Size]
	}
	return out
}

// parsePlain checks the decrypted fields.
func parsePlain(plain []byte, now time.Time, maxAge time.Duration) (Request, error) {
	for _, c := range plain {
		if c < 0x20 || c > 0x7e {
			return Request{}, ErrMalformed
		}
	}
	cut := bytes.LastIndexByte(plain, ':')
	if cut < 0 {
		return Request{}, ErrMalformed
	}
	fields, digest := plain[:cut], plain[cut+1:]
	switch len(digest) {
	case digestLen:
	case 22, 27, 64, 86: // MD5, SHA-1, SHA-384, SHA-512 (and SHA3-512)
		return Request{}, ErrDigestType
	default:
		return Request{}, ErrMalformed
	}
	sum := sha256.Sum256(fields)
	var want [digestLen]byte
	base64.RawStdEncoding.Encode(want[:], sum[:])
	if subtle.ConstantTimeCompare(want[:], digest) != 1 {
		return Request{}, ErrDigest
	}

	// rand:user:time:version:type:message[:nat][:server_auth][:timeout]
	var f [9]string
	nf := 0
	for rest := string(fields); ; nf++ {
		if nf == len(f) {
			return Request{}, ErrMalformed
		}
		v, tail, more := strings.Cut(rest, ":")
		f[nf] = v
		if !more {
			nf++
			break
		}
		rest = tail
	}
	if nf < 6 {
		return Request{}, ErrMalformed
	}
	var r Request
	if len(f[0]) != randLen || !allDigits(f[0]) {
		return Request{}, ErrMalformed
	}
	user, ok := decodeUser(f[1])
	if !ok {
		return Request{}, ErrMalformed
	}
	ts, ok := parseDecimal(f[2], 1<<40)
	if !ok {
		return Request{}, ErrMalformed
	}
	if f[3] != Version {
		return Request{}, ErrVersion
	}
	typ, ok := parseDecimal(f[4], 255)
	if !ok {
		return Request{}, ErrMalformed
	}
	r.User = user
	r.Time = time.Unix(int64(ts), 0)
	if age := now.Sub(r.Time); age > maxAge || age < -maxAge {
		return r, ErrStale
	}
	r.Type = MessageType(typ)
	want6 := 6 // fields of an access message without server_auth
	switch r.Type {
	case TypeAccess:
	case TypeClientTimeoutAccess:
		want6++
	case TypeCommand:
		return r, ErrCommand
	case TypeNATAccess, TypeClientTimeoutNATAccess, TypeLocalNATAccess, TypeClientTimeoutLocalNATAccess:
		return r, ErrNAT
	default:
		return Request{}, ErrMalformed
	}
	switch nf {
	case want6:
	case want6 + 1:
		return r, ErrServerAuth
	default:
		return Request{}, ErrMalformed
	}
	if !parseAccess(&r, f[5]) {
		return Request{}, ErrMalformed
	}
	if r.Type == TypeClientTimeoutAccess {
		sec, ok := parseDecimal(f[6], 1<<31-1)
		if !ok || sec == 0 {
			return Request{}, ErrMalformed
		}
		r.ClientTimeout = time.Duration(sec) * time.Second
	}
	return r, nil
}

// decodeUser decodes the user field: base64 of 1-64 printable characters
// without the ones libfko refuses in a user name.
func decodeUser(b64 string) (string, bool) {
	var buf [maxUser + 3]byte
	if base64.RawStdEncoding.DecodedLen(len(b64)) > maxUser {
		return "", false
	}
	n, err := base64.RawStdEncoding.Decode(buf[:], []byte(b64))
	if err != nil || n == 0 {
		return "", false
	}
	u := buf[:n]
	for _, c := range u {
		if c < 0x20 || c > 0x7e || strings.IndexByte(`"/\[]:;|=,+*?<>`, c) >= 0 {
			return "", false
		}
	}
	return string(u), true
}

// parseAccess reads "allow_ip,proto/port[,proto/port...]".
func parseAccess(r *Request, b64 string) bool {
	msg, err := base64.RawStdEncoding.DecodeString(b64)
	if err != nil {
		return false
	}
	ip, list, ok := strings.Cut(string(msg), ",")
	if !ok {
		return false
	}
	a, err := netip.ParseAddr(ip)
	if err != nil || !a.Is4() {
		return false
	}
	if !a.IsUnspecified() {
		r.Allow = a
	}
	n := strings.Count(list, ",") + 1
	r.Access = make([]Access, 0, n)
	for item := range strings.SplitSeq(list, ",") {
		proto, port, ok := strings.Cut(item, "/")
		if !ok {
			return false
		}
		var acc Access
		switch {
		case strings.EqualFold(proto, "tcp"):
			acc.Proto = TCP
		case strings.EqualFold(proto, "udp"):
			acc.Proto = UDP
		default:
			return false
		}
		num, ok := parseDecimal(port, 65535)
		if !ok || num == 0 {
			return false
		}
		acc.Port = uint16(num)
		r.Access = append(r.Access, acc)
	}
	return true
}

// parseDecimal parses 1-12 ASCII digits (no sign, no space) up to max.
func parseDecimal(s string, max uint64) (uint64, bool) {
	if len(s) == 0 || len(s) > 12 || !allDigits(s) {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n > max {
		return 0, false
	}
	return n, true
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return len(s) > 0
}
