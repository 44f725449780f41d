// Package config turns an nftknock TOML file into validated domain types.
//
// Decoding is strict (an unknown key is an error) and happens in two steps,
// as in CoreRAD: the TOML is decoded into raw structs of strings and
// integers, and those are then validated into the types below. Every error
// names the file, the door and the field.
package config

import (
	"fmt"
	"net/netip"
	"time"
)

// Proto is an IP protocol number a knock or an opened port uses.
type Proto uint8

// The protocols a port may name. ICMP stands for an echo request over
// ICMP or ICMPv6 alike: as a knock step, "N:icmp" is a ping whose payload
// is exactly N bytes (ping -s N), and Port.Num holds N.
const (
	ICMP Proto = 1
	TCP  Proto = 6
	UDP  Proto = 17
)

func (p Proto) String() string {
	switch p {
	case ICMP:
		return "icmp"
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// Port is a transport port with its protocol, as knockd writes it:
// "7000", "7000:tcp" or "8000:udp"; an opened port may be a range,
// "60000-61000:udp"; a knock step may be an echo request, "1000:icmp".
type Port struct {
	Num   uint16
	Last  uint16 // last port of a range; 0 for a single port
	Proto Proto
}

// Covers reports whether the knock k lands on a port p opens.
func (p Port) Covers(k Port) bool {
	return p.Proto == k.Proto && k.Num >= p.Num && k.Num <= p.End()
}

// Overlaps reports whether p and q share a port of the same protocol.
func (p Port) Overlaps(q Port) bool {
	return p.Proto == q.Proto && p.Num <= q.End() && q.Num <= p.End()
}

// End returns the last port the Port covers.
func (p Port) End() uint16 { return max(p.Num, p.Last) }

func (p Port) String() string {
	if p.Last > p.Num {
		return fmt.Sprintf("%d-%d:%s", p.Num, p.Last, p.Proto)
	}
	return fmt.Sprintf("%d:%s", p.Num, p.Proto)
}

// TCPFlags is knockd's tcpflags filter: a TCP knock counts only when
// flags&Mask == Want. "syn,!ack" is {Mask: SYN|ACK, Want: SYN}.
type TCPFlags struct {
	Mask, Want uint8
}

// TCP flag bits, as in the TCP header.
const (
	FlagFIN uint8 = 0x01
	FlagSYN uint8 = 0x02
	FlagRST uint8 = 0x04
	FlagPSH uint8 = 0x08
	FlagACK uint8 = 0x10
	FlagURG uint8 = 0x20
)

// DefaultTCPFlags is "syn,!ack": a connection attempt.
var DefaultTCPFlags = TCPFlags{Mask: FlagSYN | FlagACK, Want: FlagSYN}

// Match reports whether a TCP packet with flags counts as a knock.
func (f TCPFlags) Match(flags uint8) bool { return flags&f.Mask == f.Want }

// Door is one knock sequence and what it opens.
type Door struct {
	// Name is unique, [a-z0-9_]+; the door's sets are <Name>_v4 and <Name>_v6.
	Name string
	// Sequence is the ordered list of knocks. For a door with OneTime it
	// is the file's sequence due now, empty once the file has run out
	// (the door is then disabled: it opens nothing).
	Sequence []Port
	// CloseSequence, if any, removes the source's grant at once.
	CloseSequence []Port
	// OneTime is the path of a knockd one_time_sequences file, or "".
	OneTime string
	// SeqTimeout bounds the whole sequence, counted from the first knock.
	SeqTimeout time.Duration
	// TCPFlags filters TCP knocks; other TCP packets are ignored.
	TCPFlags TCPFlags
	// Interface, if set, is the only input interface knocks count on.
	Interface string
	// Open lists the ports a completed knock opens.
	Open []Port
	// OpenToAnyone opens them to every address, not just the knocking one.
	OpenToAnyone bool
	// OpenFor is the timeout of the kernel set element a knock adds.
	OpenFor time.Duration
	// AlwaysAllow are networks that reach the door's ports without knocking.
	AlwaysAllow []netip.Prefix
	// OnOpen and OnClose are argv arrays run (never through a shell) when
	// the door opens for a source and when that grant ends; "{src}" and
	// "{door}" are replaced when they are a whole argument.
	OnOpen, OnClose []string
	// HookTimeout bounds each hook's run.
	HookTimeout time.Duration

	// SPA doors (single-packet authorization) have SPAPort set and no
	// Sequence: one authentic UDP datagram to SPAPort opens them.
	SPAPort Port
	// KeyFile is the door's key file; Key its 32 bytes, read at load.
	KeyFile string
	Key     []byte
	// SPAMaxAge is how far a datagram's timestamp may be from now, either
	// way (clock skew plus transit).
	SPAMaxAge time.Duration
	// SPAAllowRequested lets a datagram ask for another address than its
	// source (a client behind NAT that knows its public address).
	SPAAllowRequested bool

	// Rotating doors have RotateEvery set and no fixed sequence: for each
	// window of RotateEvery, a sequence of SequenceLength distinct ports of
	// the range SequencePorts is derived from SequenceKey (knock/rotate),
	// and the daemon accepts the current and the previous window's.
	SequenceKeyFile string
	SequenceKey     []byte
	SequenceLength  int
	SequencePorts   Port // a range: Num to Last
	RotateEvery     time.Duration
}

// IsRotating reports whether d is a rotating-sequence door.
func (d *Door) IsRotating() bool { return d.RotateEvery > 0 }

// IsSPA reports whether d is a single-packet authorization door.
func (d *Door) IsSPA() bool { return d.SPAPort.Num != 0 }

// Config is a whole validated configuration.
type Config struct {
	// File is where the configuration was read from, for messages.
	File string
	// NFLOGGroup is the netlink log group the knock rules log to.
	NFLOGGroup uint16
	// Table is the name of the `table inet` the daemon owns.
	Table string
	// MaxTracked bounds the number of sources whose progress is tracked.
	MaxTracked int
	// Doors are the configured doors, in file order.
	Doors []Door
}

// Defaults for the optional top-level keys.
const (
	DefaultNFLOGGroup = 7113
	DefaultTable      = "nftknock"
	DefaultMaxTracked = 65536
)
