package config

import "fmt"

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
