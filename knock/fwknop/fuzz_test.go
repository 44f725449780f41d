package fwknop

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// knownErrors are all the reasons Open gives.
var knownErrors = map[error]bool{
	ErrTooShort: true, ErrTooLong: true, ErrReprefixed: true, ErrGPG: true, ErrNotFwknop: true,
	ErrHMAC: true, ErrCiphertext: true, ErrPadding: true, ErrMalformed: true, ErrDigestType: true,
	ErrDigest: true, ErrVersion: true, ErrStale: true, ErrCommand: true, ErrNAT: true, ErrServerAuth: true,
}

// checkOpened asserts what every accepted request must be.
func checkOpened(t *testing.T, payload []byte, r Request, now time.Time, maxAge time.Duration) {
	t.Helper()
	if r.Type != TypeAccess && r.Type != TypeClientTimeoutAccess {
		t.Fatalf("accepted type %v", r.Type)
	}
	if (r.ClientTimeout > 0) != (r.Type == TypeClientTimeoutAccess) || r.ClientTimeout < 0 {
		t.Fatalf("type %v with client timeout %v", r.Type, r.ClientTimeout)
	}
	if len(r.Access) == 0 {
		t.Fatal("accepted a request for no port")
	}
	for _, a := range r.Access {
		if a.Port == 0 || (a.Proto != TCP && a.Proto != UDP) {
			t.Fatalf("accepted %v", a)
		}
	}
	if r.Allow.IsValid() && (!r.Allow.Is4() || r.Allow.IsUnspecified() || r.Allow.Zone() != "") {
		t.Fatalf("accepted allow address %v", r.Allow)
	}
	if d := now.Sub(r.Time); d > maxAge || d < -maxAge {
		t.Fatalf("accepted timestamp %v at %v", r.Time, now)
	}
	if r.User == "" || len(r.User) > maxUser {
		t.Fatalf("accepted user %q", r.User)
	}
	if r.Digest != sha256.Sum256(payload) {
		t.Fatal("digest is not SHA-256 of the payload")
	}
}

// FuzzOpen feeds Open and Match arbitrary payloads, keyed with the golden
// packets' key a. The seeds (testdata/fuzz/FuzzOpen) are the stock
// client's packets and damaged copies of them; a random change cannot
// forge the HMAC, so this covers what an attacker without the key
// reaches. FuzzOpenPlaintext covers the rest.
func FuzzOpen(f *testing.F) {
	keys := readGoldenKeys(f)
	a, b := keys["a"].key(f), keys["b"].key(f)
	now := readGolden(f, "access").received
	f.Fuzz(func(t *testing.T, payload []byte) {
		keep := bytes.Clone(payload)
		r, err := Open(a, payload, now, goldenMaxAge)
		if !bytes.Equal(payload, keep) {
			t.Fatal("Open changed its input")
		}
		if err != nil && !knownErrors[err] {
			t.Fatalf("unknown error %v", err)
		}
		if err == nil {
			checkOpened(t, payload, r, now, goldenMaxAge)
		}
		i, merr := Match([]*Key{b, a}, payload)
		switch {
		case merr != nil && (i != -1 || !knownErrors[merr]):
			t.Fatalf("Match: %d, %v", i, merr)
		case err == nil && (merr != nil || i != 1):
			t.Fatalf("Open accepted, Match: %d, %v", i, merr)
		case merr == nil && i == 1 && err == ErrHMAC:
			t.Fatal("Match found key a, Open says its HMAC does not match")
		}
	})
}

// FuzzOpenPlaintext seals arbitrary plaintexts with a valid HMAC (and,
// when digest is set, the fields' valid digest appended), so that the
// fuzzer works on what only a key holder can send: the decrypted fields.
func FuzzOpenPlaintext(f *testing.F) {
	k := newKey(f, encA, hmacA)
	f.Fuzz(func(t *testing.T, fields string, digest bool) {
		plain := fields
		if digest {
			plain = withDigest(fields)
		}
		if len(plain) > 1000 {
			return // the payload would pass MaxPayload
		}
		payload := sealPlain(encA, hmacA, salt0, []byte(plain))
		r, err := Open(k, payload, t0, 2*time.Minute)
		if err != nil && !knownErrors[err] {
			t.Fatalf("unknown error %v", err)
		}
		switch {
		case err == nil:
			checkOpened(t, payload, r, t0, 2*time.Minute)
		case err == ErrTooLong:
		case err == ErrHMAC || err == ErrCiphertext || err == ErrPadding || err == ErrTooShort:
			t.Fatalf("a sealed plaintext gives %v", err)
		}
	})
}

