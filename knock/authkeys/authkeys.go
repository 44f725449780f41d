// Package authkeys reads OpenSSH authorized_keys files for the doors that
// open for a person's SSH key (knock/sshspa): which keys a door trusts,
// from where, until when, and who each one is in the log.
//
// # Lines
//
// A line is what sshd(8) reads: "[options] keytype base64-key [comment]".
// Blank lines and lines starting with # are skipped. The key types kept
// are ssh-ed25519, ecdsa-sha2-nistp256/384/521 and ssh-rsa (2048 to 4096
// bits: a larger RSA signature does not fit in a datagram); the key type
// field must name the key's own type. Every other line is skipped with a
// Problem saying why, never half-read:
//
//   - certificates and cert-authority lines: a knock carries a signature,
//     not a certificate, so a CA cannot vouch for a key here;
//   - security-key (sk-ssh-ed25519@openssh.com, sk-ecdsa-…) keys: not
//     supported yet (their signatures need a touch and carry flags);
//   - an option this package does not know (sshd refuses those lines too),
//     a from= it cannot evaluate or a malformed expiry-time=.
//
// # Options
//
// Option names are case-insensitive, as in sshd. Two limit a key:
//
//   - from="pattern-list": the knock's source address (and the address it
//     asks to open for, when that is another) must match. Patterns are
//     comma-separated addresses, CIDR prefixes ("192.0.2.0/24",
//     "2001:db8::/32") and wildcards over the address text ("10.1.*",
//     "2001:db8::?"), each negated with a leading "!"; as in sshd, a
//     negated match refuses whatever else matches, and otherwise one
//     positive match is needed. A prefix with host bits set ("10.1.2.3/8")
//     makes the line skipped, as sshd refuses it at login. The daemon sees
//     addresses only, as sshd with UseDNS no (its default): a hostname
//     pattern ("*.example.org") never matches. A positive one is kept and
//     reported (it can only narrow); a negated one makes the line skipped,
//     since the exclusion it asks for cannot be honoured.
//   - expiry-time="YYYYMMDD[HHMM[SS]][Z|UTC]": the key opens nothing after
//     that time: local time (the daemon's TZ), or UTC with Z or UTC.
//
// The others concern only an SSH session and are accepted and ignored:
// agent-forwarding, command, environment, no-agent-forwarding,
// no-port-forwarding, no-pty, no-touch-required, no-user-rc,
// no-x11-forwarding, permitlisten, permitopen, port-forwarding,
// principals, pty, restrict, tunnel, user-rc, verify-required,
// x11-forwarding. A line with `command="…"` still opens the door: sshd
// would let that key log in, to run the command.
//
// # Files
//
// Watcher reads the files behind a list of paths and globs
// ("/home/*/.ssh/authorized_keys"), checks them as sshd's StrictModes
// does (see strict.go), and notices an edit within a poll interval. Every
// limit is a bound on hostile input: Limits.
package authkeys

import (
	"bytes"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// Key is one trusted line of an authorized_keys file.
type Key struct {
	PublicKey ssh.PublicKey
	// Comment is the line's comment ("alice@laptop"), maybe empty.
	Comment string
	// Fingerprint is what `ssh-keygen -lf` prints: "SHA256:" and the
	// unpadded base64 of Hash.
	Fingerprint string
	// Hash is the SHA-256 of the key's wire form: what a knock names.
	Hash [32]byte
	// From limits where the key may knock from; nil: anywhere.
	From *Patterns
	// Expiry is when the key stops opening (expiry-time=); zero: never.
	Expiry time.Time
	// File and Line say where the key was read.
	File string
	Line int
}

// String is how the log names a key: its comment, quoted, and its
// fingerprint, `"alice@laptop" SHA256:…`.
func (k *Key) String() string { return fmt.Sprintf("%q %s", k.Comment, k.Fingerprint) }

// PermitsAddr reports whether the key's from= lets it be used from a.
func (k *Key) PermitsAddr(a netip.Addr) bool { return k.From == nil || k.From.Match(a) }

// Expired reports whether the key's expiry-time has passed at now.
func (k *Key) Expired(now time.Time) bool { return !k.Expiry.IsZero() && now.After(k.Expiry) }

// Problem is why a line or a file was skipped, or something worth telling
// about one that was kept (Kept): for the daemon's log.
type Problem struct {
	File   string
	Line   int // 0: the file as a whole
	Reason string
	// Kept is true for a warning about a line that was kept.
	Kept bool
}

func (p Problem) Error() string {
	if p.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.Reason)
	}
	return p.File + ": " + p.Reason
}

// Bounds of the format, whatever Limits say: sshd reads no longer line
// (its public keys are at most 16 KiB in wire form), and no RSA key this
// large fits a knock.
const (
	MaxLine       = 16 << 10
	minRSABits    = 2048
	maxRSABits    = 4096
	maxFromLength = 4096 // one from= value
	maxPatterns   = 256  // in one from=
)

