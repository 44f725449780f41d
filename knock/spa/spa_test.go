package spa

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 22, 7, 0, 0, 0, time.UTC)

func testKey(t testing.TB, b byte) *Key {
	raw := make([]byte, KeySize)
	for i := range raw {
		raw[i] = b
	}
	k, err := NewKey(raw)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func seal(t testing.TB, k *Key, door string, req netip.Addr, now time.Time) []byte {
	d, err := Seal(k, door, req, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(d) != Size {
		t.Fatalf("datagram is %d bytes, want %d", len(d), Size)
	}
	return d
}

func TestRoundTrip(t *testing.T) {
	k := testKey(t, 1)
	for _, req := range []netip.Addr{{}, netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("2001:db8::7"), netip.MustParseAddr("::ffff:192.0.2.1")} {
		d := seal(t, k, "ssh", req, t0)
		r, err := Open(k, "ssh", d, t0.Add(5*time.Second), 30*time.Second)
		if err != nil {
			t.Fatalf("%v: %v", req, err)
		}
		if !r.Time.Equal(t0) || r.Requested != req.Unmap() || r.ID == [16]byte{} {
			t.Errorf("%v: got %+v", req, r)
		}
	}
	a, b := seal(t, k, "ssh", netip.Addr{}, t0), seal(t, k, "ssh", netip.Addr{}, t0)
	if string(a) == string(b) {
		t.Error("two datagrams are the same")
	}
}

func TestRejections(t *testing.T) {
	k := testKey(t, 1)
	d := seal(t, k, "ssh", netip.Addr{}, t0)
	flip := func(i int) []byte { c := append([]byte(nil), d...); c[i] ^= 1; return c }
	cases := []struct {
		name string
		key  *Key
		door string
		dg   []byte
		now  time.Time
		want error
	}{
		{"truncated", k, "ssh", d[:Size-1], t0, ErrTruncated},
		{"empty", k, "ssh", nil, t0, ErrTruncated},
		{"oversized", k, "ssh", append(append([]byte(nil), d...), 0), t0, ErrOversized},
		{"magic", k, "ssh", flip(0), t0, ErrVersion},
		{"version", k, "ssh", flip(2), t0, ErrVersion},
		{"wrong key", testKey(t, 2), "ssh", d, t0, ErrAuth},
		{"nonce bit", k, "ssh", flip(3), t0, ErrAuth},
		{"payload bit", k, "ssh", flip(20), t0, ErrAuth},
		{"tag bit", k, "ssh", flip(Size - 1), t0, ErrAuth},
		{"stale", k, "ssh", d, t0.Add(31 * time.Second), ErrStale},
		{"future", k, "ssh", d, t0.Add(-31 * time.Second), ErrStale},
		{"wrong door", k, "sshd", d, t0, ErrWrongDoor},
		{"door prefix", k, "ss", d, t0, ErrWrongDoor},
	}
	for _, c := range cases {
		if _, err := Open(c.key, c.door, c.dg, c.now, 30*time.Second); err != c.want {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
	// Exactly at the edge of the window either way is still fresh.
	for _, now := range []time.Time{t0.Add(30 * time.Second), t0.Add(-30 * time.Second)} {
		if _, err := Open(k, "ssh", d, now, 30*time.Second); err != nil {
			t.Errorf("at %v: %v", now.Sub(t0), err)
		}
	}
	if _, err := Seal(k, "", netip.Addr{}, t0); err == nil {
		t.Error("Seal with no door name succeeded")
	}
}

func TestReplay(t *testing.T) {
	k := testKey(t, 1)
	const age = 30 * time.Second
	c := NewReplay(2, t0)
	r0, _ := Open(k, "ssh", seal(t, k, "ssh", netip.Addr{}, t0.Add(-time.Millisecond)), t0, age)
	if err := c.Check(&r0, t0, age); !errors.Is(err, ErrBeforeStart) {
		t.Fatalf("sealed before the cache began: %v, want ErrBeforeStart", err)
	}
	r1, _ := Open(k, "ssh", seal(t, k, "ssh", netip.Addr{}, t0), t0, age)
	r2, _ := Open(k, "ssh", seal(t, k, "ssh", netip.Addr{}, t0.Add(time.Second)), t0, age)
	r3, _ := Open(k, "ssh", seal(t, k, "ssh", netip.Addr{}, t0.Add(2*time.Second)), t0, age)
	if err := c.Check(&r1, t0, age); err != nil {
		t.Fatal(err)
	}
	if err := c.Check(&r1, t0.Add(age), age); !errors.Is(err, ErrReplay) {
		t.Fatalf("replay inside the window: %v", err)
	}
	if err := c.Check(&r2, t0, age); err != nil {
		t.Fatal(err)
	}
	if err := c.Check(&r3, t0, age); !errors.Is(err, ErrBusy) {
		t.Fatalf("full cache: %v, want ErrBusy", err)
	}
	// r1 expires once its datagram is stale; r2 a second later.
	c.Prune(t0.Add(age + time.Nanosecond))
	if c.Len() != 1 {
		t.Fatalf("after prune: %d ids, want 1", c.Len())
	}
	if err := c.Check(&r3, t0.Add(age+time.Nanosecond), age); err != nil {
		t.Fatal(err)
	}
	c.Prune(t0.Add(time.Hour))
	if c.Len() != 0 {
		t.Fatalf("after the window: %d ids", c.Len())
	}
}

func TestOpenZeroAllocs(t *testing.T) {
	k := testKey(t, 1)
	good := seal(t, k, "ssh", netip.MustParseAddr("2001:db8::1"), t0)
	bad := append([]byte(nil), good...)
	bad[40] ^= 0x80
	for name, d := range map[string][]byte{"good": good, "forged": bad} {
		if n := testing.AllocsPerRun(100, func() { _, _ = Open(k, "ssh", d, t0, time.Minute) }); n != 0 {
			t.Errorf("%s: %v allocations per Open", name, n)
		}
	}
}

func TestParseKey(t *testing.T) {
	raw, err := ParseKey([]byte(GenerateKey()))
	if err != nil || len(raw) != KeySize {
		t.Fatal(raw, err)
	}
	for _, s := range []string{"", "!!!", "AAAA\n"} {
		if _, err := ParseKey([]byte(s)); err == nil {
			t.Errorf("ParseKey(%q) succeeded", s)
		}
	}
}

func FuzzOpen(f *testing.F) {
	k := testKey(f, 1)
	f.Add(seal(f, k, "ssh", netip.Addr{}, t0))
	f.Add(seal(f, k, "ssh", netip.MustParseAddr("192.0.2.1"), t0))
	f.Add([]byte("NK\x01"))
	f.Fuzz(func(t *testing.T, d []byte) {
		orig := string(d)
		r, err := Open(k, "ssh", d, t0, 30*time.Second)
		if string(d) != orig {
			t.Fatal("Open changed its input")
		}
		if err == nil && r.Requested.IsValid() && !r.Requested.Is4() && !r.Requested.Is6() {
			t.Fatal("bad address")
		}
	})
}

func benchOpen(b *testing.B, forged bool) {
	k := testKey(b, 1)
	d := seal(b, k, "ssh", netip.Addr{}, t0)
	if forged {
		d[50] ^= 1
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		_, _ = Open(k, "ssh", d, t0, 30*time.Second)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "datagrams/s")
}

func BenchmarkOpen(b *testing.B)       { benchOpen(b, false) }
func BenchmarkOpenForged(b *testing.B) { benchOpen(b, true) }

// TestOpenFor: a sealed address equal to the source needs no
// spa_allow_requested; another one does.
func TestOpenFor(t *testing.T) {
	src := netip.MustParseAddr("192.0.2.7")
	other := netip.MustParseAddr("198.51.100.9")
	for _, c := range []struct {
		requested, src netip.Addr
		allow          bool
		want           netip.Addr
		err            error
	}{
		{netip.Addr{}, src, false, src, nil},
		{src, src, false, src, nil},
		{netip.MustParseAddr("::ffff:192.0.2.7"), src, false, src, nil},
		{src, netip.MustParseAddr("::ffff:192.0.2.7"), false, src, nil},
		{other, src, false, netip.Addr{}, ErrRequestedRefused},
		{other, src, true, other, nil},
		{netip.MustParseAddr("2001:db8::7"), src, false, netip.Addr{}, ErrRequestedRefused},
	} {
		r := Request{Requested: c.requested}
		got, err := r.OpenFor(c.src, c.allow)
		if got != c.want || err != c.err {
			t.Errorf("sealed %v from %v (allow %v): %v, %v; want %v, %v", c.requested, c.src, c.allow, got, err, c.want, c.err)
		}
	}
}

// TestReplayCheckID: CheckID is Check for an id and a time.
func TestReplayCheckID(t *testing.T) {
	const age = 30 * time.Second
	c := NewReplay(0, t0)
	id := [16]byte{1}
	if err := c.CheckID(id, t0.Add(-time.Nanosecond), t0, age); err != ErrBeforeStart {
		t.Fatalf("before start: %v", err)
	}
	if err := c.CheckID(id, t0, t0, age); err != nil {
		t.Fatal(err)
	}
	r := Request{ID: id, Time: t0}
	if err := c.Check(&r, t0.Add(time.Second), age); err != ErrReplay {
		t.Fatalf("same id through Check: %v", err)
	}
}
