package knock

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/nftknock/nftknock/config"
)

// The packets below are assembled by hand, byte by byte, so that the tests
// state exactly what is on the wire and need no packet library.

var (
	testSrc4 = netip.MustParseAddr("192.0.2.10")
	testSrc6 = netip.MustParseAddr("2001:db8::10")
)

// mkTCP is a 20-byte TCP header (data offset 5, no options).
func mkTCP(sport, dport uint16, flags uint8) []byte {
	h := make([]byte, 20)
	binary.BigEndian.PutUint16(h[0:2], sport)
	binary.BigEndian.PutUint16(h[2:4], dport)
	binary.BigEndian.PutUint32(h[4:8], 0x01020304) // sequence number
	h[12] = 5 << 4
	h[13] = flags
	binary.BigEndian.PutUint16(h[14:16], 64240) // window
	return h
}

// mkUDP is an 8-byte UDP header followed by payload.
func mkUDP(sport, dport uint16, payload ...byte) []byte {
	h := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(h[0:2], sport)
	binary.BigEndian.PutUint16(h[2:4], dport)
	binary.BigEndian.PutUint16(h[4:6], uint16(8+len(payload)))
	return append(h, payload...)
}

// mkIPv4 is an IPv4 packet with a 20-byte header, a consistent total length,
// no fragmentation, carrying l4 as protocol proto.
func mkIPv4(proto uint8, l4 []byte) []byte {
	b := make([]byte, 20, 20+len(l4))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:4], uint16(20+len(l4)))
	binary.BigEndian.PutUint16(b[4:6], 0x1234) // identification
	b[8] = 64                                  // TTL
	b[9] = proto
	src := testSrc4.As4()
	copy(b[12:16], src[:])
	copy(b[16:20], []byte{198, 51, 100, 1})
	return append(b, l4...)
}

// withFrag4 sets the IPv4 flags/fragment offset field (offset in 8-byte
// units) and returns b.
func withFrag4(b []byte, mf bool, offset uint16) []byte {
	v := offset & 0x1fff
	if mf {
		v |= 0x2000
	}
	binary.BigEndian.PutUint16(b[6:8], v)
	return b
}

// mkIPv6 is an IPv6 packet whose first next header is next, followed by rest
// (extension headers and the L4 header), with a consistent payload length.
func mkIPv6(next uint8, rest []byte) []byte {
	b := make([]byte, 40, 40+len(rest))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:6], uint16(len(rest)))
	b[6] = next
	b[7] = 64 // hop limit
	src := testSrc6.As16()
	copy(b[8:24], src[:])
	dst := netip.MustParseAddr("2001:db8::1").As16()
	copy(b[24:40], dst[:])
	return append(b, rest...)
}

// mkOpts is a hop-by-hop, routing or destination options header of
// (units+1)*8 bytes (filled with PadN) whose next header is next.
func mkOpts(next uint8, units uint8) []byte {
	h := make([]byte, (int(units)+1)*8)
	h[0] = next
	h[1] = units
	h[2] = 1 // PadN option
	h[3] = uint8(len(h) - 4)
	return h
}

// mkFrag is an IPv6 fragment header (offset in 8-byte units).
func mkFrag(next uint8, offset uint16, mf bool) []byte {
	h := make([]byte, 8)
	h[0] = next
	v := offset << 3
	if mf {
		v |= 1
	}
	binary.BigEndian.PutUint16(h[2:4], v)
	binary.BigEndian.PutUint32(h[4:8], 0xdeadbeef) // identification
	return h
}

// mkAH is an IPv6 authentication header of (plen+2)*4 bytes.
func mkAH(next uint8, plen uint8) []byte {
	h := make([]byte, (int(plen)+2)*4)
	h[0] = next
	h[1] = plen
	binary.BigEndian.PutUint32(h[4:8], 0x100) // SPI
	return h
}

func mkCat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// parseCase is one packet and what ParseIP must make of it. need, for the
// successful cases, is the length of the shortest prefix that still
// parses: every shorter prefix must fail, every longer one must give the
// same result (the copy range may cut off the rest of the L4 header).
type parseCase struct {
	name string
	b    []byte
	want Packet
	err  error
	need int
}

