package config

import (
	"math"
	"time"
)

// Rotating is a rotating-sequence door's kind: for each window of Every, a
// sequence of Length distinct ports of the range Ports is derived from the
// door's key (knock/rotate), and the daemon accepts the current and the
// previous window's.
type Rotating struct {
	// KeyFile holds the door's key (read by the daemon).
	KeyFile string
	Length  int
	Ports   Port // a range: Num to Last
	Every   time.Duration
	// SeqTimeout and TCPFlags are as a knock door's.
	SeqTimeout time.Duration
	TCPFlags   TCPFlags
}

// KindName implements Kind.
func (*Rotating) KindName() string { return "rotating sequence" }

// Claims implements Kind: the whole range, every port of which is dropped.
func (r *Rotating) Claims() []Claim {
	return []Claim{{Port: r.Ports, Field: "sequence_ports", What: "door %q's range", Own: "a rotating door's range must be ports of its own"}}
}

// Limits on a rotating door's sequence_length and rotate_every (a client
// needs time to send the sequence), which the client (nftknock knock
// -door) checks too.
const (
	MinRotatingLength = 2
	MaxRotatingLength = 16
	MinRotateEvery    = time.Second
)

// A rotating door's parameters when the file gives none. The client
// (nftknock knock -door) has the same defaults, so a door that keeps them
// needs only its key on the client.
const (
	DefaultSequenceLength = 4
	DefaultSequencePorts  = "20000-40000:tcp"
	DefaultRotateEvery    = 30 * time.Second
)

// A rotating door's sequence is drawn from at least minRotatingPorts ports
// and worth at least minRotatingBits bits: a blind guess succeeds less
// than once in 2^32 tries.
const (
	minRotatingPorts = 256
	minRotatingBits  = 32
	maxRotateEvery   = 24 * time.Hour
)

const derivesSequence = "a rotating door (one with sequence_key_file) derives its sequence: remove %s"

var rotatingKind = KindSpec{
	Name:      "a rotating door (one with sequence_key_file)",
	Selectors: []string{"sequence_key_file"},
	Keys:      []string{"sequence_key_file", "sequence_length", "sequence_ports", "rotate_every", "seq_timeout", "tcp_flags"},
	Refuse: map[string]string{
		"sequence":           derivesSequence,
		"one_time_sequences": derivesSequence,
		"close_sequence":     derivesSequence,
	},
	Parse: parseRotating,
}

func parseRotating(p *DoorParser) Kind {
	r := &Rotating{}
	r.KeyFile = p.Path("sequence_key_file", "")
	r.Length = DefaultSequenceLength
	if n, ok := p.Int("sequence_length"); ok {
		if n < MinRotatingLength || n > MaxRotatingLength {
			p.Errorf("sequence_length", "%d is out of range %d-%d", n, MinRotatingLength, MaxRotatingLength)
		} else {
			r.Length = int(n)
		}
	}
	ports := DefaultSequencePorts
	if s, ok := p.String("sequence_ports"); ok {
		ports = s
	}
	rng, err := ParsePort(ports)
	size := int(rng.End()) - int(rng.Num) + 1
	bits := float64(r.Length) * math.Log2(float64(size))
	switch {
	case err != nil:
		p.Errorf("sequence_ports", "%v", err)
	case size < minRotatingPorts:
		p.Errorf("sequence_ports", "%q holds %d ports: give a range of at least %d, e.g. %q", ports, size, minRotatingPorts, DefaultSequencePorts)
	case bits < minRotatingBits:
		p.Errorf("sequence_ports", "%d knocks over %d ports are worth %.0f bits: a blind guess would succeed about once in 2^%.0f tries; make sequence_length or the range larger (at least %d bits)",
			r.Length, size, bits, bits, minRotatingBits)
	default:
		r.Ports = rng
	}
	r.Every = DefaultRotateEvery
	if p.Has("rotate_every") {
		if e := p.Duration("rotate_every", DefaultRotateEvery, maxRotateEvery); e != 0 {
			if e < MinRotateEvery {
				s, _ := p.String("rotate_every")
				p.Errorf("rotate_every", "%q is shorter than %s: a client needs time to send the sequence", s, MinRotateEvery)
			} else {
				r.Every = e
			}
		}
	}
	r.SeqTimeout = p.Duration("seq_timeout", 0, maxSeqTimeout)
	if r.SeqTimeout > r.Every {
		p.Errorf("seq_timeout", "%s is longer than rotate_every (%s): a sequence is accepted for two windows from the one it was drawn for, so a knock begun late could not finish; make seq_timeout at most rotate_every", r.SeqTimeout, r.Every)
	}
	r.TCPFlags = p.TCPFlags()
	return r
}
