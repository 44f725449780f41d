package config

import (
	"fmt"
	"slices"
	"time"
)

// Sequence is a knock door's kind, knockd's: a fixed sequence of knocks,
// or the sequences of a one_time_sequences file, each good for one open;
// and optionally a close sequence that ends a source's grant at once.
type Sequence struct {
	// Sequence is the ordered list of knocks; empty for a one-time door,
	// whose sequence due now is in OneTimeFile (read by the daemon).
	Sequence []Port
	// CloseSequence, if any, removes the source's grant at once.
	CloseSequence []Port
	// OneTimeFile is the path of a knockd one_time_sequences file, or "".
	OneTimeFile string
	// SeqTimeout bounds the whole sequence, counted from the first knock.
	SeqTimeout time.Duration
	// TCPFlags filters TCP knocks; other TCP packets are ignored.
	TCPFlags TCPFlags
}

// KindName implements Kind.
func (*Sequence) KindName() string { return "knock sequence" }

// Claims implements Kind: every knock, shared with other knock doors.
func (s *Sequence) Claims() []Claim {
	var cs []Claim
	for _, list := range []struct {
		field string
		seq   []Port
	}{{"sequence", s.Sequence}, {"close_sequence", s.CloseSequence}} {
		for j, k := range list.seq {
			cs = append(cs, KnockClaim(fmt.Sprintf("%s[%d]", list.field, j), k))
		}
	}
	return cs
}

// KnockClaim is the claim of one knock step of a knock door.
func KnockClaim(field string, k Port) Claim {
	return Claim{Port: k, Field: field, What: "a knock of door %q", Share: "knock",
		Own: "a knock port must not be an opened port"}
}

var sequenceKind = KindSpec{
	Name:      "a knock door (one with sequence or one_time_sequences)",
	Selectors: []string{"sequence", "one_time_sequences", "close_sequence"},
	Keys:      []string{"sequence", "one_time_sequences", "close_sequence", "seq_timeout", "tcp_flags"},
	Parse:     parseSequence,
}

func parseSequence(p *DoorParser) Kind {
	s := &Sequence{}
	switch {
	case p.Has("one_time_sequences") && p.Has("sequence"):
		p.Errorf("one_time_sequences", "a door has either sequence or one_time_sequences, not both")
	case p.Has("one_time_sequences"):
		s.OneTimeFile = p.Path("one_time_sequences", "")
	default:
		s.Sequence = sequence(p, "sequence")
	}
	if p.Has("close_sequence") {
		s.CloseSequence = sequence(p, "close_sequence")
		if slices.Equal(s.CloseSequence, s.Sequence) && len(s.Sequence) > 0 {
			p.Errorf("close_sequence", "is the same as sequence: a knock could not tell opening from closing")
		}
	}
	s.SeqTimeout = p.Duration("seq_timeout", 0, maxSeqTimeout)
	s.TCPFlags = p.TCPFlags()
	return s
}

// sequence validates a list of knocks.
func sequence(p *DoorParser, key string) []Port {
	seq := p.Ports(key, maxSequence, ParseKnock, `list the knocks, e.g. ["7000:tcp", "8000:udp"]`)
	raw, _ := p.Strings(key)
	for j := 1; j < len(raw); j++ {
		prev, err1 := ParseKnock(raw[j-1])
		k, err2 := ParseKnock(raw[j])
		if err1 == nil && err2 == nil && k == prev {
			p.Errorf(fmt.Sprintf("%s[%d]", key, j),
				"%s repeats the knock before it: a repeated knock cannot be told from a retransmitted packet", k)
		}
	}
	return seq
}
