package knock

import (
	"net/netip"
	"testing"
	"time"

	"github.com/nftknock/nftknock/config"
)

// FuzzTracker feeds the tracker arbitrary packet streams — any door, scan
// packets, any source among a few, flags, protocols, time jumps — and
// checks what must hold whatever arrives: no panic, never more than
// max_tracked sources, every event well formed, a door opening only for a
// source whose last steps were exactly the door's sequence, and a sweep far
// in the future leaving nothing behind. A rotating door's sequences are
// replaced part-way through, as the daemon does each window.
func FuzzTracker(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 1, 0, 1, 0, 2, 0, 2, 0})
	f.Add([]byte{0x80, 3, 0, 0, 0xff, 0, 1, 5, 2, 9, 0x41, 7})
	f.Add([]byte{1, 4, 1, 0, 2, 4, 0x10, 0, 3, 4, 0x20, 0})
	// rot slot 1 gets 1234, 53/udp, 9000; the source walks it, the window turns.
	f.Add([]byte{0, 1, 2, 0xff, 0x20, 5, 2, 1, 0x20, 6, 0, 1, 0, 0, 2, 0xff, 0x20, 2, 2, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		ssh := sshDoor()
		ssh.Close = []config.Port{{Num: 9100, Proto: config.TCP}, {Num: 64, Proto: config.ICMP}}
		vpn := sshDoor()
		vpn.name, vpn.TCPFlags = "vpn", config.TCPFlags{Mask: FlagFIN, Want: FlagFIN}
		vpn.Slots = [][]config.Port{{{Num: 9000, Proto: config.TCP}, {Num: 7000, Proto: config.TCP}}}
		rot := sshDoor()
		rot.name, rot.Slots = "rot", [][]config.Port{nil, nil}
		doors := []namedDoor{ssh, vpn, rot}
		// What the rotating door's two slots follow now.
		var rotSeqs [2][]config.Port
		rotChoices := [][]config.Port{nil, {{Num: 7000, Proto: config.TCP}, {Num: 1234, Proto: config.TCP}},
			{{Num: 1234, Proto: config.TCP}, {Num: 53, Proto: config.UDP}, {Num: 9000, Proto: config.TCP}}}
		const max = 3
		// lastOpen[src][door] is the packets that moved each source
		// forward, to check an open against.
		tr := trackerFor(max, doors...)
		steps := []config.Port{{Num: 7000, Proto: config.TCP}, {Num: 8000, Proto: config.UDP}, {Num: 9000, Proto: config.TCP},
			{Num: 9100, Proto: config.TCP}, {Num: 64, Proto: config.ICMP}, {Num: 1234, Proto: config.TCP}, {Num: 53, Proto: config.UDP}}
		now := t0
		for len(data) >= 4 {
			b := data[:4]
			data = data[4:]
			if b[3] == 0xff { // the window turns
				slot := int(b[1]) % 2
				rotSeqs[slot] = rotChoices[int(b[2])%len(rotChoices)]
				tr.SetSequence(2, slot, rotSeqs[slot])
				continue
			}
			p := steps[int(b[1])%len(steps)]
			pkt := &Packet{
				Src:      netip.AddrFrom4([4]byte{192, 0, 2, b[0] % 5}),
				Proto:    p.Proto,
				DstPort:  p.Num,
				TCPFlags: b[2],
				Door:     int(b[0]>>4)%4 - 1, // -1 (scan rule), 0, 1 or 2
			}
			if p.Proto != config.TCP {
				pkt.TCPFlags = 0
			}
			now = now.Add(time.Duration(b[3]) * 50 * time.Millisecond)
			events := tr.Observe(now, pkt)
			if tr.Len() > max {
				t.Fatalf("%d sources tracked, max_tracked is %d", tr.Len(), max)
			}
			for _, e := range events {
				switch e.Kind {
				case EventEvict:
					if e.Door != -1 {
						t.Fatalf("eviction with a door: %+v", e)
					}
					continue
				case EventOpen, EventClose, EventStep, EventReset, EventTimeout:
				default:
					t.Fatalf("unknown event %+v", e)
				}
				if e.Door < 0 || e.Door >= len(doors) || e.Src != pkt.Src && e.Kind != EventTimeout {
					t.Fatalf("event %+v for packet %+v", e, pkt)
				}
				if e.Kind == EventOpen || e.Kind == EventClose {
					seq := doors[e.Door].Slots[e.Slot]
					if e.Door == 2 {
						seq = rotSeqs[e.Slot]
					}
					if e.Close {
						seq = doors[e.Door].Close
					}
					last := seq[len(seq)-1]
					if pkt.Door != e.Door || (config.Port{Num: pkt.DstPort, Proto: pkt.Proto}) != last {
						t.Fatalf("%v by a packet %+v that is not door %d's last step %v", e.Kind, pkt, e.Door, last)
					}
				}
			}
		}
		tr.Sweep(now.Add(time.Hour))
		if tr.Len() != 0 {
			t.Fatalf("%d sources left after a sweep an hour later", tr.Len())
		}
	})
}
