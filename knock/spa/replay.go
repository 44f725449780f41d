package spa

import (
	"container/heap"
	"sync"
	"time"
)

// DefaultReplayCap bounds a Replay cache: the request ids of this many
// authentic requests, each kept only while its timestamp is inside the
// age window.
const DefaultReplayCap = 65536

// Replay remembers the ids of requests already used, for as long as a
// replay of them could still pass Open's age check, and no longer: an
// entry expires at its request's timestamp plus maxAge, when the same
// datagram turns stale. Memory is so bounded by time; Cap bounds it
// further.
//
// When Cap entries are live, a new request is refused (ErrBusy) rather
// than an old id forgotten: forgetting an id that is still inside its
// window would let that datagram be replayed, which is what the cache is
// for. Only authentic requests reach the cache, so filling it takes the
// key; a key holder who does so locks out only doors until the window
// passes, never opens one. Safe for concurrent use.
type Replay struct {
	mu  sync.Mutex
	cap int
	// born is when the cache began, empty: it cannot tell whether a
	// request sealed before then was used already (by a daemon that ran
	// before), so it refuses it (ErrBeforeStart).
	born int64 // unix nanos
	seen map[[16]byte]struct{}
	exp  expiries
}

type entry struct {
	id  [16]byte
	end int64 // unix nanos
}

type expiries []entry

func (e expiries) Len() int           { return len(e) }
func (e expiries) Less(i, j int) bool { return e[i].end < e[j].end }
func (e expiries) Swap(i, j int)      { e[i], e[j] = e[j], e[i] }
func (e *expiries) Push(x any)        { *e = append(*e, x.(entry)) }
func (e *expiries) Pop() any {
	old := *e
	x := old[len(old)-1]
	*e = old[:len(old)-1]
	return x
}

// NewReplay returns a cache of at most limit live ids (DefaultReplayCap if
// limit <= 0) that begins at now: requests sealed earlier are refused.
func NewReplay(limit int, now time.Time) *Replay {
	if limit <= 0 {
		limit = DefaultReplayCap
	}
	return &Replay{cap: limit, born: now.UnixNano(), seen: map[[16]byte]struct{}{}}
}

// Check records r's id and reports nil, or ErrBeforeStart if r was sealed
// before the cache began, ErrReplay if the id is already recorded, or
// ErrBusy if the cache is full. maxAge is the door's age window: the id is
// kept until r.Time+maxAge.
func (c *Replay) Check(r *Request, now time.Time, maxAge time.Duration) error {
	return c.CheckID(r.ID, r.Time, now, maxAge)
}

// CheckID is Check for a request of another format (a public-key SPA
// datagram, knock/sshspa) given by its random id and the time it was
// sealed. Both formats' ids are 16 random bytes, so one cache serves both.
func (c *Replay) CheckID(id [16]byte, sealed, now time.Time, maxAge time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sealed.UnixNano() < c.born {
		return ErrBeforeStart
	}
	c.prune(now)
	if _, ok := c.seen[id]; ok {
		return ErrReplay
	}
	if len(c.seen) >= c.cap {
		return ErrBusy
	}
	c.seen[id] = struct{}{}
	heap.Push(&c.exp, entry{id, sealed.UnixNano() + int64(maxAge)})
	return nil
}

// Prune forgets the ids whose requests are stale at now; the daemon calls
// it on a timer, Check on every insert.
func (c *Replay) Prune(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.prune(now)
}

func (c *Replay) prune(now time.Time) {
	n := now.UnixNano()
	for len(c.exp) > 0 && c.exp[0].end < n {
		e := heap.Pop(&c.exp).(entry)
		delete(c.seen, e.id)
	}
}

// Len is the number of live ids.
func (c *Replay) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}
