package config

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Fwknop is an fwknop door's kind: the SPA packets the stock fwknop
// client sends (fwknop -A tcp/22 --use-hmac ...) open it, so that
// fwknopd's users change servers without touching a client. A door is one
// access.conf stanza: its keys, what it may open (open: OPEN_PORTS), for
// how long (open_for: FW_ACCESS_TIMEOUT), from where. Several fwknop doors
// may share one port, as fwknopd's stanzas share its one: a packet belongs
// to the door whose HMAC key made it.
type Fwknop struct {
	// Port is the UDP port the packets go to (fwknopd's 62201).
	Port Port
	// KeyFile holds the stanza's KEY_BASE64, HMACKeyFile its
	// HMAC_KEY_BASE64 (read by the daemon).
	KeyFile, HMACKeyFile string
	// MaxAge is MAX_SPA_PACKET_AGE: how far a packet's timestamp may be
	// from now, either way.
	MaxAge time.Duration
	// MaxOpenFor is MAX_FW_TIMEOUT: the cap on a client's -f.
	MaxOpenFor time.Duration
	// Sources are SOURCE: the networks a packet may come from.
	Sources []netip.Prefix
	// RequireSource is REQUIRE_SOURCE_ADDRESS, and more: a request must
	// name the address to open (-a, not -s's 0.0.0.0), and that address
	// must be the packet's source.
	RequireSource bool
}

// KindName implements Kind.
func (*Fwknop) KindName() string { return "fwknop SPA" }

// Claims implements Kind: the port, shared with the other fwknop doors
// only.
func (f *Fwknop) Claims() []Claim {
	return []Claim{{Port: f.Port, Field: "fwknop_port", What: "door %q's fwknop port", Share: "fwknop",
		Own: "an fwknop port may be shared by fwknop doors only, and must not be an opened port"}}
}

// GrantsPerPort tells that a grant of the door names one of its opened
// ports, which it opens alone: a request opens what it asks for.
func (*Fwknop) GrantsPerPort() bool { return true }

// Defaults of an fwknop door: fwknopd's own.
const (
	// DefaultFwknopMaxAge is fwknopd's MAX_SPA_PACKET_AGE.
	DefaultFwknopMaxAge = 120 * time.Second
	// DefaultFwknopMaxOpenFor is fwknopd's MAX_FW_TIMEOUT.
	DefaultFwknopMaxOpenFor = 300 * time.Second
)

const maxFwknopMaxAge = time.Hour

const fwknopKeys = "an fwknop door's keys are fwknop_key_file (KEY_BASE64) and fwknop_hmac_key_file (HMAC_KEY_BASE64): rename %s"

var fwknopKind = KindSpec{
	Name:      "an fwknop door (one with fwknop_port)",
	Selectors: []string{"fwknop_port"},
	Keys: []string{"fwknop_port", "fwknop_key_file", "fwknop_hmac_key_file", "fwknop_max_age", "fwknop_max_open_for",
		"fwknop_source", "fwknop_require_source"},
	Refuse: map[string]string{
		"key_file":    fwknopKeys,
		"spa_max_age": "an fwknop door's packet age is fwknop_max_age (MAX_SPA_PACKET_AGE): rename %s",
		"seq_timeout": "an fwknop door has no knock sequence to time out: remove %s",
	},
	Parse: parseFwknop,
}

func parseFwknop(p *DoorParser) Kind {
	f := &Fwknop{}
	raw, _ := p.String("fwknop_port")
	port, err := ParseKnock(raw)
	switch {
	case err != nil:
		p.Errorf("fwknop_port", "%v", err)
	case port.Proto != UDP || !strings.Contains(raw, ":"):
		p.Errorf("fwknop_port", "%q: an fwknop port is a UDP port, written \"62201:udp\" (the client's -P tcp, http and icmp are not read)", raw)
	default:
		f.Port = port
	}
	f.KeyFile = p.Path("fwknop_key_file", "the stanza's KEY_BASE64 value, in a file of its own (nftknock migrate -fwknop writes it)")
	f.HMACKeyFile = p.Path("fwknop_hmac_key_file", "an fwknop door needs the stanza's HMAC key (HMAC_KEY_BASE64, the clients' --use-hmac): "+
		"without one a packet would be decrypted before anything proved it authentic, and a passphrase KEY could be guessed offline from one captured packet; "+
		"make keys with fwknop --key-gen and give the clients --use-hmac")
	f.MaxAge = p.Duration("fwknop_max_age", DefaultFwknopMaxAge, maxFwknopMaxAge)
	f.MaxOpenFor = p.Duration("fwknop_max_open_for", DefaultFwknopMaxOpenFor, maxOpenFor)
	f.RequireSource, _ = p.Bool("fwknop_require_source")

	if !p.Has("fwknop_source") {
		f.Sources = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	} else if nets, ok := p.Strings("fwknop_source"); ok {
		if len(nets) == 0 {
			p.Errorf("fwknop_source", "empty: list the networks requests may come from (SOURCE), or leave fwknop_source out for any")
		}
		for j, s := range nets {
			n, err := parseNetwork(s)
			if err != nil {
				p.Errorf(fmt.Sprintf("fwknop_source[%d]", j), "%v", err)
				continue
			}
			f.Sources = append(f.Sources, n)
		}
	}

	// A request names single ports, and opens them for one address.
	open, _ := p.Strings("open")
	for j, s := range open {
		if port, err := ParsePort(s); err == nil && port.Last > port.Num {
			p.Errorf(fmt.Sprintf("open[%d]", j), "%q: an fwknop door opens single ports, as OPEN_PORTS lists them (a request asks for tcp/22, not a range): list each port", s)
		}
	}
	if s, _ := p.String("open_to"); s == "anyone" {
		p.Errorf("open_to", "an fwknop door opens to the address a request names (-a) or its source (-s), never to anyone: remove open_to")
	}
	if s, _ := p.String("hook"); s == "forward" {
		p.Errorf("hook", "an fwknop door grants per port on the input hook only; a forwarded port needs a knock or SPA door: remove hook")
	}
	return f
}
