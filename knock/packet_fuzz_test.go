package knock

import (
	"encoding/binary"
	"testing"

	"github.com/nftknock/nftknock/config"
)

// FuzzParseIP feeds ParseIP arbitrary bytes. Beyond "does not panic" it
// checks what the tracker relies on: an accepted packet is TCP or UDP from
// a valid source of the header's own family, and its fields are the bytes
// at the places the headers say; a rejected one yields a sentinel error.
func FuzzParseIP(f *testing.F) {
	for _, tc := range parseCases() {
		f.Add(tc.b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Packet
		err := ParseIP(b, &p)

		// Parsing must not depend on anything but b.
		var q Packet
		if err2 := ParseIP(b, &q); err2 != err || (err == nil && q != p) {
			t.Fatalf("second parse gave %+v, %v; first gave %+v, %v", q, err2, p, err)
		}

		if err != nil {
			switch err {
			case ErrTruncated, ErrFragment, ErrUnsupported, ErrMalformed:
			default:
				t.Fatalf("ParseIP error %v is not a sentinel", err)
			}
			return
		}

		if p.Proto != config.TCP && p.Proto != config.UDP && p.Proto != config.ICMP {
			t.Fatalf("accepted packet with Proto %v", p.Proto)
		}
		if p.Proto == config.ICMP && p.TCPFlags != 0 {
			t.Fatalf("ICMP packet with TCPFlags %#x", p.TCPFlags)
		}
		if !p.Src.IsValid() {
			t.Fatal("accepted packet with an invalid Src")
		}
		v4 := b[0]>>4 == 4
		if p.Src.Is4() != v4 {
			t.Fatalf("Src %v: Is4() = %v, header version %d", p.Src, p.Src.Is4(), b[0]>>4)
		}
		if p.Proto == config.UDP && p.TCPFlags != 0 {
			t.Fatalf("UDP packet with TCPFlags %#x", p.TCPFlags)
		}

		// Check the fields against the raw bytes where the L4 offset is
		// known without walking extension headers: IPv4, and IPv6 whose
		// first next header is already TCP or UDP.
		var l4 int
		var proto uint8
		if v4 {
			if len(b) < 20 {
				t.Fatalf("accepted a %d-byte IPv4 packet", len(b))
			}
			if src := p.Src.As4(); string(src[:]) != string(b[12:16]) {
				t.Fatalf("Src %v, header has % x", p.Src, b[12:16])
			}
			l4, proto = int(b[0]&0x0f)*4, b[9]
		} else {
			if len(b) < 40 {
				t.Fatalf("accepted a %d-byte IPv6 packet", len(b))
			}
			if src := p.Src.As16(); string(src[:]) != string(b[8:24]) {
				t.Fatalf("Src %v, header has % x", p.Src, b[8:24])
			}
			if b[6] != ipProtoTCP && b[6] != ipProtoUDP {
				return
			}
			l4, proto = 40, b[6]
		}
		if p.Proto == config.ICMP {
			return // its "port" is a length from the IP header, checked in TestParseIP
		}
		if uint8(p.Proto) != proto {
			t.Fatalf("Proto %v, header says %d", p.Proto, proto)
		}
		need := udpNeed
		if p.Proto == config.TCP {
			need = tcpNeed
		}
		if len(b) < l4+need {
			t.Fatalf("accepted %v packet with %d bytes of L4 header", p.Proto, len(b)-l4)
		}
		if port := binary.BigEndian.Uint16(b[l4+2:]); p.DstPort != port {
			t.Fatalf("DstPort %d, header has %d", p.DstPort, port)
		}
		if p.Proto == config.TCP && p.TCPFlags != b[l4+13] {
			t.Fatalf("TCPFlags %#x, header has %#x", p.TCPFlags, b[l4+13])
		}
	})
}
