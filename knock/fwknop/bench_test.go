package fwknop

import (
	"fmt"
	"testing"
)

// BenchmarkOpen: a packet the stock client made, opened with its key, and
// the same packet opened with another door's key, which must cost one
// HMAC and nothing more (no decryption).
func BenchmarkOpen(b *testing.B) {
	keys := readGoldenKeys(b)
	a, other := keys["a"].key(b), keys["b"].key(b)
	g := readGolden(b, "access")
	b.Run("valid", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(g.payload)))
		for b.Loop() {
			if _, err := Open(a, g.payload, g.received, goldenMaxAge); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("wrong_hmac", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(g.payload)))
		for b.Loop() {
			if _, err := Open(other, g.payload, g.received, goldenMaxAge); err != ErrHMAC {
				b.Fatal(err)
			}
		}
	})
	junk := make([]byte, 1400)
	b.Run("junk", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Open(a, junk, g.received, goldenMaxAge); err != ErrNotFwknop {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkMatch: N doors share a port; a packet for none of them costs N
// HMACs, a packet for the last one N HMACs, then Open with its key.
func BenchmarkMatch(b *testing.B) {
	keys := readGoldenKeys(b)
	a, other := keys["a"].key(b), keys["b"].key(b)
	g := readGolden(b, "access")
	for _, n := range []int{1, 8, 64} {
		ks := make([]*Key, n)
		for i := range ks {
			ks[i] = other
		}
		b.Run(fmt.Sprintf("none_of_%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Match(ks, g.payload); err != ErrHMAC {
					b.Fatal(err)
				}
			}
		})
		last := append(ks[:n-1:n-1], a)
		b.Run(fmt.Sprintf("last_of_%d_then_open", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				i, err := Match(last, g.payload)
				if err != nil || i != n-1 {
					b.Fatal(i, err)
				}
				if _, err := Open(last[i], g.payload, g.received, goldenMaxAge); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
