package config

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ParseTCPFlags parses knockd's tcpflags: a comma-separated list of fin,
// syn, rst, psh, ack, urg, each of which may be negated with "!".
func ParseTCPFlags(s string) (TCPFlags, error) {
	bits := map[string]uint8{"fin": FlagFIN, "syn": FlagSYN, "rst": FlagRST, "psh": FlagPSH, "ack": FlagACK, "urg": FlagURG}
	var f TCPFlags
	for _, word := range strings.Split(s, ",") {
		word = strings.ToLower(strings.TrimSpace(word))
		name, neg := strings.CutPrefix(word, "!")
		bit, ok := bits[name]
		if !ok {
			return TCPFlags{}, fmt.Errorf("%q: %q is not one of fin, syn, rst, psh, ack, urg (each may be negated with !)", s, word)
		}
		if f.Mask&bit != 0 {
			return TCPFlags{}, fmt.Errorf("%q names %s twice", s, name)
		}
		f.Mask |= bit
		if !neg {
			f.Want |= bit
		}
	}
	return f, nil
}

// ParsePort parses an opened port: "22", "22:tcp", "1194:udp", or a
// range "60000-61000:udp".
func ParsePort(s string) (Port, error) {
	spec, proto, err := splitProto(s)
	if err != nil {
		return Port{}, err
	}
	if proto == ICMP {
		return Port{}, fmt.Errorf("%q: icmp is a knock step, not something a door opens", s)
	}
	first, last, isRange := strings.Cut(spec, "-")
	p := Port{Proto: proto}
	if p.Num, err = portNumber(s, first); err != nil {
		return Port{}, err
	}
	if isRange {
		if p.Last, err = portNumber(s, last); err != nil {
			return Port{}, err
		}
		if p.Last <= p.Num {
			return Port{}, fmt.Errorf("%q: a range runs from the lower port to the higher", s)
		}
	}
	return p, nil
}

// ParseKnock parses one knock step in knockd's notation: "7000",
// "7000:tcp", "8000:udp", or "1000:icmp" — an echo request carrying
// exactly 1000 bytes of payload (ping -s 1000).
func ParseKnock(s string) (Port, error) {
	spec, proto, err := splitProto(s)
	if err != nil {
		return Port{}, err
	}
	if proto == ICMP {
		n, err := strconv.ParseUint(spec, 10, 32)
		if err != nil || n > maxICMPPayload {
			return Port{}, fmt.Errorf("%q: an icmp knock is the payload size of a ping, 0-%d", s, maxICMPPayload)
		}
		return Port{Num: uint16(n), Proto: ICMP}, nil
	}
	p := Port{Proto: proto}
	if p.Num, err = portNumber(s, spec); err != nil {
		return Port{}, err
	}
	return p, nil
}

// ParseSequence parses a knock sequence as knockd's one_time_sequences
// files write it: steps separated by commas and/or spaces.
func ParseSequence(line string) ([]Port, error) {
	fields := strings.FieldsFunc(line, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' })
	if len(fields) == 0 {
		return nil, errors.New("empty sequence")
	}
	if len(fields) > maxSequence {
		return nil, fmt.Errorf("%d knocks; at most %d are allowed", len(fields), maxSequence)
	}
	seq := make([]Port, 0, len(fields))
	for _, f := range fields {
		p, err := ParseKnock(f)
		if err != nil {
			return nil, err
		}
		seq = append(seq, p)
	}
	return seq, nil
}

// maxICMPPayload is the largest echo payload an IPv4 packet can carry.
const maxICMPPayload = 65507

func splitProto(s string) (spec string, proto Proto, err error) {
	spec, name, hasProto := strings.Cut(strings.TrimSpace(s), ":")
	if !hasProto {
		return spec, TCP, nil
	}
	switch strings.ToLower(name) {
	case "tcp":
		return spec, TCP, nil
	case "udp":
		return spec, UDP, nil
	case "icmp":
		return spec, ICMP, nil
	}
	return "", 0, fmt.Errorf("%q: protocol %q is not tcp, udp or icmp", s, name)
}

func portNumber(s, num string) (uint16, error) {
	n, err := strconv.ParseUint(num, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%q: port is not a number: write PORT[:tcp|udp], e.g. \"7000:tcp\"", s)
	}
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("%q: port %d is out of range 1-65535", s, n)
	}
	return uint16(n), nil
}
