// Package ledger is the daemon's record of the grants it has made: for
// each door, which addresses (or, for a door that grants per port, which
// address, protocol and port) are let in, until when, and by whose key.
//
// The kernel's sets decide access; the ledger is what the daemon knows of
// them: it is written before the kernel is (so a grant is never in the
// kernel but missing here), updated from what others change in the sets,
// and it is what a restart, a reload and a heal restore the sets from.
// Each door's grants are bounded by its max_grants, the size of its sets:
// a full door refuses new grants until some run out.
//
// A Ledger is not safe for concurrent use: the gate owns it.
package ledger

import (
	"container/heap"
	"net/netip"
	"slices"
	"time"

	"github.com/nftknock/nftknock/config"
)

// Key is what a grant lets in.
type Key struct {
	Addr netip.Addr
	// Proto and Port, for a door that grants per port; zero for a grant
	// of all the door's opened ports.
	Proto config.Proto
	Port  uint16
}

// Grant is one grant of a door.
type Grant struct {
	Door string
	Key
	// Expires is when the kernel lets the element go; zero for an element
	// without timeout (one added by hand).
	Expires time.Time
	// Timeout is the element's whole timeout.
	Timeout time.Duration
	// By names who made it, when a key told ("" otherwise).
	By string
}

// Live tells whether the grant is still in force at now.
func (g *Grant) Live(now time.Time) bool { return g.Expires.IsZero() || now.Before(g.Expires) }

// Ledger holds the grants of every door.
type Ledger struct {
	doors map[string]*door
}

type door struct {
	name   string
	max    int
	grants map[key]entry
	// expiries orders the grants by expiry, for Expired; an entry whose
	// grant was refreshed or deleted since is skipped when it comes up.
	expiries expiryHeap
	// by interns the names of who made grants: few distinct ones.
	by []string
}

// key is a Key as the maps keep it: no pointer (netip.Addr has one), so
// a door of a million grants is no work for the garbage collector.
type key struct {
	addr  [16]byte
	v4    bool
	proto config.Proto
	port  uint16
}

type entry struct {
	expires int64 // unix nanoseconds; 0: no timeout
	timeout time.Duration
	by      uint32 // index in door.by, +1; 0: none
}

func toKey(k Key) key {
	a := k.Addr.Unmap().WithZone("")
	return key{addr: a.As16(), v4: a.Is4(), proto: k.Proto, port: k.Port}
}

func (k key) Key() Key {
	a := netip.AddrFrom16(k.addr)
	if k.v4 {
		a = a.Unmap()
	}
	return Key{Addr: a, Proto: k.proto, Port: k.port}
}

// New returns an empty Ledger.
func New() *Ledger { return &Ledger{doors: map[string]*door{}} }

// SetDoors makes the ledger hold the doors of limits, each bounded by its
// max_grants: doors gone lose their grants, doors kept keep theirs.
func (l *Ledger) SetDoors(limits map[string]int) {
	for name := range l.doors {
		if _, ok := limits[name]; !ok {
			delete(l.doors, name)
		}
	}
	for name, n := range limits {
		if d, ok := l.doors[name]; ok {
			d.max = n
			continue
		}
		l.doors[name] = &door{name: name, max: n, grants: map[key]entry{}}
	}
}

