package knock

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"github.com/nftknock/nftknock/config"
)

// TCP flag bits as they stand in the TCP header's flags byte.
const (
	FlagFIN = config.FlagFIN
	FlagSYN = config.FlagSYN
	FlagRST = config.FlagRST
	FlagPSH = config.FlagPSH
	FlagACK = config.FlagACK
	FlagURG = config.FlagURG
)

// Packet is what the tracker needs of one logged packet.
type Packet struct {
	// Src is the source address. IPv4 sources are 4-byte addresses (not
	// 4in6); an IPv6 source is kept as the 16 bytes on the wire, even if it
	// happens to be v4-mapped, so the family always matches the header.
	Src netip.Addr
	// Proto is config.TCP, config.UDP, or config.ICMP for an echo request
	// (ICMP or ICMPv6).
	Proto config.Proto
	// DstPort is the transport destination port; for an echo request, the
	// size of its payload as the IP header tells it (what `ping -s N` sets),
	// however much of it the copy holds.
	DstPort uint16
	// Door is the door whose knock rule logged the packet (its index in the
	// config), or -1 for a packet the scan rule logged. The parser leaves it
	// alone: the NFLOG prefix, not the packet, says which rule matched.
	Door int
	// TCPFlags is the TCP header's flags byte, whole: besides the Flag*
	// bits it may carry ECE (0x40) and CWR (0x80), which an ECN-capable
	// client sets on its SYN, so callers should mask before comparing.
	// It is zero for UDP.
	TCPFlags uint8
}

// Sentinel errors. They are values, not wrapped, so the packet path does
// not allocate; callers compare with errors.Is or ==.
var (
	// ErrTruncated: the copy is too short for the headers the packet claims.
	ErrTruncated = errors.New("knock: packet truncated")
	// ErrFragment: a non-first fragment, which carries no ports.
	ErrFragment = errors.New("knock: non-first fragment")
	// ErrUnsupported: not IPv4/IPv6, not TCP/UDP, or a payload that cannot
	// be looked into (ESP, no next header).
	ErrUnsupported = errors.New("knock: unsupported packet")
	// ErrMalformed: a header field that no valid packet has, such as an
	// IPv4 IHL below 5, a TCP data offset below 5, or length fields that
	// contradict the headers.
	ErrMalformed = errors.New("knock: malformed packet")
)

// IP protocol / IPv6 next-header numbers the parser knows.
const (
	ipProtoHopByHop = 0
	ipProtoICMP     = 1
	ipProtoTCP      = 6
	ipProtoUDP      = 17
	ipProtoRouting  = 43
	ipProtoFragment = 44
	ipProtoESP      = 50
	ipProtoAH       = 51
	ipProtoICMPv6   = 58
	ipProtoNoNext   = 59
	ipProtoDstOpts  = 60

	icmpEchoRequest   = 8
	icmpv6EchoRequest = 128
	icmpHeader        = 8 // type, code, checksum, identifier, sequence
)

const (
	ipv4MinHeader = 20
	ipv6Header    = 40
	// tcpNeed covers the destination port and the flags byte (offset 13);
	// the options and the rest of the header are not needed.
	tcpNeed = 14
	// udpNeed covers the destination port.
	udpNeed = 4
	// maxExtHeaders bounds the IPv6 extension header walk. The walk is
	// already bounded by len(b) since each header is at least 8 bytes, but
	// an explicit cap makes the bound obvious and no real knock packet
	// carries more than a couple.
	maxExtHeaders = 16
)

// ParseIP fills p from b, which starts at the IPv4 or IPv6 header.
//
// Every byte of b is treated as hostile: ParseIP never reads outside b,
// never panics and never allocates. On error p may be partly written and
// must not be used.
func ParseIP(b []byte, p *Packet) error {
	if len(b) == 0 {
		return ErrTruncated
	}
	switch b[0] >> 4 {
	case 4:
		return parseIPv4(b, p)
	case 6:
		return parseIPv6(b, p)
	}
	return ErrUnsupported
}

func parseIPv4(b []byte, p *Packet) error {
	ihl := int(b[0]&0x0f) * 4
	if ihl < ipv4MinHeader {
		return ErrMalformed
	}
	if len(b) < ihl {
		return ErrTruncated
	}
	// The total length is honoured only as far as it is consistent: NFLOG's
	// copy range may cut the packet short, so a copy shorter than the total
	// length is normal, but a copy longer than it (trailing padding) must
	// not let us read an L4 header that lies outside the packet.
	// A total length of 0 (as IPv4 BIG TCP GSO packets use) is also below
	// the header length and is rejected; no knock packet is one of those.
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if total < ihl {
		return ErrMalformed
	}
	trimmed := false
	if total < len(b) {
		b = b[:total]
		trimmed = true
	}
	// A non-first fragment has no L4 header at its start; what is there is
	// payload, and reading "ports" from it would let anyone forge knocks
	// past the nft rule's port match. A first fragment (offset 0, MF set)
	// does start with the L4 header and is parsed normally.
	if binary.BigEndian.Uint16(b[6:8])&0x1fff != 0 {
		return ErrFragment
	}
	p.Src = netip.AddrFrom4([4]byte(b[12:16]))
	return parseL4(b[9], b[ihl:], total-ihl, trimmed, p)
}

