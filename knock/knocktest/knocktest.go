// Package knocktest builds packets as NFLOG hands them to the daemon (from
// the network header on), for tests that feed the daemon without a kernel.
package knocktest

import (
	"encoding/binary"
	"net/netip"
)

// TCP flags.
const (
	SYN = 0x02
	ACK = 0x10
)

// TCP is a TCP segment from src to dst:dport with flags, in an IPv4 or
// IPv6 packet as src's family says.
func TCP(src, dst netip.Addr, dport uint16, flags uint8) []byte {
	l4 := make([]byte, 20)
	binary.BigEndian.PutUint16(l4[0:], 40000)
	binary.BigEndian.PutUint16(l4[2:], dport)
	l4[12] = 5 << 4
	l4[13] = flags
	return ip(src, dst, 6, l4)
}

// UDP is a UDP datagram from src to dst:dport carrying payload.
func UDP(src, dst netip.Addr, dport uint16, payload []byte) []byte {
	l4 := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(l4[0:], 40000)
	binary.BigEndian.PutUint16(l4[2:], dport)
	binary.BigEndian.PutUint16(l4[4:], uint16(8+len(payload)))
	return ip(src, dst, 17, append(l4, payload...))
}

func ip(src, dst netip.Addr, proto byte, l4 []byte) []byte {
	if src.Is4() {
		h := make([]byte, 20, 20+len(l4))
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(l4)))
		h[8] = 64
		h[9] = proto
		s, d := src.As4(), dst.Unmap().As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		return append(h, l4...)
	}
	h := make([]byte, 40, 40+len(l4))
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(l4)))
	h[6] = proto
	h[7] = 64
	s, d := src.As16(), dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return append(h, l4...)
}
