package authkeys

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func pubLine(tb testing.TB, key any) string {
	tb.Helper()
	pub, err := ssh.NewPublicKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))
}

func edLine(tb testing.TB, seed byte) string {
	s := make([]byte, ed25519.SeedSize)
	for i := range s {
		s[i] = seed
	}
	return pubLine(tb, ed25519.NewKeyFromSeed(s).Public())
}

func parseOne(tb testing.TB, line string) (*Key, []Problem) {
	tb.Helper()
	keys, problems := Parse("ak", []byte(line), 100)
	if len(keys) > 1 {
		tb.Fatalf("%q: %d keys", line, len(keys))
	}
	if len(keys) == 0 {
		return nil, problems
	}
	return keys[0], problems
}

func TestParseKeyTypes(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ec384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	ok, _ := rsa.GenerateKey(rand.Reader, 2048)
	for _, c := range []struct {
		name, line string
		keep       bool
		reason     string
	}{
		{"ed25519", edLine(t, 1) + " alice@laptop", true, ""},
		{"ecdsa-p256", pubLine(t, &ec.PublicKey) + " ec", true, ""},
		{"ecdsa-p384", pubLine(t, &ec384.PublicKey), true, ""},
		{"rsa-2048", pubLine(t, &ok.PublicKey), true, ""},
		{"rsa-1024", pubLine(t, &small.PublicKey), false, "RSA key of 1024 bits"},
		{"type field lies", "ssh-rsa " + strings.Fields(edLine(t, 1))[1], false, "key type field says ssh-rsa"},
		{"security key", "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIBt4kHl8dVf4gPZ0B9FGOnXJvjK4vAgUOffDJTSKzdiVAAAABHNzaDo=", false, "not supported"},
		{"dsa", "ssh-dss AAAAB3NzaC1kc3M=", false, "not supported"},
		{"garbage base64", "ssh-ed25519 !!!!", false, "not a public key"},
		{"no key", "ssh-ed25519", false, "not a public key"},
		{"unknown type", "ssh-foo AAAA", false, "unknown key type"},
		{"options only", `from="10.0.0.1"`, false, "no key after the options"},
		{"unclosed quote", `from="10.0.0.1 ` + edLine(t, 1), false, "no key after the options"},
	} {
		k, problems := parseOne(t, c.line)
		if (k != nil) != c.keep {
			t.Errorf("%s: kept %v, want %v (%v)", c.name, k != nil, c.keep, problems)
			continue
		}
		if !c.keep && (len(problems) != 1 || !strings.Contains(problems[0].Reason, c.reason) || problems[0].Line != 1) {
			t.Errorf("%s: problems %v, want one saying %q", c.name, problems, c.reason)
		}
	}
	k, _ := parseOne(t, edLine(t, 1)+" alice@laptop with spaces")
	if k.Comment != "alice@laptop with spaces" || k.Fingerprint != ssh.FingerprintSHA256(k.PublicKey) || !strings.HasPrefix(k.Fingerprint, "SHA256:") {
		t.Errorf("comment %q fingerprint %q", k.Comment, k.Fingerprint)
	}
	if k.String() != `"alice@laptop with spaces" `+k.Fingerprint {
		t.Errorf("String: %s", k)
	}
}

func TestParseFileLines(t *testing.T) {
	data := "# a comment\n\n  " + edLine(t, 1) + " one\r\n" +
		"bogus line\n" +
		`no-pty,command="echo \"hi\", there",permitopen="h:22",environment="A=B",restrict ` + edLine(t, 2) + " two\n" +
		edLine(t, 3) // no final newline
	keys, problems := Parse("f", []byte(data), 100)
	if len(keys) != 3 || keys[0].Line != 3 || keys[1].Line != 5 || keys[2].Line != 6 || keys[1].Comment != "two" {
		t.Fatalf("keys %+v", keys)
	}
	if len(problems) != 1 || problems[0].Line != 4 || problems[0].File != "f" {
		t.Fatalf("problems %v", problems)
	}
	// The key limit holds.
	keys, problems = Parse("f", []byte(data), 2)
	if len(keys) != 2 || !strings.Contains(problems[len(problems)-1].Reason, "limit") {
		t.Fatalf("limit 2: %d keys, %v", len(keys), problems)
	}
	// A line over MaxLine is skipped, however it ends.
	long := edLine(t, 1) + " " + strings.Repeat("c", MaxLine)
	if keys, problems := Parse("f", []byte(long), 10); len(keys) != 0 || len(problems) != 1 {
		t.Fatalf("long line: %d keys, %v", len(keys), problems)
	}
}