// Parse reads the lines of one authorized_keys file's contents, data,
// named file in what it returns. It keeps at most maxKeys keys (the rest
// are Problems) and reads every line it can: one bad line never spoils
// the others.
func Parse(file string, data []byte, maxKeys int) (keys []*Key, problems []Problem) {
	n := 0
	for len(data) > 0 {
		n++
		var line []byte
		line, data, _ = bytes.Cut(data, []byte("\n"))
		line = bytes.TrimSuffix(line, []byte("\r"))
		line = bytes.TrimLeft(line, " \t")
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		if len(line) > MaxLine {
			problems = append(problems, Problem{File: file, Line: n, Reason: fmt.Sprintf("line longer than %d bytes: skipped", MaxLine)})
			continue
		}
		k, warn, err := parseLine(line)
		for _, w := range warn {
			problems = append(problems, Problem{File: file, Line: n, Reason: w, Kept: true})
		}
		if err != nil {
			problems = append(problems, Problem{File: file, Line: n, Reason: err.Error() + ": skipped"})
			continue
		}
		if len(keys) >= maxKeys {
			problems = append(problems, Problem{File: file, Line: n, Reason: "over the limit on keys: skipped"})
			continue
		}
		k.File, k.Line = file, n
		keys = append(keys, k)
	}
	return keys, problems
}

// keyTypes are the key type names sshd knows, so that a line starting with
// one has no options field; kept says which this package trusts.
var keyTypes = map[string]bool{
	ssh.KeyAlgoED25519:              true,
	ssh.KeyAlgoECDSA256:             true,
	ssh.KeyAlgoECDSA384:             true,
	ssh.KeyAlgoECDSA521:             true,
	ssh.KeyAlgoRSA:                  true,
	ssh.InsecureKeyAlgoDSA:          false,
	ssh.KeyAlgoSKED25519:            false,
	ssh.KeyAlgoSKECDSA256:           false,
	ssh.CertAlgoED25519v01:          false,
	ssh.CertAlgoECDSA256v01:         false,
	ssh.CertAlgoECDSA384v01:         false,
	ssh.CertAlgoECDSA521v01:         false,
	ssh.CertAlgoRSAv01:              false,
	ssh.InsecureCertAlgoDSAv01:      false,
	ssh.CertAlgoSKED25519v01:        false,
	ssh.CertAlgoSKECDSA256v01:       false,
	"ssh-xmss@openssh.com":          false,
	"ssh-xmss-cert-v01@openssh.com": false,
}

// parseLine reads one line that is neither blank nor a comment.
func parseLine(line []byte) (*Key, []string, error) {
	// As sshd: a line whose first field is not a key type name starts
	// with options. The options field ends at the first blank outside
	// double quotes.
	var opts []byte
	first, _ := splitField(line)
	if _, ok := keyTypes[string(first)]; !ok {
		var rest []byte
		opts, rest = splitField(line)
		if len(rest) == 0 {
			return nil, nil, errors.New("no key after the options (or an unclosed quote)")
		}
		line = rest
	}
	typ, rest := splitField(line)
	if kept, known := keyTypes[string(typ)]; !known {
		if len(opts) > 0 {
			return nil, nil, fmt.Errorf("unknown key type %.40q after the options %.40q", typ, opts)
		}
		return nil, nil, fmt.Errorf("unknown key type %.40q", typ)
	} else if !kept {
		return nil, nil, fmt.Errorf("key type %s is not supported (ssh-ed25519, ecdsa-sha2-nistp256/384/521 and ssh-rsa are)", typ)
	}
	pub, comment, restOpts, _, err := ssh.ParseAuthorizedKey(line)
	if err != nil {
		return nil, nil, fmt.Errorf("not a public key: %v", err)
	}
	if len(restOpts) > 0 || len(rest) == 0 {
		return nil, nil, errors.New("not a public key line")
	}
	if pub.Type() != string(typ) {
		return nil, nil, fmt.Errorf("key type field says %s, the key is %s", typ, pub.Type())
	}
	if pub.Type() == ssh.KeyAlgoRSA {
		bits := 0
		if ck, ok := pub.(ssh.CryptoPublicKey); ok {
			if rk, ok := ck.CryptoPublicKey().(*rsa.PublicKey); ok {
				bits = rk.N.BitLen()
			}
		}
		if bits < minRSABits || bits > maxRSABits {
			return nil, nil, fmt.Errorf("RSA key of %d bits: %d to %d bits are supported (a larger signature does not fit in a knock)", bits, minRSABits, maxRSABits)
		}
	}
	k := &Key{PublicKey: pub, Comment: comment, Hash: sha256.Sum256(pub.Marshal())}
	k.Fingerprint = ssh.FingerprintSHA256(pub)
	warn, err := applyOptions(k, opts)
	if err != nil {
		return nil, nil, err
	}
	return k, warn, nil
}