// Doors lists the doors, sorted.
func (l *Ledger) Doors() []string {
	var names []string
	for n := range l.doors {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Result is what Put did.
type Result uint8

// The results of Put.
const (
	// Added: a new grant.
	Added Result = iota + 1
	// Refreshed: a live grant got a new expiry.
	Refreshed
	// Kept: a live grant already outlasts the one asked for (a longer
	// grant from `nftknock grant`): a knock never shortens a grant.
	Kept
	// Full: the door holds max_grants live grants already.
	Full
	// NoDoor: the ledger has no such door.
	NoDoor
)

// Put records a grant of door to k for timeout from now, by by. It
// returns what it did and the grant as it now stands: for Kept, the
// longer one, which the caller writes back as it is.
func (l *Ledger) Put(doorName string, k Key, timeout time.Duration, by string, now time.Time) (Result, Grant) {
	d := l.doors[doorName]
	if d == nil {
		return NoDoor, Grant{}
	}
	kk := toKey(k)
	exp := now.Add(timeout)
	e, ok := d.grants[kk]
	res := Added
	switch {
	case ok && e.live(now) && (e.expires == 0 || e.expires > exp.UnixNano()):
		return Kept, d.grant(kk, e)
	case ok && e.live(now):
		res = Refreshed
	case len(d.grants) >= d.max:
		d.expire(now, nil)
		if len(d.grants) >= d.max {
			return Full, Grant{}
		}
	}
	e = entry{expires: exp.UnixNano(), timeout: timeout, by: d.intern(by)}
	d.set(kk, e)
	return res, d.grant(kk, e)
}

// Record files g as the kernel holds it (an element read back at start,
// or added by someone else), unless the door is full or unknown.
func (l *Ledger) Record(g Grant) {
	d := l.doors[g.Door]
	if d == nil {
		return
	}
	kk := toKey(g.Key)
	if _, ok := d.grants[kk]; !ok && len(d.grants) >= d.max {
		return
	}
	e := entry{timeout: g.Timeout, by: d.intern(g.By)}
	if !g.Expires.IsZero() {
		e.expires = g.Expires.UnixNano()
	}
	d.set(kk, e)
}

// Delete forgets door's grant to k.
func (l *Ledger) Delete(doorName string, k Key) {
	if d := l.doors[doorName]; d != nil {
		delete(d.grants, toKey(k))
	}
}

// Get returns door's grant to k, if it is live at now.
func (l *Ledger) Get(doorName string, k Key, now time.Time) (Grant, bool) {
	d := l.doors[doorName]
	if d == nil {
		return Grant{}, false
	}
	e, ok := d.grants[toKey(k)]
	if !ok || !e.live(now) {
		return Grant{}, false
	}
	return d.grant(toKey(k), e), true
}

// Len is how many grants door holds (some may have run out since the last
// Expired).
func (l *Ledger) Len(doorName string) int {
	if d := l.doors[doorName]; d != nil {
		return len(d.grants)
	}
	return 0
}

// Live lists door's grants live at now, by address: what a heal puts back.
func (l *Ledger) Live(doorName string, now time.Time) []Grant {
	d := l.doors[doorName]
	if d == nil {
		return nil
	}
	gs := make([]Grant, 0, len(d.grants))
	for k, e := range d.grants {
		if e.live(now) {
			gs = append(gs, d.grant(k, e))
		}
	}
	slices.SortFunc(gs, func(a, b Grant) int {
		if c := a.Addr.Compare(b.Addr); c != 0 {
			return c
		}
		return int(a.Port) - int(b.Port) + 256*(int(a.Proto)-int(b.Proto))
	})
	return gs
}

// Clear forgets every grant of door (its set was emptied), returning
// them.
func (l *Ledger) Clear(doorName string) []Grant {
	d := l.doors[doorName]
	if d == nil {
		return nil
	}
	var gs []Grant
	for k, e := range d.grants {
		gs = append(gs, d.grant(k, e))
	}
	d.grants = map[key]entry{}
	d.expiries = nil
	return gs
}

// Expired forgets the grants that ran out by now and returns them, door
// by door: the grants whose on_close hooks are due.
func (l *Ledger) Expired(now time.Time) []Grant {
	var out []Grant
	for _, name := range l.Doors() {
		l.doors[name].expire(now, &out)
	}
	return out
}

func (e entry) live(now time.Time) bool { return e.expires == 0 || now.UnixNano() < e.expires }

func (d *door) grant(k key, e entry) Grant {
	g := Grant{Door: d.name, Key: k.Key(), Timeout: e.timeout}
	if e.expires != 0 {
		g.Expires = time.Unix(0, e.expires)
	}
	if e.by != 0 {
		g.By = d.by[e.by-1]
	}
	return g
}

func (d *door) intern(by string) uint32 {
	if by == "" {
		return 0
	}
	if i := slices.Index(d.by, by); i >= 0 {
		return uint32(i + 1)
	}
	d.by = append(d.by, by)
	return uint32(len(d.by))
}

func (d *door) set(k key, e entry) {
	d.grants[k] = e
	if e.expires != 0 {
		heap.Push(&d.expiries, expiry{e.expires, k})
	}
	// Refreshes leave stale entries behind; drop them before they
	// outnumber the grants.
	if len(d.expiries) > 2*len(d.grants)+1024 {
		d.compact()
	}
}

// expire forgets the grants that ran out by now, appending them to out
// when it is not nil.
func (d *door) expire(now time.Time, out *[]Grant) {
	n := now.UnixNano()
	for len(d.expiries) > 0 && d.expiries[0].at <= n {
		x := heap.Pop(&d.expiries).(expiry)
		e, ok := d.grants[x.key]
		if !ok || e.expires != x.at {
			continue // refreshed or deleted since
		}
		delete(d.grants, x.key)
		if out != nil {
			*out = append(*out, d.grant(x.key, e))
		}
	}
}

func (d *door) compact() {
	h := d.expiries[:0]
	for _, x := range d.expiries {
		if e, ok := d.grants[x.key]; ok && e.expires == x.at {
			h = append(h, x)
		}
	}
	d.expiries = h
	heap.Init(&d.expiries)
}

type expiry struct {
	at  int64
	key key
}

type expiryHeap []expiry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiry)) }
func (h *expiryHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// Cursor walks the grants a door held when it was made, a few at a time,
// as they stand at each step: a heal puts back a million grants in chunks
// between other work, and must neither copy a million grants up front nor
// put back one that was revoked or ran out meanwhile.
type Cursor struct {
	l    *Ledger
	door string
	keys []key
}

// Cursor starts a walk over door's grants.
func (l *Ledger) Cursor(doorName string) *Cursor {
	c := &Cursor{l: l, door: doorName}
	if d := l.doors[doorName]; d != nil {
		c.keys = make([]key, 0, len(d.grants))
		for k := range d.grants {
			c.keys = append(c.keys, k)
		}
	}
	return c
}

// Next returns up to n of the walk's grants still live at now, and false
// once the walk is done.
func (c *Cursor) Next(n int, now time.Time) ([]Grant, bool) {
	d := c.l.doors[c.door]
	var out []Grant
	for len(c.keys) > 0 && len(out) < n {
		k := c.keys[len(c.keys)-1]
		c.keys = c.keys[:len(c.keys)-1]
		if d == nil {
			continue
		}
		if e, ok := d.grants[k]; ok && e.live(now) {
			out = append(out, d.grant(k, e))
		}
	}
	return out, len(c.keys) > 0
}

// Door is the door the walk is over.
func (c *Cursor) Door() string { return c.door }

// Left is how many grants the walk has still to look at.
func (c *Cursor) Left() int { return len(c.keys) }