func parseCases() []parseCase {
	tcpSYN := mkTCP(40000, 7000, FlagSYN)
	udp := mkUDP(40001, 8000, 'k', 'n', 'o', 'c', 'k')
	v4TCP := Packet{Src: testSrc4, Proto: config.TCP, DstPort: 7000, TCPFlags: FlagSYN}
	v4UDP := Packet{Src: testSrc4, Proto: config.UDP, DstPort: 8000}
	v6TCP := Packet{Src: testSrc6, Proto: config.TCP, DstPort: 7000, TCPFlags: FlagSYN}
	v6UDP := Packet{Src: testSrc6, Proto: config.UDP, DstPort: 8000}

	return []parseCase{
		// Accepted packets.
		{name: "v4 TCP SYN", b: mkIPv4(ipProtoTCP, tcpSYN), want: v4TCP, need: 20 + 14},
		{name: "v4 UDP", b: mkIPv4(ipProtoUDP, udp), want: v4UDP, need: 20 + 4},
		{
			name: "v4 TCP SYN ECN with options",
			b: func() []byte {
				// IHL 6 (one word of options) and TCP data offset 6.
				tcp := append(mkTCP(40000, 7001, FlagSYN|0x40|0x80), 2, 4, 5, 0xb4)
				tcp[12] = 6 << 4
				b := mkIPv4(ipProtoTCP, append([]byte{1, 1, 1, 0}, tcp...))
				b[0] = 0x46
				return b
			}(),
			want: Packet{Src: testSrc4, Proto: config.TCP, DstPort: 7001, TCPFlags: FlagSYN | 0x40 | 0x80},
			need: 24 + 14,
		},
		{name: "v4 first fragment", b: withFrag4(mkIPv4(ipProtoTCP, tcpSYN), true, 0), want: v4TCP, need: 20 + 14},
		{
			name: "v4 UDP with trailing padding",
			b:    append(mkIPv4(ipProtoUDP, mkUDP(40001, 8000)), make([]byte, 18)...),
			want: v4UDP,
			need: 20 + 4,
		},
		{
			name: "v4 TCP ACK|FIN",
			b:    mkIPv4(ipProtoTCP, mkTCP(1, 65535, FlagACK|FlagFIN)),
			want: Packet{Src: testSrc4, Proto: config.TCP, DstPort: 65535, TCPFlags: FlagACK | FlagFIN},
			need: 20 + 14,
		},
		{name: "v6 TCP SYN", b: mkIPv6(ipProtoTCP, tcpSYN), want: v6TCP, need: 40 + 14},
		{name: "v6 UDP", b: mkIPv6(ipProtoUDP, udp), want: v6UDP, need: 40 + 4},
		{
			name: "v6 hop-by-hop and destination options before TCP",
			b:    mkIPv6(ipProtoHopByHop, mkCat(mkOpts(ipProtoDstOpts, 0), mkOpts(ipProtoTCP, 1), tcpSYN)),
			want: v6TCP,
			need: 40 + 8 + 16 + 14,
		},
		{
			name: "v6 routing and AH before UDP",
			b:    mkIPv6(ipProtoRouting, mkCat(mkOpts(ipProtoAH, 2), mkAH(ipProtoUDP, 4), udp)),
			want: v6UDP,
			need: 40 + 24 + 24 + 4,
		},
		{
			name: "v6 first fragment",
			b:    mkIPv6(ipProtoFragment, mkCat(mkFrag(ipProtoTCP, 0, true), tcpSYN)),
			want: v6TCP,
			need: 40 + 8 + 14,
		},
		{
			name: "v6 atomic fragment",
			b:    mkIPv6(ipProtoFragment, mkCat(mkFrag(ipProtoUDP, 0, false), udp)),
			want: v6UDP,
			need: 40 + 8 + 4,
		},
		{
			name: "v6 v4-mapped source stays 16 bytes",
			b: func() []byte {
				b := mkIPv6(ipProtoUDP, udp)
				m := netip.MustParseAddr("::ffff:192.0.2.10").As16()
				copy(b[8:24], m[:])
				return b
			}(),
			want: Packet{Src: netip.MustParseAddr("::ffff:192.0.2.10"), Proto: config.UDP, DstPort: 8000},
			need: 40 + 4,
		},

		// Rejected packets.
		{name: "empty", b: nil, err: ErrTruncated},
		{name: "version 5", b: append([]byte{0x55}, make([]byte, 39)...), err: ErrUnsupported},
		{name: "version 0", b: make([]byte, 60), err: ErrUnsupported},
		{name: "v4 non-first fragment", b: withFrag4(mkIPv4(ipProtoTCP, tcpSYN), false, 185), err: ErrFragment},
		{name: "v4 last fragment offset 1", b: withFrag4(mkIPv4(ipProtoUDP, udp), true, 1), err: ErrFragment},
		{
			name: "v4 IHL 4",
			b:    func() []byte { b := mkIPv4(ipProtoTCP, tcpSYN); b[0] = 0x44; return b }(),
			err:  ErrMalformed,
		},
		{
			name: "v4 IHL 0 on a 1-byte copy",
			b:    []byte{0x40},
			err:  ErrMalformed,
		},
		{
			name: "v4 total length below IHL",
			b: func() []byte {
				b := mkIPv4(ipProtoTCP, tcpSYN)
				binary.BigEndian.PutUint16(b[2:4], 19)
				return b
			}(),
			err: ErrMalformed,
		},
		{
			name: "v4 total length ends inside the TCP header",
			b: func() []byte {
				b := mkIPv4(ipProtoTCP, tcpSYN)
				binary.BigEndian.PutUint16(b[2:4], 30)
				return b
			}(),
			err: ErrMalformed,
		},
		{
			name: "v4 IHL beyond the copy",
			b:    func() []byte { b := mkIPv4(ipProtoUDP, udp)[:30]; b[0] = 0x4f; return b }(),
			err:  ErrTruncated,
		},
		{name: "v4 ICMP echo request, empty", b: mkIPv4(ipProtoICMP, []byte{8, 0, 0, 0, 0, 1, 0, 1}),
			want: Packet{Src: testSrc4, Proto: config.ICMP, DstPort: 0}, need: 20 + 1},
		{name: "v4 ICMP echo request, ping -s 1000", b: mkIPv4(ipProtoICMP, append([]byte{8, 0, 0, 0, 0, 1, 0, 1}, make([]byte, 1000)...)),
			want: Packet{Src: testSrc4, Proto: config.ICMP, DstPort: 1000}, need: 20 + 1},
		{name: "v4 ICMP echo reply", b: mkIPv4(ipProtoICMP, []byte{0, 0, 0, 0, 0, 1, 0, 1}), err: ErrUnsupported},
		{name: "v4 ICMP shorter than its header", b: mkIPv4(ipProtoICMP, []byte{8, 0, 0, 0}), err: ErrMalformed},
		{name: "v4 ESP", b: mkIPv4(ipProtoESP, make([]byte, 16)), err: ErrUnsupported},
		{
			name: "v4 TCP data offset 4",
			b:    func() []byte { t := mkTCP(1, 2, FlagSYN); t[12] = 4 << 4; return mkIPv4(ipProtoTCP, t) }(),
			err:  ErrMalformed,
		},
		{
			name: "v6 fragment offset 1",
			b:    mkIPv6(ipProtoFragment, mkCat(mkFrag(ipProtoTCP, 1, true), tcpSYN)),
			err:  ErrFragment,
		},
		{
			name: "v6 last fragment after hop-by-hop",
			b:    mkIPv6(ipProtoHopByHop, mkCat(mkOpts(ipProtoFragment, 0), mkFrag(ipProtoUDP, 100, false), udp)),
			err:  ErrFragment,
		},
		{name: "v6 ESP", b: mkIPv6(ipProtoESP, make([]byte, 32)), err: ErrUnsupported},
		{
			name: "v6 ESP after destination options",
			b:    mkIPv6(ipProtoDstOpts, mkCat(mkOpts(ipProtoESP, 0), make([]byte, 32))),
			err:  ErrUnsupported,
		},
		{name: "v6 no next header", b: mkIPv6(ipProtoNoNext, nil), err: ErrUnsupported},
		{name: "v6 ICMPv6 echo request, ping -s 56", b: mkIPv6(ipProtoICMPv6, append([]byte{128, 0, 0, 0, 0, 1, 0, 1}, make([]byte, 56)...)),
			want: Packet{Src: testSrc6, Proto: config.ICMP, DstPort: 56}, need: 40 + 1},
		{name: "v6 ICMPv6 echo request after hop-by-hop", b: mkIPv6(ipProtoHopByHop, mkCat(mkOpts(ipProtoICMPv6, 0), []byte{128, 0, 0, 0, 0, 1, 0, 1}, make([]byte, 20))),
			want: Packet{Src: testSrc6, Proto: config.ICMP, DstPort: 20}, need: 40 + 8 + 1},
		{name: "v6 ICMPv6 neighbor solicitation", b: mkIPv6(ipProtoICMPv6, []byte{135, 0, 0, 0, 0, 0, 0, 0}), err: ErrUnsupported},
		{
			name: "v6 too many extension headers",
			b: func() []byte {
				var ext []byte
				for range maxExtHeaders {
					ext = append(ext, mkOpts(ipProtoDstOpts, 0)...)
				}
				return mkIPv6(ipProtoDstOpts, mkCat(ext, tcpSYN))
			}(),
			err: ErrUnsupported,
		},
		{
			name: "v6 extension header overruns the copy",
			b:    mkIPv6(ipProtoHopByHop, mkCat(mkOpts(ipProtoTCP, 0), tcpSYN))[:40+4],
			err:  ErrTruncated,
		},
		{
			name: "v6 payload length ends inside the extension header",
			b: func() []byte {
				b := mkIPv6(ipProtoHopByHop, mkCat(mkOpts(ipProtoTCP, 3), tcpSYN))
				binary.BigEndian.PutUint16(b[4:6], 16)
				return b
			}(),
			err: ErrMalformed,
		},
		{
			name: "v6 TCP data offset 0",
			b:    func() []byte { t := mkTCP(1, 2, FlagSYN); t[12] = 0; return mkIPv6(ipProtoTCP, t) }(),
			err:  ErrMalformed,
		},
	}
}