// splitField returns the first blank-separated field of b, a double-quoted
// part of which may hold blanks, and what follows it, leading blanks
// removed.
func splitField(b []byte) (field, rest []byte) {
	quoted := false
	i := 0
	for ; i < len(b); i++ {
		c := b[i]
		if !quoted && (c == ' ' || c == '\t') {
			break
		}
		if c == '\\' && quoted && i+1 < len(b) && b[i+1] == '"' {
			i++
			continue
		}
		if c == '"' {
			quoted = !quoted
		}
	}
	if quoted {
		return b, nil
	}
	return b[:i], bytes.TrimLeft(b[i:], " \t")
}

// ignoredOptions concern only an SSH session (OpenSSH 9's
// sshauthopt_parse): a knock opens a port, it starts no session.
var ignoredOptions = map[string]bool{
	"agent-forwarding": true, "no-agent-forwarding": true,
	"port-forwarding": true, "no-port-forwarding": true,
	"x11-forwarding": true, "no-x11-forwarding": true,
	"pty": true, "no-pty": true,
	"user-rc": true, "no-user-rc": true,
	"restrict": true, "no-touch-required": true, "verify-required": true,
	"command": true, "environment": true, "permitopen": true,
	"permitlisten": true, "tunnel": true, "principals": true,
}

// applyOptions applies an options field (empty: none) to k.
func applyOptions(k *Key, field []byte) (warn []string, err error) {
	if len(field) == 0 {
		return nil, nil
	}
	seen := map[string]bool{}
	for s := string(field); s != ""; {
		var name, value string
		var hasValue bool
		name, value, hasValue, s, err = nextOption(s)
		if err != nil {
			return nil, err
		}
		lname := strings.ToLower(name)
		switch {
		case lname == "cert-authority":
			return nil, errors.New("cert-authority: certificates are not supported")
		case lname == "from" || lname == "expiry-time":
			if !hasValue {
				return nil, fmt.Errorf("option %s needs a value", name)
			}
			if seen[lname] {
				return nil, fmt.Errorf("option %s given twice", name)
			}
			seen[lname] = true
			if lname == "from" {
				var w []string
				k.From, w, err = ParsePatterns(value)
				if err != nil {
					return nil, fmt.Errorf("from=: %v", err)
				}
				warn = append(warn, w...)
			} else if k.Expiry, err = ParseExpiry(value, time.Local); err != nil {
				return nil, fmt.Errorf("expiry-time=: %v", err)
			}
		case ignoredOptions[lname]:
			// Ignored: see the package doc.
		default:
			return nil, fmt.Errorf("unknown option (or key type) %.40q (sshd refuses such a line too)", name)
		}
	}
	return warn, nil
}

// nextOption splits the first option off s: `name`, or `name="value"`
// with \" standing for a quote inside the value, as sshd reads it.
func nextOption(s string) (name, value string, hasValue bool, rest string, err error) {
	i := strings.IndexAny(s, ",=")
	if i < 0 {
		return s, "", false, "", nil
	}
	name = s[:i]
	if name == "" {
		return "", "", false, "", errors.New("empty option name")
	}
	if s[i] == ',' {
		if i+1 == len(s) {
			return "", "", false, "", errors.New("options field ends with a comma")
		}
		return name, "", false, s[i+1:], nil
	}
	s = s[i+1:]
	if !strings.HasPrefix(s, `"`) {
		return "", "", false, "", fmt.Errorf("option %.40s: value must be in double quotes", name)
	}
	var b strings.Builder
	for j := 1; j < len(s); j++ {
		switch c := s[j]; {
		case c == '\\' && j+1 < len(s) && s[j+1] == '"':
			b.WriteByte('"')
			j++
		case c == '"':
			rest = s[j+1:]
			if rest != "" {
				if rest[0] != ',' {
					return "", "", false, "", fmt.Errorf("option %.40s: junk after the closing quote", name)
				}
				rest = rest[1:]
				if rest == "" {
					return "", "", false, "", errors.New("options field ends with a comma")
				}
			}
			return name, b.String(), true, rest, nil
		default:
			b.WriteByte(c)
		}
	}
	return "", "", false, "", fmt.Errorf("option %.40s: no closing quote", name)
}

// ParseExpiry reads an expiry-time= value as sshd does: YYYYMMDD,
// YYYYMMDDHHMM or YYYYMMDDHHMMSS, in loc unless it ends in Z or UTC.
func ParseExpiry(s string, loc *time.Location) (time.Time, error) {
	v := s
	switch u := strings.ToUpper(v); {
	case strings.HasSuffix(u, "UTC") && len(v) > 3:
		v, loc = v[:len(v)-3], time.UTC
	case strings.HasSuffix(u, "Z") && len(v) > 1:
		v, loc = v[:len(v)-1], time.UTC
	}
	layout := map[int]string{8: "20060102", 12: "200601021504", 14: "20060102150405"}[len(v)]
	for _, c := range v {
		if c < '0' || c > '9' {
			layout = ""
		}
	}
	if layout == "" {
		return time.Time{}, fmt.Errorf("%.40q is not YYYYMMDD[HHMM[SS]][Z]", s)
	}
	t, err := time.ParseInLocation(layout, v, loc)
	if err != nil {
		return time.Time{}, fmt.Errorf("%.40q is not a valid date and time", s)
	}
	return t, nil
}
