package gate

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/nftknock/nftknock/nft"
	"github.com/nftknock/nftknock/nft/plan"
)

// FakeFirewall is a Firewall that keeps its table in memory, for tests of
// the daemon's logic without root: what nf_tables would hold, as far as
// the gate can tell. Elements expire by its clock. Tests damage it as
// `nft` would (Flush, AddElement, DeleteElement), which its Watcher
// reports, and read it back (Elements, Plan). It is safe for concurrent
// use: the gate calls it, the test looks.
type FakeFirewall struct {
	mu   sync.Mutex
	now  func() time.Time
	plan *plan.Plan
	sets map[string]map[string]fakeElement
	// Installs counts successful installs; Fail, when set, is what the
	// next Install returns instead (and is then cleared).
	installs int
	fail     error
	failPut  error
	// Hold, when not nil, makes Install wait until it is closed: a
	// wedged kernel.
	Hold chan struct{}
	// HoldRead, when not nil, holds the Reads of Readers made meanwhile.
	HoldRead chan struct{}
	watcher  *fakeWatcher
}

type fakeElement struct {
	key     []byte
	timeout time.Duration
	expires time.Time // zero: none
	comment string
}

// NewFakeFirewall returns an empty fake table whose elements expire by
// now.
func NewFakeFirewall(now func() time.Time) *FakeFirewall {
	if now == nil {
		now = time.Now
	}
	return &FakeFirewall{now: now, sets: map[string]map[string]fakeElement{}}
}

// FailNextInstall makes the next Install fail with err, as a kernel that
// refuses the batch: nothing of it is applied.
func (f *FakeFirewall) FailNextInstall(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = err
}

// FailNextPut makes the next Put fail with err, as a socket that breaks.
func (f *FakeFirewall) FailNextPut(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failPut = err
}

// Install implements Firewall.
func (f *FakeFirewall) Install(p *plan.Plan) (map[string]bool, error) {
	if hold := f.Hold; hold != nil {
		<-hold
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail; err != nil {
		f.fail = nil
		return nil, err
	}
	kept := map[string]bool{}
	sets := map[string]map[string]fakeElement{}
	for _, s := range p.Sets {
		if old, ok := f.sets[s.Name]; ok && (s.Role == plan.RoleGrant || s.Role == plan.RoleDynamic) && f.sameShape(s) {
			kept[s.Name] = true
			sets[s.Name] = old
			continue
		}
		els := map[string]fakeElement{}
		for _, e := range s.Elements {
			els[string(e.Key)] = fakeElement{key: e.Key}
		}
		sets[s.Name] = els
	}
	f.plan, f.sets = p, sets
	f.installs++
	return kept, nil
}

// sameShape tells whether the installed plan has s as it is.
func (f *FakeFirewall) sameShape(s plan.Set) bool {
	if f.plan == nil {
		return false
	}
	i := slices.IndexFunc(f.plan.Sets, func(o plan.Set) bool { return o.Name == s.Name })
	if i < 0 {
		return false
	}
	o := f.plan.Sets[i]
	return o.Key.GetNFTMagic() == s.Key.GetNFTMagic() && o.Size == s.Size && o.Role == s.Role
}

// Installs is how many installs succeeded.
func (f *FakeFirewall) Installs() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.installs
}

// Plan is the plan installed, nil after a Flush.
func (f *FakeFirewall) Plan() *plan.Plan {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.plan
}

// Intact implements Firewall: the table is intact until a Flush.
func (f *FakeFirewall) Intact(p *plan.Plan) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.plan != nil && f.plan.Table == p.Table, nil
}

// Put implements Firewall. A set holds at most its plan's Size elements,
// as the kernel's does: the rest are refused one by one.
func (f *FakeFirewall) Put(set string, els []nft.Element) ([]nft.Element, error, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failPut; err != nil {
		f.failPut = nil
		return nil, nil, err
	}
	s, ok := f.sets[set]
	if !ok {
		return nil, nil, fmt.Errorf("put into set %s: no such set", set)
	}
	size := f.size(set)
	now := f.now()
	f.expire(s, now)
	var refused []nft.Element
	var first error
	for _, e := range els {
		if _, there := s[string(e.Key)]; !there && size > 0 && len(s) >= size {
			refused = append(refused, e)
			if first == nil {
				first = errors.New("set is full")
			}
			continue
		}
		fe := fakeElement{key: slices.Clone(e.Key), timeout: e.Timeout, comment: e.Comment}
		if old, there := s[string(e.Key)]; there {
			// As Linux 6.12 and later: an update restarts the timer
			// and keeps the comment.
			fe.comment = old.comment
		}
		if e.Timeout > 0 {
			left := e.Expires
			if left == 0 {
				left = e.Timeout
			}
			fe.expires = now.Add(left)
		}
		s[string(e.Key)] = fe
	}
	return refused, first, nil
}

func (f *FakeFirewall) size(set string) int {
	if f.plan == nil {
		return 0
	}
	for _, s := range f.plan.Sets {
		if s.Name == set {
			return int(s.Size)
		}
	}
	return 0
}

