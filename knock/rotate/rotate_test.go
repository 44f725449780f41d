package rotate

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"math"
	"testing"
	"time"

	"github.com/nftknock/nftknock/config"
)

var (
	testKey   = []byte("0123456789abcdef0123456789abcdef")
	testRange = config.Port{Num: 20000, Last: 40000, Proto: config.TCP}
)

// TestKnownAnswer pins the derivation: a client and a daemon of different
// versions must agree on it, so any change to it is a format change.
func TestKnownAnswer(t *testing.T) {
	got := NewDeriver(testKey, "rot", 4, testRange).Sequence(58000000)
	// The first draw, computed here from the documented construction.
	msg := append([]byte(label+"rot\x00"), binary.BigEndian.AppendUint64(nil, 58000000)...)
	msg = binary.BigEndian.AppendUint32(msg, 0)
	m := hmac.New(sha256.New, testKey)
	m.Write(msg)
	v := binary.BigEndian.Uint32(m.Sum(nil))
	if v < math.MaxUint32/20001*20001 { // not skipped
		if want := uint16(20000 + v%20001); got[0].Num != want {
			t.Fatalf("first port %d, want %d from HMAC word %#x", got[0].Num, want, v)
		}
	}
	want := []uint16{got[0].Num, got[1].Num, got[2].Num, got[3].Num}
	pinned := []uint16{25431, 24448, 29532, 31881}
	for i := range pinned {
		if want[i] != pinned[i] {
			t.Fatalf("sequence of window 58000000 = %v, pinned %v: the derivation changed", want, pinned)
		}
	}
}

func TestSequenceShape(t *testing.T) {
	d := NewDeriver(testKey, "rot", 6, config.Port{Num: 1000, Last: 1255, Proto: config.UDP})
	for w := uint64(0); w < 2000; w++ {
		seq := d.Sequence(w)
		if len(seq) != 6 {
			t.Fatalf("window %d: %d ports, want 6", w, len(seq))
		}
		seen := map[uint16]bool{}
		for _, p := range seq {
			if p.Num < 1000 || p.Num > 1255 || p.Proto != config.UDP || p.Last != 0 {
				t.Fatalf("window %d: %v is outside 1000-1255:udp", w, p)
			}
			if seen[p.Num] {
				t.Fatalf("window %d: %v repeats a port", w, seq)
			}
			seen[p.Num] = true
		}
	}
}

func TestSequenceDependsOnEverything(t *testing.T) {
	base := NewDeriver(testKey, "rot", 4, testRange).Sequence(7)
	other := func(name string, seq []config.Port) {
		t.Helper()
		same := 0
		for i := range seq {
			if seq[i] == base[i] {
				same++
			}
		}
		if same == len(seq) {
			t.Errorf("%s gives the same sequence %v", name, seq)
		}
	}
	other("the next window", NewDeriver(testKey, "rot", 4, testRange).Sequence(8))
	other("another door", NewDeriver(testKey, "rot2", 4, testRange).Sequence(7))
	k2 := append([]byte(nil), testKey...)
	k2[31] ^= 1
	other("a key one bit off", NewDeriver(k2, "rot", 4, testRange).Sequence(7))
	// The same inputs give the same sequence, on a fresh Deriver or a used one.
	d := NewDeriver(testKey, "rot", 4, testRange)
	d.Sequence(99)
	if again := d.Sequence(7); again[0] != base[0] || again[3] != base[3] {
		t.Errorf("same window, different sequence: %v vs %v", again, base)
	}
}

// TestUniform: every port of a small range is drawn about equally often
// (a chi-squared test at a level a correct derivation fails once in ~10^6
// runs; the derivation is deterministic, so it never flakes).
func TestUniform(t *testing.T) {
	const size, windows = 256, 20000
	d := NewDeriver(testKey, "u", 1, config.Port{Num: 5000, Last: 5000 + size - 1, Proto: config.TCP})
	var counts [size]float64
	for w := uint64(0); w < windows; w++ {
		counts[d.Sequence(w)[0].Num-5000]++
	}
	exp := float64(windows) / size
	chi := 0.0
	for _, c := range counts {
		chi += (c - exp) * (c - exp) / exp
	}
	// 255 degrees of freedom: mean 255, sd ~22.6; 370 is ~5 sd out.
	if chi > 370 {
		t.Errorf("chi-squared %.0f over %d ports: the draw is biased", chi, size)
	}
}

func TestWindow(t *testing.T) {
	every := 30 * time.Second
	t0 := time.Unix(1_800_000_000, 0) // a multiple of 30 s
	for _, c := range []struct {
		at   time.Time
		want uint64
	}{
		{t0, 60_000_000},
		{t0.Add(-time.Millisecond), 59_999_999},
		{t0.Add(29999 * time.Millisecond), 60_000_000},
		{t0.Add(every), 60_000_001},
		{time.Unix(-5, 0), 0},
	} {
		if got := Window(c.at, every); got != c.want {
			t.Errorf("Window(%v) = %d, want %d", c.at.UTC(), got, c.want)
		}
	}
	if got := Start(60_000_001, every); !got.Equal(t0.Add(every)) {
		t.Errorf("Start = %v, want %v", got, t0.Add(every))
	}
	// A client a quarter window into a window still knocks with the one
	// before; past that, with the current one.
	if got := ClientWindow(t0.Add(7*time.Second), every); got != 59_999_999 {
		t.Errorf("ClientWindow 7 s in = %d, want the previous window", got)
	}
	if got := ClientWindow(t0.Add(8*time.Second), every); got != 60_000_000 {
		t.Errorf("ClientWindow 8 s in = %d, want the current window", got)
	}
}

func TestLengthBeyondRange(t *testing.T) {
	seq := NewDeriver(testKey, "x", 16, config.Port{Num: 10, Last: 12, Proto: config.TCP}).Sequence(1)
	if len(seq) != 3 {
		t.Fatalf("a 3-port range gave %d distinct ports", len(seq))
	}
}

func BenchmarkSequence(b *testing.B) {
	d := NewDeriver(testKey, "rot", 4, testRange)
	for i := 0; b.Loop(); i++ {
		d.Sequence(uint64(i))
	}
}