func TestParseIP(t *testing.T) {
	for _, tc := range parseCases() {
		t.Run(tc.name, func(t *testing.T) {
			var p Packet
			err := ParseIP(tc.b, &p)
			if err != tc.err {
				t.Fatalf("ParseIP() error = %v, want %v", err, tc.err)
			}
			if err != nil {
				return
			}
			if p != tc.want {
				t.Errorf("ParseIP() = %+v, want %+v", p, tc.want)
			}
			if got, want := p.Src.Is4(), tc.b[0]>>4 == 4; got != want {
				t.Errorf("Src.Is4() = %v, want %v", got, want)
			}
			if p.Src.Is4In6() && tc.b[0]>>4 == 4 {
				t.Errorf("IPv4 source %v returned as 4in6", p.Src)
			}
		})
	}
}

// TestParseIPPrefixes parses every prefix of every accepted packet: those
// shorter than the headers ParseIP needs must fail with ErrTruncated (the
// copy ran out; nothing in them is malformed), the others must give the
// same Packet as the whole one, since NFLOG's copy range may cut the
// packet anywhere after the bytes we need.
func TestParseIPPrefixes(t *testing.T) {
	for _, tc := range parseCases() {
		if tc.err != nil {
			// Prefixes of rejected packets must merely not panic.
			for n := range len(tc.b) {
				var p Packet
				_ = ParseIP(tc.b[:n], &p)
			}
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			if tc.need <= 0 || tc.need > len(tc.b) {
				t.Fatalf("bad test case: need = %d, len = %d", tc.need, len(tc.b))
			}
			for n := 0; n <= len(tc.b); n++ {
				// A fresh copy with no spare capacity, so that the race
				// detector and bounds checks would catch a read past n.
				b := append([]byte(nil), tc.b[:n]...)
				p := Packet{DstPort: 1234}
				err := ParseIP(b, &p)
				if n < tc.need {
					if !errors.Is(err, ErrTruncated) {
						t.Errorf("ParseIP(b[:%d]) error = %v, want %v", n, err, ErrTruncated)
					}
					continue
				}
				if err != nil {
					t.Errorf("ParseIP(b[:%d]) error = %v, want nil", n, err)
				} else if p != tc.want {
					t.Errorf("ParseIP(b[:%d]) = %+v, want %+v", n, p, tc.want)
				}
			}
		})
	}
}

