package ledger

import (
	"net/netip"
	"runtime"
	"testing"
	"time"
)

var (
	t0    = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	alice = Key{Addr: netip.MustParseAddr("198.51.100.1")}
	bob   = Key{Addr: netip.MustParseAddr("2001:db8::2")}
)

func TestPut(t *testing.T) {
	l := New()
	l.SetDoors(map[string]int{"ssh": 2})
	if r, _ := l.Put("nope", alice, time.Minute, "", t0); r != NoDoor {
		t.Errorf("Put to an unknown door: %v", r)
	}
	if r, g := l.Put("ssh", alice, time.Minute, "alice@laptop", t0); r != Added || !g.Expires.Equal(t0.Add(time.Minute)) || g.By != "alice@laptop" {
		t.Errorf("first Put: %v %+v", r, g)
	}
	if r, g := l.Put("ssh", alice, time.Minute, "", t0.Add(10*time.Second)); r != Refreshed || !g.Expires.Equal(t0.Add(70*time.Second)) {
		t.Errorf("Put again: %v %+v", r, g)
	}
	// A longer grant (nftknock grant) is never shortened by a knock.
	l.Record(Grant{Door: "ssh", Key: bob, Expires: t0.Add(time.Hour), Timeout: time.Hour})
	if r, g := l.Put("ssh", bob, time.Minute, "", t0); r != Kept || !g.Expires.Equal(t0.Add(time.Hour)) || g.Timeout != time.Hour {
		t.Errorf("Put under a longer grant: %v %+v", r, g)
	}
	// Full: two live grants.
	third := Key{Addr: netip.MustParseAddr("192.0.2.3")}
	if r, _ := l.Put("ssh", third, time.Minute, "", t0); r != Full {
		t.Errorf("Put into a full door: %v", r)
	}
	// Once one has run out there is room again.
	if r, _ := l.Put("ssh", third, time.Minute, "", t0.Add(2*time.Minute)); r != Added {
		t.Errorf("Put after a grant ran out: %v", r)
	}
	// 4in6 and zones: one address.
	if _, ok := l.Get("ssh", Key{Addr: netip.MustParseAddr("::ffff:192.0.2.3")}, t0.Add(2*time.Minute)); !ok {
		t.Error("a 4in6 address is not its IPv4 address")
	}
}

func TestExpiredAndLive(t *testing.T) {
	l := New()
	l.SetDoors(map[string]int{"a": 10, "b": 10})
	l.Put("a", alice, time.Second, "", t0)
	l.Put("a", bob, time.Minute, "", t0)
	l.Put("b", alice, 2*time.Second, "", t0)
	l.Put("a", alice, time.Second, "", t0.Add(500*time.Millisecond)) // refreshed: the stale expiry is skipped
	l.Record(Grant{Door: "b", Key: bob})                             // no timeout: never expires
	if got := l.Expired(t0.Add(time.Second)); len(got) != 0 {
		t.Errorf("expired at 1s: %+v, want none (alice's was refreshed)", got)
	}
	got := l.Expired(t0.Add(3 * time.Second))
	if len(got) != 2 || got[0].Door != "a" || got[0].Key != alice || got[1].Door != "b" || got[1].Key != alice {
		t.Errorf("expired at 3s: %+v", got)
	}
	live := l.Live("a", t0.Add(3*time.Second))
	if len(live) != 1 || live[0].Key != bob {
		t.Errorf("live: %+v", live)
	}
	if l.Len("b") != 1 {
		t.Errorf("b holds %d, want the grant without timeout", l.Len("b"))
	}
	l.SetDoors(map[string]int{"a": 10})
	if l.Len("b") != 0 || l.Len("a") != 1 {
		t.Error("SetDoors did not drop the removed door's grants, or dropped the kept door's")
	}
}

// TestRefreshesStayBounded: a grant refreshed again and again does not
// grow the ledger.
func TestRefreshesStayBounded(t *testing.T) {
	l := New()
	l.SetDoors(map[string]int{"ssh": 4})
	var before, after runtime.MemStats
	for i := range 100 {
		l.Put("ssh", alice, time.Minute, "", t0.Add(time.Duration(i)*time.Second))
	}
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range 200000 {
		l.Put("ssh", alice, time.Minute, "", t0.Add(time.Duration(100+i)*time.Millisecond))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > 1<<20 {
		t.Errorf("200000 refreshes of one grant grew the heap by %d bytes", grew)
	}
	if n := len(l.doors["ssh"].expiries); n > 2*l.Len("ssh")+1024 {
		t.Errorf("%d expiries kept for %d grants", n, l.Len("ssh"))
	}
}