func TestParseOptions(t *testing.T) {
	key := edLine(t, 1)
	for _, c := range []struct {
		opts   string
		keep   bool
		reason string
	}{
		{`from="192.0.2.0/24"`, true, ""},
		{`FROM="192.0.2.1"`, true, ""}, // names are case-insensitive
		{`no-pty,from="10.0.0.0/8",expiry-time="20300101"`, true, ""},
		{`cert-authority`, false, "cert-authority"},
		{`cert-authority,principals="alice"`, false, "cert-authority"},
		{`frobnicate`, false, "unknown option"},
		{`from=192.0.2.1`, false, "double quotes"},
		{`from`, false, "needs a value"},
		{`from="10.1.2.3/8"`, false, "bits set past its prefix"},
		{`from="!*.example.org,*"`, false, "hostname pattern"},
		{`from="10.0.0.0/8",from="192.0.2.0/24"`, false, "twice"},
		{`from=""`, false, "empty pattern"},
		{`from="10.0.0.1,"`, false, "empty pattern"},
		{`from="10.0.0.0/33"`, false, "not an address/prefix-length"},
		{`expiry-time="2030"`, false, "YYYYMMDD"},
		{`expiry-time="20301301"`, false, "not a valid date"},
		{`no-pty,`, false, "ends with a comma"},
		{`from="1.2.3.4"x`, false, "junk after the closing quote"},
		{`,no-pty`, false, "empty option name"},
	} {
		k, problems := parseOne(t, c.opts+" "+key)
		var skipped []Problem
		for _, p := range problems {
			if !p.Kept {
				skipped = append(skipped, p)
			}
		}
		if (k != nil) != c.keep {
			t.Errorf("%s: kept %v, want %v (%v)", c.opts, k != nil, c.keep, problems)
			continue
		}
		if !c.keep && (len(skipped) != 1 || !strings.Contains(skipped[0].Reason, c.reason)) {
			t.Errorf("%s: %v, want a reason saying %q", c.opts, problems, c.reason)
		}
	}
	// A positive hostname pattern is kept, with a warning: it never
	// matches.
	k, problems := parseOne(t, `from="*.example.org,192.0.2.1" `+key)
	if k == nil || len(problems) != 1 || !problems[0].Kept || !strings.Contains(problems[0].Reason, "never matches") {
		t.Fatalf("hostname pattern: %v %v", k, problems)
	}
}

func TestFromMatch(t *testing.T) {
	for _, c := range []struct {
		patterns string
		yes, no  []string
	}{
		{"192.0.2.0/24", []string{"192.0.2.1", "::ffff:192.0.2.200"}, []string{"192.0.3.1", "2001:db8::1"}},
		{"192.0.2.7", []string{"192.0.2.7"}, []string{"192.0.2.8"}},
		{"2001:db8::/32,!2001:db8:bad::/48", []string{"2001:db8::1"}, []string{"2001:db8:bad::1", "192.0.2.1"}},
		{"!192.0.2.66,192.0.2.0/24", []string{"192.0.2.65"}, []string{"192.0.2.66"}},
		{"192.0.2.0/24,!192.0.2.66", []string{"192.0.2.65"}, []string{"192.0.2.66"}},
		{"10.1.*", []string{"10.1.2.3", "10.1.0.0"}, []string{"10.10.2.3", "110.1.2.3"}},
		{"10.?.0.1", []string{"10.5.0.1"}, []string{"10.55.0.1"}},
		{"*", []string{"192.0.2.1", "2001:db8::1"}, nil},
		{"*,!10.0.0.0/8", []string{"192.0.2.1"}, []string{"10.9.9.9"}},
		{"*.example.org", nil, []string{"192.0.2.1"}},
		{"2001:DB8::*", []string{"2001:db8::5"}, []string{"2001:db9::5"}},
	} {
		p, _, err := ParsePatterns(c.patterns)
		if err != nil {
			t.Fatalf("%s: %v", c.patterns, err)
		}
		for _, a := range c.yes {
			if !p.Match(netip.MustParseAddr(a)) {
				t.Errorf("%s refuses %s", c.patterns, a)
			}
		}
		for _, a := range c.no {
			if p.Match(netip.MustParseAddr(a)) {
				t.Errorf("%s allows %s", c.patterns, a)
			}
		}
	}
	if _, _, err := ParsePatterns(strings.Repeat("1.2.3.4,", maxPatterns) + "1.2.3.4"); err == nil {
		t.Error("too many patterns taken")
	}
}