func parseIPv6(b []byte, p *Packet) error {
	if len(b) < ipv6Header {
		return ErrTruncated
	}
	// As for IPv4, honour the payload length when it shortens the view.
	// A payload length of 0 means a jumbogram (or a BIG TCP GSO packet)
	// whose real length is elsewhere, so it is left alone.
	trimmed := false
	plen := int(binary.BigEndian.Uint16(b[4:6]))
	if plen != 0 && ipv6Header+plen < len(b) {
		b = b[:ipv6Header+plen]
		trimmed = true
	}
	p.Src = netip.AddrFrom16([16]byte(b[8:24]))

	next := b[6]
	off := ipv6Header
	for range maxExtHeaders {
		var n int
		switch next {
		case ipProtoTCP, ipProtoUDP, ipProtoICMPv6:
			l4len := -1 // a jumbogram's length is not in the header
			if plen != 0 {
				l4len = ipv6Header + plen - off
			}
			return parseL4(next, b[off:], l4len, trimmed, p)
		case ipProtoHopByHop, ipProtoRouting, ipProtoDstOpts:
			if len(b) < off+2 {
				return shortErr(trimmed)
			}
			n = (int(b[off+1]) + 1) * 8
		case ipProtoFragment:
			n = 8
			if len(b) < off+n {
				return shortErr(trimmed)
			}
			// Same reasoning as for IPv4: only the first fragment holds
			// the L4 header.
			if binary.BigEndian.Uint16(b[off+2:off+4])>>3 != 0 {
				return ErrFragment
			}
		case ipProtoAH:
			if len(b) < off+2 {
				return shortErr(trimmed)
			}
			n = (int(b[off+1]) + 2) * 4
		default:
			// ESP (encrypted), no next header and anything else:
			// there are no ports to read.
			return ErrUnsupported
		}
		// The whole extension header must be present, both so that the
		// next header byte of the following one is in range and because a
		// packet whose headers overrun it is not one we can trust.
		if len(b) < off+n {
			return shortErr(trimmed)
		}
		next = b[off]
		off += n
	}
	return ErrUnsupported
}

// parseL4 reads the TCP, UDP or ICMP echo request header at the start of
// b. l4len is the length of the L4 segment as the IP header states it (-1
// when it does not), which may exceed len(b): the copy may be cut short.
func parseL4(proto uint8, b []byte, l4len int, trimmed bool, p *Packet) error {
	switch proto {
	case ipProtoICMP, ipProtoICMPv6:
		if len(b) < 1 {
			return shortErr(trimmed)
		}
		if (proto == ipProtoICMP && b[0] != icmpEchoRequest) || (proto == ipProtoICMPv6 && b[0] != icmpv6EchoRequest) {
			return ErrUnsupported
		}
		if l4len < icmpHeader {
			return ErrMalformed
		}
		p.Proto = config.ICMP
		p.DstPort = uint16(l4len - icmpHeader)
		p.TCPFlags = 0
		return nil
	case ipProtoTCP:
		if len(b) < tcpNeed {
			return shortErr(trimmed)
		}
		// The data offset is the high nibble of byte 12. Only its lower
		// bound is checked: the options it covers are not needed and may
		// well be cut off by the copy range.
		if b[12]>>4 < 5 {
			return ErrMalformed
		}
		p.Proto = config.TCP
		p.DstPort = binary.BigEndian.Uint16(b[2:4])
		p.TCPFlags = b[13]
		return nil
	case ipProtoUDP:
		if len(b) < udpNeed {
			return shortErr(trimmed)
		}
		p.Proto = config.UDP
		p.DstPort = binary.BigEndian.Uint16(b[2:4])
		p.TCPFlags = 0
		return nil
	}
	return ErrUnsupported
}

// short says why a header did not fit: if the view was cut to the packet's
// own length field, the packet contradicts itself; otherwise the copy ran
// out.
func shortErr(trimmed bool) error {
	if trimmed {
		return ErrMalformed
	}
	return ErrTruncated
}

// UDPPayload returns the payload of the UDP datagram b holds (b starts at
// the IPv4 or IPv6 header), as a subslice of b: no copy, no allocation.
// It is what an SPA door needs besides what ParseIP gives. It honours the
// IP and UDP length fields as far as they are consistent, and reports
// ErrTruncated when the copy ends before the datagram does, so a caller
// never verifies a datagram NFLOG cut short. An IPv6 datagram must carry
// UDP right after the fixed header: an SPA client sends no extension
// headers, and a packet that has them is ErrUnsupported.
func UDPPayload(b []byte) ([]byte, error) {
	if len(b) == 0 {
		return nil, ErrTruncated
	}
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		ihl := int(b[0]&0x0f) * 4
		if ihl < ipv4MinHeader {
			return nil, ErrMalformed
		}
		if len(b) < ihl {
			return nil, ErrTruncated
		}
		total := int(binary.BigEndian.Uint16(b[2:4]))
		if total < ihl {
			return nil, ErrMalformed
		}
		if binary.BigEndian.Uint16(b[6:8])&0x3fff != 0 { // any fragment
			return nil, ErrFragment
		}
		if b[9] != ipProtoUDP {
			return nil, ErrUnsupported
		}
		if len(b) < total {
			return nil, ErrTruncated
		}
		l4 = b[ihl:total]
	case 6:
		if len(b) < ipv6Header {
			return nil, ErrTruncated
		}
		if b[6] != ipProtoUDP {
			return nil, ErrUnsupported
		}
		total := ipv6Header + int(binary.BigEndian.Uint16(b[4:6]))
		if len(b) < total {
			return nil, ErrTruncated
		}
		l4 = b[ipv6Header:total]
	default:
		return nil, ErrUnsupported
	}
	if len(l4) < 8 {
		return nil, ErrTruncated
	}
	ulen := int(binary.BigEndian.Uint16(l4[4:6]))
	if ulen < 8 || ulen > len(l4) {
		return nil, ErrMalformed
	}
	return l4[8:ulen], nil
}