func (f *FakeFirewall) expire(s map[string]fakeElement, now time.Time) {
	for k, e := range s {
		if !e.expires.IsZero() && !now.Before(e.expires) {
			delete(s, k)
		}
	}
}

// Delete implements Firewall.
func (f *FakeFirewall) Delete(set string, keys [][]byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.sets[set]
	if !ok {
		return fmt.Errorf("delete from set %s: no such set", set)
	}
	for _, k := range keys {
		delete(s, string(k))
	}
	return nil
}

// Replace implements Firewall.
func (f *FakeFirewall) Replace(set string, keys [][]byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.sets[set]; !ok {
		return fmt.Errorf("replace set %s: no such set", set)
	}
	s := map[string]fakeElement{}
	for _, k := range keys {
		s[string(k)] = fakeElement{key: slices.Clone(k)}
	}
	f.sets[set] = s
	return nil
}

// Read implements Firewall.
func (f *FakeFirewall) Read(set string) ([]nft.Element, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.sets[set]
	if !ok {
		return nil, fmt.Errorf("read set %s: no such set", set)
	}
	now := f.now()
	f.expire(s, now)
	var out []nft.Element
	for _, k := range slices.Sorted(maps.Keys(s)) {
		e := s[k]
		el := nft.Element{Key: e.key, Timeout: e.timeout, Comment: e.comment}
		if !e.expires.IsZero() {
			el.Expires = e.expires.Sub(now)
		}
		out = append(out, el)
	}
	return out, nil
}

// SetNames implements Firewall.
func (f *FakeFirewall) SetNames() ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.sets)), nil
}

// Elements is what Read would say of set, or nil if there is none.
func (f *FakeFirewall) Elements(set string) []nft.Element {
	els, _ := f.Read(set)
	return els
}

// Flush empties the table, as `nft flush ruleset` does, and tells the
// Watcher.
func (f *FakeFirewall) Flush() {
	f.mu.Lock()
	f.plan, f.sets = nil, map[string]map[string]fakeElement{}
	w := f.watcher
	f.mu.Unlock()
	if w != nil {
		w.flag(nft.ChangedRuleset, nil)
	}
}

// AddElement adds an element as someone else would (`nftknock grant`),
// and tells the Watcher.
func (f *FakeFirewall) AddElement(set string, key []byte, timeout time.Duration) {
	f.mu.Lock()
	if s, ok := f.sets[set]; ok {
		s[string(key)] = fakeElement{key: key, timeout: timeout, expires: f.now().Add(timeout)}
	}
	w := f.watcher
	f.mu.Unlock()
	if w != nil {
		w.flag(nft.ChangedElements, []nft.ElementChange{{Set: set, Key: key, Timeout: timeout, Expires: timeout}})
	}
}

// DeleteElement deletes an element as someone else would, and tells the
// Watcher.
func (f *FakeFirewall) DeleteElement(set string, key []byte) {
	f.mu.Lock()
	if s, ok := f.sets[set]; ok {
		delete(s, string(key))
	}
	w := f.watcher
	f.mu.Unlock()
	if w != nil {
		w.flag(nft.ChangedElements, []nft.ElementChange{{Set: set, Key: key, Deleted: true}})
	}
}

// Watch implements Firewall.
func (f *FakeFirewall) Watch() (Watcher, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.watcher = &fakeWatcher{c: make(chan struct{}, 1)}
	return f.watcher, nil
}

type fakeWatcher struct {
	mu      sync.Mutex
	pending nft.Change
	elems   []nft.ElementChange
	c       chan struct{}
}

func (w *fakeWatcher) flag(ch nft.Change, elems []nft.ElementChange) {
	w.mu.Lock()
	w.pending |= ch
	w.elems = append(w.elems, elems...)
	w.mu.Unlock()
	select {
	case w.c <- struct{}{}:
	default:
	}
}

func (w *fakeWatcher) C() <-chan struct{} { return w.c }

func (w *fakeWatcher) Take() (nft.Change, []nft.ElementChange) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ch, elems := w.pending, w.elems
	w.pending, w.elems = 0, nil
	return ch, elems
}

func (w *fakeWatcher) Again(ch nft.Change) { w.flag(ch, nil) }
func (w *fakeWatcher) Err() error          { return nil }
func (w *fakeWatcher) Close() error        { return nil }

// Reader implements Firewall. While HoldRead is not nil, a Read of the
// reader returns what the set held when it began only once HoldRead is
// closed (failing if the reader is closed first): a big set whose dump
// takes long while the table changes.
func (f *FakeFirewall) Reader() (SetReader, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &fakeReader{f: f, hold: f.HoldRead, closed: make(chan struct{})}, nil
}

type fakeReader struct {
	f      *FakeFirewall
	hold   chan struct{}
	closed chan struct{}
	once   sync.Once
}

func (r *fakeReader) Read(set string) ([]nft.Element, error) {
	els, err := r.f.Read(set)
	if r.hold != nil {
		select {
		case <-r.hold:
		case <-r.closed:
			return nil, errors.New("read on a closed reader")
		}
	}
	return els, err
}

func (r *fakeReader) Close() error {
	r.once.Do(func() { close(r.closed) })
	return nil
}