// TestParseIPOverwrites checks that a reused Packet carries nothing over:
// the daemon parses every packet into the same value.
func TestParseIPOverwrites(t *testing.T) {
	var p Packet
	if err := ParseIP(mkIPv6(ipProtoTCP, mkTCP(1, 7000, FlagSYN|FlagACK)), &p); err != nil {
		t.Fatal(err)
	}
	if err := ParseIP(mkIPv4(ipProtoUDP, mkUDP(1, 8000)), &p); err != nil {
		t.Fatal(err)
	}
	want := Packet{Src: testSrc4, Proto: config.UDP, DstPort: 8000}
	if p != want {
		t.Errorf("got %+v, want %+v", p, want)
	}
}

func TestParseIPZeroAllocs(t *testing.T) {
	cases := []struct {
		name string
		b    []byte
	}{
		{"v4 TCP", mkIPv4(ipProtoTCP, mkTCP(40000, 7000, FlagSYN))},
		{"v6 TCP with extension header", mkIPv6(ipProtoHopByHop, mkCat(mkOpts(ipProtoTCP, 0), mkTCP(40000, 7000, FlagSYN)))},
		{"v4 UDP", mkIPv4(ipProtoUDP, mkUDP(40001, 8000))},
		{"v6 fragment rejected", mkIPv6(ipProtoFragment, mkCat(mkFrag(ipProtoTCP, 1, true), mkTCP(1, 2, 0)))},
		{"truncated", []byte{0x45, 0, 0}},
	}
	for _, tc := range cases {
		var p Packet
		allocs := testing.AllocsPerRun(1000, func() {
			_ = ParseIP(tc.b, &p)
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocations per ParseIP, want 0", tc.name, allocs)
		}
	}
}

func benchmarkParseIP(b *testing.B, pkt []byte) {
	var p Packet
	b.ReportAllocs()
	for b.Loop() {
		if err := ParseIP(pkt, &p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseIPv4TCP(b *testing.B) {
	benchmarkParseIP(b, mkIPv4(ipProtoTCP, mkTCP(40000, 7000, FlagSYN)))
}

func BenchmarkParseIPv6TCP(b *testing.B) {
	benchmarkParseIP(b, mkIPv6(ipProtoHopByHop, mkCat(mkOpts(ipProtoTCP, 0), mkTCP(40000, 7000, FlagSYN))))
}

func TestUDPPayload(t *testing.T) {
	data := []byte("payload!")
	udp := mkUDP(1, 62201, data...)
	for _, b := range [][]byte{mkIPv4(ipProtoUDP, udp), mkIPv6(ipProtoUDP, udp)} {
		got, err := UDPPayload(b)
		if err != nil || string(got) != string(data) {
			t.Errorf("UDPPayload = %q, %v", got, err)
		}
		if _, err := UDPPayload(b[:len(b)-1]); err != ErrTruncated {
			t.Errorf("cut short: %v, want ErrTruncated", err)
		}
		if n := testing.AllocsPerRun(100, func() { _, _ = UDPPayload(b) }); n != 0 {
			t.Errorf("%v allocations", n)
		}
	}
	if _, err := UDPPayload(mkIPv4(ipProtoTCP, mkTCP(1, 22, FlagSYN))); err != ErrUnsupported {
		t.Errorf("TCP: %v", err)
	}
}
