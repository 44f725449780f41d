package config

import (
	"strings"
	"time"
)

// SPA is a single-packet authorization door's kind: one authentic UDP
// datagram to Port, sealed with the door's key, opens it.
type SPA struct {
	// Port is the UDP port the datagrams go to.
	Port Port
	// KeyFile holds the door's key (read by the daemon).
	KeyFile string
	// MaxAge is how far a datagram's timestamp may be from now, either
	// way (clock skew plus transit).
	MaxAge time.Duration
	// AllowRequested lets a datagram ask for another address than its
	// source (a client behind NAT that knows its public address).
	AllowRequested bool
}

// KindName implements Kind.
func (*SPA) KindName() string { return "single-packet authorization" }

// Claims implements Kind: the SPA port, the door's own.
func (s *SPA) Claims() []Claim { return []Claim{spaClaim(s.Port)} }

// spaClaim is the claim of an SPA door's port, of either kind.
func spaClaim(p Port) Claim {
	return Claim{Port: p, Field: "spa_port", What: "door %q's SPA port", Own: "an SPA port must be a port of its own"}
}

// DefaultSPAMaxAge is an SPA door's spa_max_age when the file gives none.
const DefaultSPAMaxAge = 30 * time.Second

const maxSPAMaxAge = time.Hour

var spaKind = KindSpec{
	Name:      "an SPA door (one with spa_port)",
	Selectors: []string{"spa_port"},
	Keys:      []string{"spa_port", "key_file", "spa_max_age", "spa_allow_requested"},
	Refuse: map[string]string{
		"seq_timeout": "an SPA door has no knock sequence to time out: remove %s",
	},
	Parse: parseSPA,
}

func parseSPA(p *DoorParser) Kind {
	s := &SPA{Port: spaPort(p)}
	s.KeyFile = p.Path("key_file", "an SPA door needs a key file (nftknock keygen > FILE; chmod 600 FILE)")
	s.MaxAge = p.Duration("spa_max_age", DefaultSPAMaxAge, maxSPAMaxAge)
	s.AllowRequested, _ = p.Bool("spa_allow_requested")
	return s
}

// spaPort is the door's spa_port: a UDP port, written with its protocol.
func spaPort(p *DoorParser) Port {
	raw, _ := p.String("spa_port")
	port, err := ParseKnock(raw)
	switch {
	case err != nil:
		p.Errorf("spa_port", "%v", err)
	case port.Proto != UDP || !strings.Contains(raw, ":"):
		p.Errorf("spa_port", "%q: an SPA port is a UDP port, written \"62201:udp\"", raw)
	default:
		return port
	}
	return Port{}
}
