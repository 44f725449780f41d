package fwknop

import (
	"bytes"
	"crypto/sha256"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

// Test keys for packets the test encoder makes.
var (
	encA  = bytes.Repeat([]byte{0xa1}, 32)
	hmacA = bytes.Repeat([]byte{0xa2}, 64)
	encB  = bytes.Repeat([]byte{0xb1}, 32)
	hmacB = bytes.Repeat([]byte{0xb2}, 64)
	salt0 = []byte("saltsalt")
)

func newKey(t testing.TB, enc, mac []byte) *Key {
	t.Helper()
	k, err := NewKey(enc, mac)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// sealA seals f with door a's keys and a fixed salt.
func sealA(f spaFields) []byte {
	return sealPlain(encA, hmacA, salt0, []byte(withDigest(f.encode())))
}

// sealPlainA seals a plaintext as it is, digest and all.
func sealPlainA(plain string) []byte { return sealPlain(encA, hmacA, salt0, []byte(plain)) }

func TestOpenAccepts(t *testing.T) {
	k := newKey(t, encA, hmacA)
	timeout := accessFields(t0, "192.0.2.9,TCP/22,udp/53,tcp/65535")
	timeout.typ, timeout.timeout = 3, "3600"
	for _, c := range []struct {
		name    string
		f       spaFields
		allow   netip.Addr
		access  string
		timeout time.Duration
	}{
		{"access", accessFields(t0, "192.0.2.2,tcp/22"), netip.MustParseAddr("192.0.2.2"), "tcp/22", 0},
		{"source", accessFields(t0, "0.0.0.0,tcp/22"), netip.Addr{}, "tcp/22", 0},
		{"client timeout, several ports", timeout, netip.MustParseAddr("192.0.2.9"), "tcp/22,udp/53,tcp/65535", time.Hour},
	} {
		p := sealA(c.f)
		r, err := Open(k, p, t0, 2*time.Minute)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		var acc []string
		for _, a := range r.Access {
			acc = append(acc, a.String())
		}
		if r.User != "alice" || !r.Time.Equal(t0) || r.Type != MessageType(c.f.typ) || r.Allow != c.allow ||
			strings.Join(acc, ",") != c.access || r.ClientTimeout != c.timeout || r.Digest != sha256.Sum256(p) {
			t.Errorf("%s: %+v", c.name, r)
		}
	}
}

func TestOpenAgeWindow(t *testing.T) {
	k := newKey(t, encA, hmacA)
	p := sealA(accessFields(t0, "192.0.2.2,tcp/22"))
	for _, c := range []struct {
		now  time.Time
		want error
	}{
		{t0.Add(120 * time.Second), nil},
		{t0.Add(-120 * time.Second), nil},
		{t0.Add(121 * time.Second), ErrStale},
		{t0.Add(-121 * time.Second), ErrStale},
		{time.Unix(0, 0), ErrStale},
	} {
		if _, err := Open(k, p, c.now, 2*time.Minute); err != c.want {
			t.Errorf("now %v: %v, want %v", c.now.Sub(t0), err, c.want)
		}
	}
}

// TestOpenRefuses: every reason, each from a packet that passes all the
// checks before it.
func TestOpenRefuses(t *testing.T) {
	good := sealA(accessFields(t0, "192.0.2.2,tcp/22"))
	with := func(edit func(*spaFields)) []byte {
		f := accessFields(t0, "192.0.2.2,tcp/22")
		edit(&f)
		return sealA(f)
	}
	msg := func(m string) []byte { return with(func(f *spaFields) { f.message = m }) }
	set := func(i int, c byte) []byte {
		p := bytes.Clone(good)
		p[i] = c
		return p
	}
	// other replaces the character at i with another base64 character.
	other := func(i int) []byte {
		if good[i] == 'A' {
			return set(i, 'B')
		}
		return set(i, 'A')
	}
	fields := accessFields(t0, "192.0.2.2,tcp/22").encode()
	sum := sha256.Sum256([]byte(fields))
	digest := b64.EncodeToString(sum[:])
	blocks := func(n int) []byte { return bytes.Repeat([]byte{'x'}, n) }

	cases := []struct {
		name    string
		payload []byte
		want    error
	}{
		{"empty", nil, ErrTooShort},
		{"short", good[:MinPayload-1], ErrTooShort},
		{"long", bytes.Repeat([]byte{'A'}, MaxPayload+1), ErrTooLong},
		{"re-prefixed", append([]byte(saltedPrefix), good...), ErrReprefixed},
		{"gpg", append([]byte("hQ"), bytes.Repeat([]byte{'A'}, 500)...), ErrGPG},
		{"newline", append(bytes.Clone(good), '\n'), ErrNotFwknop},
		{"padding char", set(20, '='), ErrNotFwknop},
		{"url alphabet", set(20, '-'), ErrNotFwknop},
		{"nul", set(0, 0), ErrNotFwknop},

		{"body character", other(40), ErrHMAC},
		{"first character", other(0), ErrHMAC},
		{"HMAC character", other(len(good) - 5), ErrHMAC},
		{"HMAC's other spelling", otherSpelling(good), ErrHMAC},
		{"one character less", good[:len(good)-1], ErrHMAC},
		{"one character more", append(bytes.Clone(good[:len(good)-macLen]), append([]byte{'A'}, good[len(good)-macLen:]...)...), ErrHMAC},
		{"wrong HMAC key", sealPlain(encA, hmacB, salt0, []byte(withDigest(fields))), ErrHMAC},

		{"not base64 length", sealText(hmacA, string(good[:len(good)-macLen-1])), ErrCiphertext},
		{"not Salted__", sealBlob(hmacA, append([]byte("Salted_P"+string(salt0)), blocks(16)...)), ErrCiphertext},
		{"part block", sealBlob(hmacA, append([]byte("Salted__"+string(salt0)), blocks(31)...)), ErrCiphertext},

		{"wrong encryption key", sealPlain(encB, hmacA, []byte("12345678"), []byte(withDigest(fields))), ErrPadding},
		{"pad 0", sealPadded(encA, hmacA, salt0, append(blocks(15), 0)), ErrPadding},
		{"pad 17", sealPadded(encA, hmacA, salt0, append(blocks(31), 17)), ErrPadding},
		{"pad bytes differ", sealPadded(encA, hmacA, salt0, append(blocks(14), 1, 2)), ErrPadding},

		{"control character", sealPlainA(withDigest(fields + "\x01")), ErrMalformed},
		{"no digest", sealPlainA(accessFields(t0, "192.0.2.2,tcp/2222").encode()), ErrMalformed},
		{"digest length", sealPlainA(fields + ":" + digest[:40]), ErrMalformed},
		{"digest sha512", sealPlainA(fields + ":" + strings.Repeat("A", 86)), ErrDigestType},
		{"digest md5", sealPlainA(fields + ":" + strings.Repeat("A", 22)), ErrDigestType},
		{"digest of other fields", sealPlainA(fields + "x:" + digest), ErrDigest},
		{"digest character", sealPlainA(fields + ":" + "B" + digest[1:]), ErrDigest},
		{"five fields", sealPlainA(withDigest("1234567890123456:YWxpY2U:1796119200:3.0.0:1")), ErrMalformed},
		{"ten fields", sealPlainA(withDigest(fields + ":a:b:c:d")), ErrMalformed},
		{"rand 15 digits", with(func(f *spaFields) { f.rand = "123456789012345" }), ErrMalformed},
		{"rand letter", with(func(f *spaFields) { f.rand = "123456789012345x" }), ErrMalformed},
		{"user empty", with(func(f *spaFields) { f.user = "" }), ErrMalformed},
		{"user 65", with(func(f *spaFields) { f.user = strings.Repeat("u", 65) }), ErrMalformed},
		{"user slash", with(func(f *spaFields) { f.user = "a/b" }), ErrMalformed},
		{"user byte", with(func(f *spaFields) { f.user = "caf\xc3\xa9" }), ErrMalformed},
		{"user not base64", sealPlainA(withDigest(strings.Replace(fields, "YWxpY2U", "YWxp!2U", 1))), ErrMalformed},
		{"time letters", sealPlainA(withDigest(strings.Replace(fields, ":1796", ":x796", 1))), ErrMalformed},
		{"time sign", sealPlainA(withDigest(strings.Replace(fields, ":1796", ":+796", 1))), ErrMalformed},
		{"version", with(func(f *spaFields) { f.version = "2.0.4" }), ErrVersion},
		{"stale", with(func(f *spaFields) { f.time -= 121 }), ErrStale},
		{"type 7", with(func(f *spaFields) { f.typ = 7 }), ErrMalformed},
		{"type 300", with(func(f *spaFields) { f.typ = 300 }), ErrMalformed},
		{"command", with(func(f *spaFields) { f.typ, f.message = 0, "192.0.2.2,echo hi" }), ErrCommand},
		{"nat", with(func(f *spaFields) { f.typ, f.nat = 2, "10.0.0.5,22" }), ErrNAT},
		{"nat with timeout", with(func(f *spaFields) { f.typ, f.nat, f.timeout = 4, "10.0.0.5,22", "60" }), ErrNAT},
		{"local nat", with(func(f *spaFields) { f.typ, f.nat = 5, "127.0.0.1,22" }), ErrNAT},
		{"local nat with timeout", with(func(f *spaFields) { f.typ, f.nat, f.timeout = 6, "127.0.0.1,22", "60" }), ErrNAT},
		{"server auth", with(func(f *spaFields) { f.serverAuth = "crypt,pw" }), ErrServerAuth},
		{"server auth with timeout", with(func(f *spaFields) { f.typ, f.serverAuth, f.timeout = 3, "crypt,pw", "60" }), ErrServerAuth},
		{"access with a timeout field", with(func(f *spaFields) { f.serverAuth, f.timeout = "x", "60" }), ErrMalformed},
		{"timeout missing", with(func(f *spaFields) { f.typ = 3 }), ErrMalformed},
		{"timeout 0", with(func(f *spaFields) { f.typ, f.timeout = 3, "0" }), ErrMalformed},
		{"timeout negative", with(func(f *spaFields) { f.typ, f.timeout = 3, "-1" }), ErrMalformed},
		{"timeout huge", with(func(f *spaFields) { f.typ, f.timeout = 3, "99999999999" }), ErrMalformed},
		{"message no comma", msg("192.0.2.2"), ErrMalformed},
		{"message no port", msg("192.0.2.2,"), ErrMalformed},
		{"message trailing comma", msg("192.0.2.2,tcp/22,"), ErrMalformed},
		{"message no slash", msg("192.0.2.2,tcp22"), ErrMalformed},
		{"message none", msg("192.0.2.2,none/0"), ErrMalformed},
		{"message icmp", msg("192.0.2.2,icmp/0"), ErrMalformed},
		{"message port 0", msg("192.0.2.2,tcp/0"), ErrMalformed},
		{"message port 65536", msg("192.0.2.2,tcp/65536"), ErrMalformed},
		{"message port sign", msg("192.0.2.2,tcp/+22"), ErrMalformed},
		{"message bad IP", msg("192.0.2.256,tcp/22"), ErrMalformed},
		{"message leading zero", msg("192.0.2.02,tcp/22"), ErrMalformed},
		{"message IPv6", msg("2001:db8::1,tcp/22"), ErrMalformed},
		{"message mapped", msg("::ffff:192.0.2.2,tcp/22"), ErrMalformed},
		{"message hostname", msg("example.org,tcp/22"), ErrMalformed},
	}
	k := newKey(t, encA, hmacA)
	seen := map[error]bool{}
	for _, c := range cases {
		if _, err := Open(k, c.payload, t0, 2*time.Minute); err != c.want {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
		seen[c.want] = true
	}
	// Every reason has a case, and a message of its own.
	all := []error{ErrTooShort, ErrTooLong, ErrReprefixed, ErrGPG, ErrNotFwknop, ErrHMAC, ErrCiphertext, ErrPadding,
		ErrMalformed, ErrDigestType, ErrDigest, ErrVersion, ErrStale, ErrCommand, ErrNAT, ErrServerAuth}
	msgs := map[string]bool{}
	for _, e := range all {
		if !seen[e] {
			t.Errorf("no case for %v", e)
		}
		if msgs[e.Error()] {
			t.Errorf("message %q twice", e)
		}
		msgs[e.Error()] = true
	}
}

// otherSpelling changes the HMAC's last character so that it decodes to
// the same 32 bytes: of its 6 bits, the last 2 are padding.
func otherSpelling(p []byte) []byte {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	q := bytes.Clone(p)
	q[len(q)-1] = alphabet[strings.IndexByte(alphabet, q[len(q)-1])^1]
	a, _ := b64.DecodeString(string(p[len(p)-macLen:]))
	b, _ := b64.DecodeString(string(q[len(q)-macLen:]))
	if !bytes.Equal(a, b) || len(a) != 32 {
		panic("not another spelling")
	}
	return q
}

func TestMatch(t *testing.T) {
	a, b := newKey(t, encA, hmacA), newKey(t, encB, hmacB)
	c := newKey(t, encA, hmacB) // b's HMAC key, a's encryption key
	pa := sealA(accessFields(t0, "192.0.2.2,tcp/22"))
	pb := sealPlain(encB, hmacB, salt0, []byte(withDigest(accessFields(t0, "192.0.2.2,tcp/22").encode())))
	for _, tc := range []struct {
		name string
		keys []*Key
		p    []byte
		i    int
		err  error
	}{
		{"a among three", []*Key{b, c, a}, pa, 2, nil},
		{"b first of two that share its HMAC key", []*Key{b, c}, pb, 0, nil},
		{"no key", []*Key{b, c}, pa, -1, ErrHMAC},
		{"no keys at all", nil, pa, -1, ErrHMAC},
		{"re-prefixed, before any key", []*Key{a}, append([]byte(saltedPrefix), pa...), -1, ErrReprefixed},
		{"short", []*Key{a}, pa[:10], -1, ErrTooShort},
	} {
		i, err := Match(tc.keys, tc.p)
		if i != tc.i || err != tc.err {
			t.Errorf("%s: %d, %v; want %d, %v", tc.name, i, err, tc.i, tc.err)
		}
	}
	// The matched key opens it; a key that shares only the HMAC key
	// finds the padding wrong.
	if _, err := Open(a, pa, t0, time.Minute); err != nil {
		t.Error(err)
	}
	if _, err := Open(c, pb, t0, time.Minute); err != ErrPadding && err != ErrMalformed {
		t.Errorf("b's packet with a's encryption key: %v", err)
	}
}

// TestRefusalsAllocateNothing: a flood of junk, or of packets made without
// the HMAC key, costs no garbage.
func TestRefusalsAllocateNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items: allocation counts mean nothing")
	}
	a, b := newKey(t, encA, hmacA), newKey(t, encB, hmacB)
	good := sealA(accessFields(t0, "192.0.2.2,tcp/22"))
	for name, p := range map[string][]byte{
		"wrong key":   good,
		"short":       good[:20],
		"re-prefixed": append([]byte(saltedPrefix), good...),
		"junk":        bytes.Repeat([]byte{0xff}, 1400),
	} {
		if n := testing.AllocsPerRun(200, func() { _, _ = Open(b, p, t0, time.Minute) }); n != 0 {
			t.Errorf("Open, %s: %v allocations", name, n)
		}
	}
	keys := []*Key{b, b, b, a}
	if n := testing.AllocsPerRun(200, func() { _, _ = Match(keys, good) }); n != 0 {
		t.Errorf("Match: %v allocations", n)
	}
}

func TestOpenConcurrently(t *testing.T) {
	k := newKey(t, encA, hmacA)
	good := sealA(accessFields(t0, "192.0.2.2,tcp/22"))
	bad := sealPlain(encA, hmacB, salt0, []byte(withDigest(accessFields(t0, "192.0.2.2,tcp/22").encode())))
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				if r, err := Open(k, good, t0, time.Minute); err != nil || r.Allow != netip.MustParseAddr("192.0.2.2") {
					t.Errorf("good: %v %v", r, err)
					return
				}
				if _, err := Open(k, bad, t0, time.Minute); err != ErrHMAC {
					t.Errorf("bad: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestOpenLeavesPayloadAlone(t *testing.T) {
	k := newKey(t, encA, hmacA)
	good := sealA(accessFields(t0, "192.0.2.2,tcp/22"))
	keep := bytes.Clone(good)
	if _, err := Open(k, good, t0, time.Minute); err != nil || !bytes.Equal(good, keep) {
		t.Fatalf("%v; payload changed: %v", err, !bytes.Equal(good, keep))
	}
}

func TestNewKey(t *testing.T) {
	for _, c := range []struct {
		enc, mac int
		ok       bool
	}{
		{32, 64, true}, {1, 1, true}, {32, 128, true},
		{0, 64, false}, {33, 64, false}, {32, 0, false}, {32, 129, false},
	} {
		_, err := NewKey(make([]byte, c.enc), make([]byte, c.mac))
		if (err == nil) != c.ok {
			t.Errorf("enc %d, hmac %d: %v", c.enc, c.mac, err)
		}
	}
	// The key is copied: changing the caller's slice changes nothing.
	enc, mac := bytes.Clone(encA), bytes.Clone(hmacA)
	k := newKey(t, enc, mac)
	enc[0], mac[0] = 0, 0
	if _, err := Open(k, sealA(accessFields(t0, "192.0.2.2,tcp/22")), t0, time.Minute); err != nil {
		t.Error(err)
	}
}

func TestMinPayload(t *testing.T) {
	// The shortest authentic blob: Salted__, salt, one block.
	p := sealPadded(encA, hmacA, salt0, bytes.Repeat([]byte{16}, 16))
	if len(p) != MinPayload {
		t.Fatalf("shortest payload is %d bytes, MinPayload %d", len(p), MinPayload)
	}
	if _, err := Open(newKey(t, encA, hmacA), p, t0, time.Minute); err != ErrMalformed {
		t.Errorf("an empty plaintext: %v, want ErrMalformed", err)
	}
}