func TestWildcardMatchLinear(t *testing.T) {
	// A pattern built to blow up a backtracking matcher.
	pat := strings.Repeat("*a", 200) + "b"
	s := strings.Repeat("a", 4000)
	if wildcardMatch(pat, s) {
		t.Fatal("matched")
	}
	if !wildcardMatch("a*b*c", "aXXbYYc") || wildcardMatch("a*b", "ab c") || !wildcardMatch("", "") || wildcardMatch("", "a") {
		t.Fatal("wildcard basics")
	}
}

func TestExpiry(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		berlin = time.FixedZone("CET", 3600)
	}
	for _, c := range []struct {
		in   string
		loc  *time.Location
		want time.Time
	}{
		{"20301231", time.UTC, time.Date(2030, 12, 31, 0, 0, 0, 0, time.UTC)},
		{"203012312359", berlin, time.Date(2030, 12, 31, 23, 59, 0, 0, berlin)},
		{"20301231235958", berlin, time.Date(2030, 12, 31, 23, 59, 58, 0, berlin)},
		{"20301231235958Z", berlin, time.Date(2030, 12, 31, 23, 59, 58, 0, time.UTC)},
		{"20301231z", berlin, time.Date(2030, 12, 31, 0, 0, 0, 0, time.UTC)},
		{"20301231UTC", berlin, time.Date(2030, 12, 31, 0, 0, 0, 0, time.UTC)},
	} {
		got, err := ParseExpiry(c.in, c.loc)
		if err != nil || !got.Equal(c.want) {
			t.Errorf("%s: %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "Z", "2030123", "2030-12-31", "20301232", "203012312460", "+2030123", "20301231 "} {
		if _, err := ParseExpiry(bad, time.UTC); err == nil {
			t.Errorf("%q taken", bad)
		}
	}
	k, _ := parseOne(t, `expiry-time="20301231Z" `+edLine(t, 1))
	end := time.Date(2030, 12, 31, 0, 0, 0, 0, time.UTC)
	if k.Expired(end) || !k.Expired(end.Add(time.Nanosecond)) {
		t.Error("expiry edge")
	}
	k, _ = parseOne(t, edLine(t, 1))
	if k.Expired(time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)) || !k.PermitsAddr(netip.MustParseAddr("203.0.113.1")) {
		t.Error("a key without options is limited")
	}
}

// FuzzParse: any bytes parse without a panic, within the limits, and what
// is kept is a key with a fingerprint and its own line.
func FuzzParse(f *testing.F) {
	key := edLine(f, 1)
	for _, s := range []string{
		key + " alice@laptop\n",
		`from="192.0.2.0/24,!192.0.2.66,10.1.*",expiry-time="20300101Z",no-pty ` + key + " c\n",
		`command="echo \"x\"" ` + key + "\n",
		"# comment\n\n\r\n",
		`cert-authority ` + key + "\n",
		`from="` + "\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, problems := Parse("fuzz", data, 5)
		if len(keys) > 5 {
			t.Fatalf("%d keys past the limit", len(keys))
		}
		lines := strings.Count(string(data), "\n") + 1
		for _, k := range keys {
			if k.PublicKey == nil || !strings.HasPrefix(k.Fingerprint, "SHA256:") || k.Line < 1 || k.Line > lines {
				t.Fatalf("kept %+v", k)
			}
			if _, ok := signatureTypes[k.PublicKey.Type()]; !ok {
				t.Fatalf("kept a %s key", k.PublicKey.Type())
			}
			if k.From != nil {
				k.From.Match(netip.MustParseAddr("192.0.2.1"))
				k.From.Match(netip.MustParseAddr("2001:db8::1"))
			}
		}
		for _, p := range problems {
			if p.Line < 1 || p.Line > lines || p.Reason == "" {
				t.Fatalf("problem %+v", p)
			}
		}
	})
}

var signatureTypes = map[string]bool{
	ssh.KeyAlgoED25519: true, ssh.KeyAlgoECDSA256: true, ssh.KeyAlgoECDSA384: true,
	ssh.KeyAlgoECDSA521: true, ssh.KeyAlgoRSA: true,
}