// TestFuzzSeeds: the FuzzOpen corpus holds packets Open accepts, so the
// fuzzer starts from the deepest path; -update rewrites both corpora.
func TestFuzzSeeds(t *testing.T) {
	if *update {
		writeFuzzSeeds(t)
	}
	keys := readGoldenKeys(t)
	a := keys["a"].key(t)
	now := readGolden(t, "access").received
	seeds, err := filepath.Glob("testdata/fuzz/FuzzOpen/*")
	if err != nil || len(seeds) == 0 {
		t.Fatalf("no seeds (go test ./knock/fwknop/ -run TestFuzzSeeds -update writes them): %v", err)
	}
	accepted := 0
	for _, s := range seeds {
		p := readSeedBytes(t, s)
		if _, err := Open(a, p, now, goldenMaxAge); err == nil {
			accepted++
		}
	}
	if accepted < 3 {
		t.Errorf("%d seeds of %d are accepted, want 3 or more", accepted, len(seeds))
	}
	if ps, _ := filepath.Glob("testdata/fuzz/FuzzOpenPlaintext/*"); len(ps) < 10 {
		t.Errorf("%d FuzzOpenPlaintext seeds", len(ps))
	}
}

// readSeedBytes reads a one-[]byte corpus file.
func readSeedBytes(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitN(data, []byte("\n"), 3)
	if len(lines) < 2 || string(lines[0]) != "go test fuzz v1" || !bytes.HasPrefix(lines[1], []byte("[]byte(")) {
		t.Fatalf("%s: not a one-[]byte corpus file", path)
	}
	s, err := strconv.Unquote(string(bytes.TrimSuffix(bytes.TrimPrefix(lines[1], []byte("[]byte(")), []byte(")"))))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return []byte(s)
}

func writeFuzzSeeds(t *testing.T) {
	write := func(dir, name string, values ...any) {
		var b bytes.Buffer
		b.WriteString("go test fuzz v1\n")
		for _, v := range values {
			switch v := v.(type) {
			case []byte:
				fmt.Fprintf(&b, "[]byte(%s)\n", strconv.Quote(string(v)))
			case string:
				fmt.Fprintf(&b, "string(%s)\n", strconv.Quote(v))
			case bool:
				fmt.Fprintf(&b, "bool(%v)\n", v)
			}
		}
		d := filepath.Join("testdata/fuzz", dir)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, name), b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range goldenCases {
		write("FuzzOpen", "golden_"+c.name, readGolden(t, c.name).payload)
	}
	p := readGolden(t, "access").payload
	change := func(i int) []byte {
		q := bytes.Clone(p)
		if q[i] = 'A'; p[i] == 'A' {
			q[i] = 'B'
		}
		return q
	}
	write("FuzzOpen", "changed_body", change(40))
	write("FuzzOpen", "changed_hmac", change(len(p)-2))
	write("FuzzOpen", "truncated_by_one", p[:len(p)-1])
	write("FuzzOpen", "truncated_to_minimum", p[:MinPayload])
	write("FuzzOpen", "re_prefixed", append([]byte(saltedPrefix), p...))
	write("FuzzOpen", "gpg_prefix", append([]byte("hQ"), p...))
	write("FuzzOpen", "newline", append(bytes.Clone(p), '\n'))
	write("FuzzOpen", "oversized", bytes.Repeat([]byte{'A'}, MaxPayload+1))
	write("FuzzOpen", "empty", []byte{})

	ok := accessFields(t0, "192.0.2.2,tcp/22")
	timeout := ok
	timeout.typ, timeout.timeout, timeout.message = 3, "60", "0.0.0.0,tcp/22,udp/53"
	command := ok
	command.typ, command.message = 0, "192.0.2.2,echo hi"
	nat := ok
	nat.typ, nat.nat = 2, "10.0.0.5,22"
	auth := ok
	auth.serverAuth = "crypt,pw"
	for name, fields := range map[string]string{
		"access":         ok.encode(),
		"client_timeout": timeout.encode(),
		"command":        command.encode(),
		"nat":            nat.encode(),
		"server_auth":    auth.encode(),
		"empty":          "",
		"colons":         "::::::",
		"ipv6":           accessFields(t0, "2001:db8::1,tcp/22").encode(),
		"port_range":     accessFields(t0, "192.0.2.2,tcp/22-23").encode(),
		"stale":          accessFields(t0.Add(-time.Hour), "192.0.2.2,tcp/22").encode(),
	} {
		write("FuzzOpenPlaintext", name, fields, name != "empty")
	}
	write("FuzzOpenPlaintext", "no_digest", ok.encode(), false)
}
