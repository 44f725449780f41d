// Package gate is the daemon's side of nf_tables: the one writer of the
// kernel's grant sets. It owns the Firewall (the netlink connection to
// nf_tables), the grant ledger, the door hooks and the table's healing,
// all on one goroutine (Run), and the engine asks it for what doors decide
// through its methods, which queue requests and never wait for the kernel
// (but for Install and ReadPorts, which return what it said).
//
// Grants are written in batches: the queue is drained and what it held is
// written set by set, in chunks (nft.Firewall.Put), so a flood of
// completed knocks costs a batch per few hundred grants, not one each.
//
// Self-healing: `nft flush ruleset` (what `systemctl restart nftables`
// runs on most distributions), `nft delete table inet nftknock`, or an
// edit of the daemon's chain would silently open or close the gate. The
// gate listens to nf_tables' notifications (nft.Watcher) and, when the
// table is no longer what it installed (Firewall.Intact compares every
// rule), installs it again at once — the rules and empty sets first, in
// one small batch, so the gate is up again in milliseconds whatever the
// number of grants — and then puts every live grant of the ledger back,
// chunk by chunk, each with the time it had left, while it goes on
// serving the engine between chunks. Elements someone else adds or deletes
// (`nftknock grant`/`revoke`, `nft` by hand) it reads from the
// notifications into the ledger, so they are restored too.
package gate

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"go.uber.org/zap"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock/hook"
	"github.com/nftknock/nftknock/knock/ledger"
	"github.com/nftknock/nftknock/knock/loglimit"
	"github.com/nftknock/nftknock/nft"
	"github.com/nftknock/nftknock/nft/plan"
)

// Firewall is what the gate needs of nft.Firewall; a fake stands in for
// it in tests without root (fake.go).
type Firewall interface {
	Install(p *plan.Plan) (kept map[string]bool, err error)
	Intact(p *plan.Plan) (bool, error)
	Put(set string, els []nft.Element) (refused []nft.Element, first error, err error)
	Delete(set string, keys [][]byte) error
	Replace(set string, keys [][]byte) error
	Read(set string) ([]nft.Element, error)
	// Reader reads sets on a connection of its own, from another
	// goroutine (see nft.SetReader).
	Reader() (SetReader, error)
	SetNames() ([]string, error)
	Watch() (Watcher, error)
}

// SetReader is what the gate needs of nft.SetReader.
type SetReader interface {
	Read(set string) ([]nft.Element, error)
	Close() error
}

// jumpChecker is what an attached nft.Firewall does besides: say whether
// the admin's ruleset jumps to the daemon's chains (nft.Firewall.Jumps).
type jumpChecker interface {
	Jumps() ([]nft.Jump, error)
}

// Watcher is what the gate needs of nft.Watcher.
type Watcher interface {
	C() <-chan struct{}
	Take() (nft.Change, []nft.ElementChange)
	Again(nft.Change)
	Err() error
	Close() error
}

// NFT is nft.Firewall as a Firewall.
type NFT struct{ *nft.Firewall }

// Watch implements Firewall.
func (f NFT) Watch() (Watcher, error) {
	w, err := f.Firewall.Watch()
	if err != nil {
		return nil, err
	}
	return w, nil
}

// Reader implements Firewall.
func (f NFT) Reader() (SetReader, error) {
	r, err := f.Firewall.Reader()
	if err != nil {
		return nil, err
	}
	return r, nil
}

// Options configure New.
type Options struct {
	Log *zap.Logger
	// Lines bounds the per-grant lines ("door opened").
	Lines *loglimit.Limiter
	Now   func() time.Time
	// MaxHooksRunning bounds the hooks running at once per door.
	MaxHooksRunning int
}

// queueLen bounds the requests waiting for the gate: a grant request
// that finds it full is dropped and counted.
const queueLen = 4096

// grantBatch bounds the grant requests written in one go.
const grantBatch = 1024

// restoreChunk is how many grants a heal puts back between two looks at
// the queue.
const restoreChunk = 4096

// healRetry bounds how long a failed heal waits before it is tried again.
const (
	healRetryMin = time.Second
	healRetryMax = 30 * time.Second
)

// Gate writes the kernel's grant sets.
type Gate struct {
	log   *zap.Logger
	lines *loglimit.Limiter
	fw    Firewall
	now   func() time.Time
	maxHk int

	reqs    chan request
	dropped atomic.Uint64 // grant requests the queue had no room for

	// The rest belongs to Run's goroutine.
	ledger  *ledger.Ledger
	plan    *plan.Plan
	doors   map[string]*config.Door
	gates   map[string]plan.Door
	setDoor map[string]string // grant set → door
	ports   map[string][]uint16
	seeded  bool
	// restore are the walks over the ledger that put grants back into
	// sets made anew, chunk by chunk; restoreSets the sets they fill.
	restore     []*ledger.Cursor
	restoreSets map[string]bool
	// healing is the heal whose grants restore is putting back, if any.
	healing *healRun
	full    map[string]uint64 // grants refused since the last tick, by door
	hooks   map[string]*hook.Runner
	retired []*hook.Runner
	// lastSource is the source that last opened an open_to = "anyone"
	// door, for its on_close hook (its grant stands for everyone).
	lastSource map[string]netip.Addr
	watch      Watcher
	// overrun: notifications were lost since the table was last read.
	overrun bool
	// reading is a read of the grant sets under way on another
	// goroutine; readDone gets what it read.
	reading  *readRun
	readDone chan setsRead
	readers  sync.WaitGroup
	// unjumped are the daemon's chains the admin's ruleset does not jump
	// to, as last reported (attach mode).
	unjumped map[string]bool
	backoff  time.Duration
	retryAt  time.Time
	pending  nft.Change // changes to look at again at retryAt
}

// healRun is a heal under way: when it began and how many grants it put
// back so far.
type healRun struct {
	start    time.Time
	restored int
}

// readRun is a read of the grant sets under way. The ledger keeps
// changing while it runs (knocks, notifications); since are those changes,
// applied again on top of what was read, in their order, so the ledger
// ends as the kernel is. It is read again when stale (notifications were
// lost again, a reload changed the sets, or since overflowed) and its
// result thrown away when dropped (a heal rebuilt the sets from the
// ledger meanwhile).
type readRun struct {
	// replace: what is read replaces the ledger's grants of its doors
	// (notifications were lost); else it is added to them (the table
	// outlived the daemon that made its grants).
	replace bool
	reader  SetReader
	start   time.Time
	since   []ledgerChange
	stale   bool
	dropped bool
}

// maxSince bounds the changes a read keeps to apply again (about 80 bytes
// each): past it, the read is stale.
const maxSince = 1 << 18

// ledgerChange is a grant recorded, or with forget set, forgotten.
type ledgerChange struct {
	grant  ledger.Grant
	forget bool
}

// setsRead is what a readRun read: the elements of each grant set.
type setsRead struct {
	els map[string][]nft.Element
	err error
}

// request is one thing asked of the gate; one field is set.
type request struct {
	install *installRequest
	grant   *Grant
	revoke  *revokeRequest
	ports   *portsRequest
	read    *readRequest
	tool    *toolRequest
	// inspect runs on the gate's goroutine: tests look at its state.
	inspect func()
}

type installRequest struct {
	plan  *plan.Plan
	doors []*config.Door
	done  chan error
}

// Grant is a request to let Addr through Door, for a knock or datagram
// from Source, made with By's key ("" if no key told).
type Grant struct {
	Door         string
	Addr, Source netip.Addr
	By           string
	// Ports, for a door that grants per port, are the ports the request
	// opens, each one of the door's (nil: all of them); other doors open
	// all their ports whatever it says.
	Ports []config.Port
	// For is how long the grant lasts; zero: the door's open_for.
	For time.Duration
}

type revokeRequest struct {
	door         string
	addr, source netip.Addr
}

type portsRequest struct {
	set   string
	ports []uint16
}

type readRequest struct {
	set  string
	done chan readResult
}

type readResult struct {
	ports []uint16
	ok    bool
	err   error
}

// New returns a gate on fw. Run it, then Install a plan.
func New(fw Firewall, o Options) *Gate {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Lines == nil {
		o.Lines = loglimit.New(o.Log)
	}
	return &Gate{
		log: o.Log, lines: o.Lines, fw: fw, now: o.Now, maxHk: max(o.MaxHooksRunning, 1),
		reqs:       make(chan request, queueLen),
		readDone:   make(chan setsRead, 1),
		ledger:     ledger.New(),
		doors:      map[string]*config.Door{},
		gates:      map[string]plan.Door{},
		setDoor:    map[string]string{},
		ports:      map[string][]uint16{},
		full:       map[string]uint64{},
		hooks:      map[string]*hook.Runner{},
		lastSource: map[string]netip.Addr{},
		backoff:    healRetryMin,
	}
}

// Install has the gate install p, the plan of doors, and waits for it. On
// an error the kernel still holds the previous plan, whole.
func (g *Gate) Install(ctx context.Context, p *plan.Plan, doors []*config.Door) error {
	r := &installRequest{plan: p, doors: doors, done: make(chan error, 1)}
	select {
	case g.reqs <- request{install: r}:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Open asks for a grant. It never blocks: when the queue is full the
// request is dropped and counted (Dropped).
func (g *Gate) Open(r Grant) {
	select {
	case g.reqs <- request{grant: &r}:
	default:
		g.dropped.Add(1)
	}
}

// Dropped is how many grant requests found the queue full.
func (g *Gate) Dropped() uint64 { return g.dropped.Load() }

// Revoke asks for door's grant to addr to end now (a close knock from
// source).
func (g *Gate) Revoke(ctx context.Context, door string, addr, source netip.Addr) {
	select {
	case g.reqs <- request{revoke: &revokeRequest{door, addr, source}}:
	case <-ctx.Done():
	}
}

// Ports asks for set, a port set of the plan, to hold ports.
func (g *Gate) Ports(ctx context.Context, set string, ports []uint16) {
	select {
	case g.reqs <- request{ports: &portsRequest{set, slices.Clone(ports)}}:
	case <-ctx.Done():
	}
}

// ReadPorts reads a port set of the table as the kernel holds it; ok is
// false when the set does not exist.
func (g *Gate) ReadPorts(ctx context.Context, set string) (ports []uint16, ok bool, err error) {
	r := &readRequest{set: set, done: make(chan readResult, 1)}
	select {
	case g.reqs <- request{read: r}:
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
	select {
	case res := <-r.done:
		return res.ports, res.ok, res.err
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
}

// Run serves requests, notifications and ticks until ctx is done, then
// waits for the hooks it started.
func (g *Gate) Run(ctx context.Context) error {
	w, err := g.fw.Watch()
	if err != nil {
		return err
	}
	g.watch = w
	defer func() {
		g.watch.Close()
		if g.reading != nil {
			g.reading.reader.Close() // a read under way fails at once
		}
		g.readers.Wait()
		for _, h := range g.hooks {
			h.Wait()
		}
		for _, h := range g.retired {
			h.Wait()
		}
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		if len(g.restore) > 0 {
			// Between chunks of a restore, whatever else is due first.
			select {
			case <-ctx.Done():
				return nil
			case r := <-g.reqs:
				g.handle(ctx, r)
			case <-g.watch.C():
				g.changes()
			case res := <-g.readDone:
				g.readEnded(res)
			default:
				g.restoreChunk()
			}
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case r := <-g.reqs:
			g.handle(ctx, r)
		case <-g.watch.C():
			g.changes()
		case res := <-g.readDone:
			g.readEnded(res)
		case <-tick.C:
			g.tick()
		}
	}
}

func (g *Gate) handle(ctx context.Context, r request) {
	switch {
	case r.install != nil:
		r.install.done <- g.install(r.install.plan, r.install.doors)
	case r.grant != nil:
		g.grants(r.grant)
	case r.revoke != nil:
		g.revoke(r.revoke)
	case r.ports != nil:
		g.setPorts(r.ports.set, r.ports.ports)
	case r.read != nil:
		r.read.done <- g.read(r.read.set)
	case r.tool != nil:
		r.tool.done <- g.tool(r.tool)
	case r.inspect != nil:
		r.inspect()
	}
}

// install installs p and makes the ledger follow its doors. At the first
// install the sets that stayed are read into the ledger (the table
// outlived the daemon that made the grants); grant sets made anew get the
// ledger's grants back, chunk by chunk.
func (g *Gate) install(p *plan.Plan, doors []*config.Door) error {
	kept, err := g.fw.Install(p)
	if err != nil {
		return err
	}
	g.plan = p
	newDoors := map[string]*config.Door{}
	newGates := map[string]plan.Door{}
	limits := map[string]int{}
	for _, d := range doors {
		newDoors[d.Name] = d
		limits[d.Name] = d.MaxGrants
	}
	for _, gd := range p.Doors {
		if old, ok := g.gates[gd.Name]; ok && old.Anyone != gd.Anyone {
			// A single source's grant must never become everyone's, nor
			// the reverse.
			g.ledger.Clear(gd.Name)
		}
		newGates[gd.Name] = gd
	}
	g.doors, g.gates = newDoors, newGates
	if g.reading != nil {
		g.reading.stale = true // it may read sets that are no more
	}
	g.ledger.SetDoors(limits)
	g.setDoor = map[string]string{}
	g.ports = map[string][]uint16{}
	g.restore, g.restoreSets = nil, map[string]bool{}
	for _, s := range p.Sets {
		switch s.Role {
		case plan.RolePorts:
			g.ports[s.Name] = portsOf(s.Elements)
		case plan.RoleGrant:
			g.setDoor[s.Name] = s.Door
		}
	}
	seed := false
	for _, s := range p.Sets {
		if s.Role != plan.RoleGrant {
			continue
		}
		switch {
		case kept[s.Name] && !g.seeded:
			seed = true
		case !kept[s.Name]:
			g.restoreSet(s.Name)
		}
	}
	if seed {
		g.readSets(false)
	}
	g.seeded = true
	g.unjumped = nil
	g.checkJumps()
	return nil
}

// checkJumps says, in attach mode, when the admin's ruleset does not jump
// to one of the daemon's chains (its rules are then never run: nothing is
// gated, no knock is heard), and when it does again. It reads the
// ruleset; it never adds the jump, which is the admin's to write.
func (g *Gate) checkJumps() {
	jc, ok := g.fw.(jumpChecker)
	if !ok {
		return
	}
	jumps, err := jc.Jumps()
	if err != nil {
		g.log.Warn("could not check that your ruleset jumps to nftknock's chain", zap.Error(err))
		return
	}
	was := g.unjumped
	g.unjumped = map[string]bool{}
	for _, j := range jumps {
		switch {
		case !j.Present:
			g.unjumped[j.Chain] = true
			if was == nil || !was[j.Chain] {
				g.log.Warn("your ruleset does not jump to nftknock's chain: "+j.Fix(),
					zap.String("chain", j.Chain), zap.String("from", j.From))
			}
		case was != nil && was[j.Chain]:
			g.log.Info("your ruleset jumps to nftknock's chain again", zap.String("chain", j.Chain), zap.Stringer("jump", j))
		}
	}
}

// restoreSet queues the ledger's grants of set to be put back.
func (g *Gate) restoreSet(set string) {
	g.restoreSets[set] = true
	door := g.setDoor[set]
	for _, c := range g.restore {
		if c.Door() == door {
			return // one walk over the door serves all its sets
		}
	}
	g.restore = append(g.restore, g.ledger.Cursor(door))
}

// grantOf is the ledger's grant for an element of door's set; its comment
// says who made it.
func (g *Gate) grantOf(door string, key []byte, timeout, left time.Duration, by string, now time.Time) ledger.Grant {
	gr := ledger.Grant{Door: door, Key: g.keyOf(door, key), Timeout: timeout, By: by}
	if timeout != 0 {
		gr.Expires = now.Add(left)
	}
	return gr
}

// keyOf is the ledger's key for an element key of door's sets.
func (g *Gate) keyOf(door string, key []byte) ledger.Key {
	addr, proto, port, _ := g.gates[door].Grantee(key)
	return ledger.Key{Addr: addr, Proto: proto, Port: port}
}

// restoreChunk puts the next chunk of the grants to restore back, each
// with the time it has left; those that ran out or went meanwhile are
// skipped.
func (g *Gate) restoreChunk() {
	now := g.now()
	c := g.restore[0]
	chunk, more := c.Next(restoreChunk, now)
	if !more {
		g.restore = g.restore[1:]
	}
	bySet := map[string][]nft.Element{}
	var order []string
	for _, gr := range chunk {
		set, key := g.gates[gr.Door].GrantSet(gr.Addr, gr.Proto, gr.Port)
		if !g.restoreSets[set] {
			continue // its set was kept
		}
		e := nft.Element{Key: key, Comment: gr.By}
		if !gr.Expires.IsZero() {
			left := gr.Expires.Sub(now).Truncate(time.Millisecond)
			if left < time.Millisecond {
				continue
			}
			// A restore never extends a grant: its timeout, and the
			// time it had left as its expiration.
			e.Timeout, e.Expires = max(gr.Timeout, left), left
		}
		if _, ok := bySet[set]; !ok {
			order = append(order, set)
		}
		bySet[set] = append(bySet[set], e)
	}
	restored := 0
	for _, set := range order {
		refused, first, err := g.fw.Put(set, bySet[set])
		if err != nil {
			g.log.Error("restoring grants failed; the rest are tried at the next change of the table", zap.String("set", set), zap.Error(err))
			g.restore = nil
			return
		}
		restored += len(bySet[set]) - len(refused)
		if len(refused) > 0 {
			g.log.Warn("grants not restored: the kernel refused them", zap.String("set", set), zap.Int("refused", len(refused)), zap.Error(first))
		}
	}
	if h := g.healing; h != nil {
		h.restored += restored
		if len(g.restore) == 0 {
			g.healed()
		}
	}
}

// healed logs the end of a heal.
func (g *Gate) healed() {
	h := g.healing
	g.healing = nil
	g.log.Warn(fmt.Sprintf("table gone: re-installed with %d live grants restored", h.restored),
		g.where(), zap.Duration("took", g.now().Sub(h.start)))
}

// grants writes r and every grant request queued behind it, set by set.
func (g *Gate) grants(r *Grant) {
	reqs := []*Grant{r}
	var rest []request
drain:
	for len(reqs) < grantBatch {
		select {
		case q := <-g.reqs:
			if q.grant == nil {
				rest = append(rest, q)
				break drain
			}
			reqs = append(reqs, q.grant)
		default:
			break drain
		}
	}
	now := g.now()
	type write struct {
		req    *Grant
		key    ledger.Key
		result ledger.Result
		grant  ledger.Grant
	}
	var writes []write
	for _, q := range reqs {
		d := g.doors[q.Door]
		if d == nil {
			continue // the door went away in a reload
		}
		for _, k := range g.grantees(d, q.Addr, q.Ports) {
			res, gr := g.ledger.Put(q.Door, k, cmp.Or(q.For, d.OpenFor), q.By, now)
			switch res {
			case ledger.Full:
				g.full[q.Door]++
				continue
			case ledger.NoDoor:
				continue
			}
			g.noteChange(ledgerChange{grant: gr})
			writes = append(writes, write{q, k, res, gr})
		}
	}
	bySet := map[string][]nft.Element{}
	var order []string
	index := map[string][]int{}
	for i, w := range writes {
		set, key := g.gates[w.req.Door].GrantSet(w.key.Addr, w.key.Proto, w.key.Port)
		e := nft.Element{Key: key, Timeout: w.grant.Timeout, Live: w.result != ledger.Added, Comment: w.grant.By}
		if w.result == ledger.Kept {
			// A knock never shortens a grant: the longer one is written
			// back as it is (or put back, had it gone missing).
			e.Expires = w.grant.Expires.Sub(now).Truncate(time.Millisecond)
			if w.grant.Expires.IsZero() {
				e.Timeout, e.Expires = 0, 0
			}
		}
		if _, ok := bySet[set]; !ok {
			order = append(order, set)
		}
		bySet[set] = append(bySet[set], e)
		index[set] = append(index[set], i)
	}
	failed := map[int]error{}
	for _, set := range order {
		refused, first, err := g.fw.Put(set, bySet[set])
		if err != nil {
			for _, i := range index[set] {
				failed[i] = err
			}
			continue
		}
		for _, e := range refused {
			for j, i := range index[set] {
				if string(bySet[set][j].Key) == string(e.Key) {
					failed[i] = first
				}
			}
		}
	}
	opened := map[*Grant]bool{}
	for i, w := range writes {
		if err, bad := failed[i]; bad {
			g.forget(w.req.Door, w.key)
			g.log.Error("door NOT opened: adding the source to the set failed", zap.String("door", w.req.Door),
				zap.Stringer("source", w.req.Source), zap.Error(err))
			opened[w.req] = false
			continue
		}
		if _, seen := opened[w.req]; !seen {
			opened[w.req] = true
		}
	}
	for _, q := range reqs {
		if opened[q] {
			g.opened(q, now)
		}
	}
	for _, q := range rest {
		g.handle(context.Background(), q)
	}
}

// grantees are the ledger keys a grant of d to addr writes: addr itself,
// or for an open_to = "anyone" door every address of both families (the
// unspecified addresses stand for them in the door's set); for a door that
// grants per port, addr with each of ports that the door opens (all its
// ports when ports is nil).
func (g *Gate) grantees(d *config.Door, addr netip.Addr, ports []config.Port) []ledger.Key {
	switch {
	case d.OpenToAnyone:
		return []ledger.Key{{Addr: netip.IPv4Unspecified()}, {Addr: netip.IPv6Unspecified()}}
	case !g.gates[d.Name].PerPort:
		return []ledger.Key{{Addr: addr.Unmap()}}
	}
	if ports == nil {
		ports = d.Open
	}
	var keys []ledger.Key
	for _, p := range ports {
		// A per-port door opens single ports; one it does not open is
		// never written, whoever asks.
		if p.Last <= p.Num && slices.Contains(d.Open, config.Port{Num: p.Num, Proto: p.Proto}) {
			keys = append(keys, ledger.Key{Addr: addr.Unmap(), Proto: p.Proto, Port: p.Num})
		}
	}
	return keys
}

// opened logs a grant written and runs the door's on_open hook.
func (g *Gate) opened(q *Grant, now time.Time) {
	d := g.doors[q.Door]
	to := q.Addr.String()
	if d.OpenToAnyone {
		to = "anyone"
		g.lastSource[q.Door] = q.Source
	}
	ports := d.Open
	if q.Ports != nil && g.gates[d.Name].PerPort {
		ports = q.Ports
	}
	fields := []zap.Field{zap.String("door", d.Name), zap.Stringer("source", q.Source), zap.String("to", to),
		zap.Duration("for", cmp.Or(q.For, d.OpenFor)), zap.Stringers("ports", ports)}
	if len(d.ForwardTo) > 0 {
		fields = append(fields, zap.Stringers("forward_to", d.ForwardTo))
	}
	if q.By != "" {
		fields = append(fields, zap.String("key", q.By))
	}
	g.lines.Info("door opened", fields...)
	g.runHook("on_open", d, q.Source)
}

func (g *Gate) revoke(r *revokeRequest) {
	d := g.doors[r.door]
	if d == nil {
		return
	}
	for _, k := range g.grantees(d, r.addr, nil) {
		set, key := g.gates[d.Name].GrantSet(k.Addr, k.Proto, k.Port)
		if err := g.fw.Delete(set, [][]byte{key}); err != nil {
			g.log.Error("door NOT closed: removing the source from the set failed", zap.String("door", d.Name),
				zap.Stringer("source", r.source), zap.Error(err))
			return
		}
		g.forget(d.Name, k)
	}
	g.lines.Info("door closed by close sequence", zap.String("door", d.Name), zap.Stringer("source", r.source))
	g.runHook("on_close", d, r.source)
}

func (g *Gate) setPorts(set string, ports []uint16) {
	if _, ok := g.ports[set]; !ok {
		return // not a port set of the plan installed
	}
	g.ports[set] = ports
	keys := make([][]byte, len(ports))
	for i, e := range plan.PortElements(ports) {
		keys[i] = e.Key
	}
	if err := g.fw.Replace(set, keys); err != nil {
		// The old ports stay in the set (the batch is atomic); the
		// tracker follows the new ones all the same, so a used-up
		// sequence never opens the door again.
		g.log.Error("knock ports not updated in the kernel", zap.String("set", set), zap.Error(err))
	}
}

func (g *Gate) read(set string) readResult {
	names, err := g.fw.SetNames()
	if err != nil {
		return readResult{err: err}
	}
	if !slices.Contains(names, set) {
		return readResult{}
	}
	els, err := g.fw.Read(set)
	if err != nil {
		return readResult{err: err}
	}
	keys := make([]nftables.SetElement, len(els))
	for i, e := range els {
		keys[i] = nftables.SetElement{Key: e.Key}
	}
	return readResult{ports: portsOf(keys), ok: true}
}

func portsOf(els []nftables.SetElement) []uint16 {
	var ports []uint16
	for _, e := range els {
		if len(e.Key) == 2 {
			ports = append(ports, uint16(e.Key[0])<<8|uint16(e.Key[1]))
		}
	}
	return ports
}

// tick runs once a second: on_close hooks of grants that ran out, the
// summary of refused grants, and a heal due again.
func (g *Gate) tick() {
	now := g.now()
	for _, gr := range g.ledger.Expired(now) {
		d := g.doors[gr.Door]
		if d == nil || len(d.OnClose) == 0 {
			continue
		}
		src := gr.Addr
		if d.OpenToAnyone {
			src = g.lastSource[d.Name]
		}
		g.runHook("on_close", d, src)
	}
	for door, n := range g.full {
		g.log.Warn("grants refused: the door holds max_grants live grants (a flood of completed knocks?)",
			zap.String("door", door), zap.Uint64("refused", n), zap.Int("max_grants", g.doors[door].MaxGrants))
		delete(g.full, door)
	}
	g.afterOverrun()
	// Retries wait on the real clock, whatever g.now is.
	if g.pending != 0 && !time.Now().Before(g.retryAt) {
		ch := g.pending
		g.pending = 0
		g.watch.Again(ch)
	}
}

// runHook runs door d's hook for event, if it has one.
func (g *Gate) runHook(event string, d *config.Door, src netip.Addr) {
	argv := d.OnOpen
	if event == "on_close" {
		argv = d.OnClose
	}
	if len(argv) == 0 {
		return
	}
	h := g.hooks[d.Name]
	if h == nil || h.Timeout() != d.HookTimeout {
		if h != nil {
			g.retired = append(g.retired, h)
		}
		h = hook.NewRunner(g.log, d.HookTimeout, g.maxHk)
		g.hooks[d.Name] = h
	}
	h.Run(event, d.Name, src, argv)
}

// changes acts on what the Watcher saw others do to the table.
func (g *Gate) changes() {
	ch, elems := g.watch.Take()
	if err := g.watch.Err(); err != nil {
		// The Watcher stopped; anything may have happened since.
		g.log.Warn("watching the table failed; watching anew", zap.Error(err))
		g.watch.Close()
		w, werr := g.fw.Watch()
		if werr != nil {
			g.log.Error("cannot watch the table: a flushed ruleset will not be noticed until this works", zap.Error(werr))
			g.again(ch | nft.Overrun)
			return
		}
		g.watch = w
		ch |= nft.Overrun
	}
	if g.plan == nil {
		return
	}
	if ch&nft.ChangedRuleset != 0 {
		healed, err := g.heal(ch)
		if err != nil {
			g.log.Error("the table is damaged or could not be checked, and re-installing it failed; retrying",
				g.where(), zap.Duration("retry_in", g.backoff), zap.Error(err))
			g.again(ch)
			return
		}
		g.checkJumps() // the admin may have edited their chain
		if healed {
			return // the ledger is the truth the table was rebuilt from
		}
	}
	now := g.now()
	for _, e := range elems {
		door, ok := g.setDoor[e.Set]
		if !ok {
			continue
		}
		if e.Deleted {
			g.forget(door, g.keyOf(door, e.Key))
			continue
		}
		g.record(g.grantOf(door, e.Key, e.Timeout, e.Expires, e.Comment, now))
	}
	if ch&nft.Overrun != 0 {
		// Notifications were lost: anything may have changed. Looked at
		// on the next tick, once, however many overruns came meanwhile:
		// a restore of many grants overruns the socket with the
		// notifications of our own batches, and reading every set at
		// each of them would starve the restore.
		g.overrun = true
	}
	g.backoff = healRetryMin
}

// afterOverrun checks the table and reads the grant sets anew, once
// notifications were lost and no restore is under way (its own batches are
// what overran the socket, most likely, and the sets are being written).
func (g *Gate) afterOverrun() {
	if !g.overrun || len(g.restore) > 0 || g.plan == nil {
		return
	}
	g.overrun = false
	healed, err := g.heal(nft.Overrun)
	if err != nil {
		g.log.Error("the table could not be checked, or re-installing it failed; retrying",
			g.where(), zap.Duration("retry_in", g.backoff), zap.Error(err))
		g.again(nft.Overrun)
		return
	}
	g.checkJumps()
	if !healed {
		g.readSets(true)
	}
}

// heal installs the plan again if the table no longer holds it, and queues
// the ledger's grants to be put back. It reports whether it installed.
func (g *Gate) heal(seen nft.Change) (bool, error) {
	start := g.now()
	ok, err := g.fw.Intact(g.plan)
	if err != nil || ok {
		return false, err
	}
	p := g.withPorts(g.plan)
	kept, err := g.fw.Install(p)
	if err != nil {
		return false, err
	}
	back := g.now().Sub(start)
	if g.reading != nil {
		// The sets it reads are gone; the ledger is what they are
		// rebuilt from.
		g.reading.dropped = true
	}
	g.restore, g.restoreSets = nil, map[string]bool{}
	for _, s := range p.Sets {
		if s.Role == plan.RoleGrant && !kept[s.Name] {
			g.restoreSet(s.Name)
		}
	}
	left := 0
	for _, c := range g.restore {
		left += c.Left()
	}
	g.backoff = healRetryMin
	g.healing = &healRun{start: start}
	g.log.Info("the table was damaged or deleted: its rules and sets are back; putting its grants back",
		g.where(), zap.Stringer("seen", seen), zap.Int("grants", left),
		zap.Duration("gate_back_in", back))
	if len(g.restore) > 0 {
		g.restoreChunk()
	} else {
		g.healed()
	}
	return true, nil
}

// where names what the gate installed, for its log lines: its table, or
// attached, its chain in the admin's table.
func (g *Gate) where() zap.Field {
	if g.plan.Attached {
		return zap.String("chain", g.plan.Table)
	}
	return zap.String("table", "inet "+g.plan.Table)
}

// withPorts is p with the port sets holding what they were last told.
func (g *Gate) withPorts(p *plan.Plan) *plan.Plan {
	q := *p
	q.Sets = slices.Clone(p.Sets)
	for i := range q.Sets {
		if ports, ok := g.ports[q.Sets[i].Name]; ok {
			q.Sets[i].Elements = plan.PortElements(ports)
		}
	}
	return &q
}

// readSets starts a read of every grant set on a SetReader of its own
// goroutine (a dump of a big set is slow, and the gate serves meanwhile),
// or marks the read under way stale, to be done again. replace: see
// readRun.
func (g *Gate) readSets(replace bool) {
	if run := g.reading; run != nil {
		run.stale = true
		run.replace = run.replace || replace
		return
	}
	r, err := g.fw.Reader()
	if err != nil {
		g.readFailed(replace, err)
		return
	}
	sets := slices.Sorted(maps.Keys(g.setDoor))
	g.reading = &readRun{replace: replace, reader: r, start: time.Now()}
	g.readers.Add(1)
	go func() {
		defer g.readers.Done()
		res := setsRead{els: map[string][]nft.Element{}}
		for _, set := range sets {
			els, err := r.Read(set)
			if err != nil {
				res.err = err
				break
			}
			res.els[set] = els
		}
		g.readDone <- res // room for one: one read at a time
	}()
}

// record puts gr, a grant someone else made, in the ledger.
func (g *Gate) record(gr ledger.Grant) {
	g.ledger.Record(gr)
	g.noteChange(ledgerChange{grant: gr})
}

// noteChange keeps c for the read under way, if any.
func (g *Gate) noteChange(c ledgerChange) {
	run := g.reading
	if run == nil || run.stale {
		return
	}
	if len(run.since) == maxSince {
		run.stale, run.since = true, nil
		return
	}
	run.since = append(run.since, c)
}

// forget deletes a grant from the ledger, and notes it for a read.
func (g *Gate) forget(door string, k ledger.Key) {
	g.ledger.Delete(door, k)
	g.noteChange(ledgerChange{grant: ledger.Grant{Door: door, Key: k}, forget: true})
}

// readEnded files what a read of the grant sets found in the ledger.
func (g *Gate) readEnded(res setsRead) {
	run := g.reading
	g.reading = nil
	run.reader.Close()
	switch {
	case run.dropped:
		return
	case res.err != nil:
		g.readFailed(run.replace, res.err)
		return
	case run.stale:
		g.readSets(run.replace)
		return
	}
	now := g.now()
	if run.replace {
		for _, door := range g.ledger.Doors() {
			g.ledger.Clear(door)
		}
	}
	n := 0
	for set, els := range res.els {
		door, ok := g.setDoor[set]
		if !ok {
			continue
		}
		for _, e := range els {
			g.ledger.Record(g.grantOf(door, e.Key, e.Timeout, e.Expires, e.Comment, now))
		}
		n += len(els)
	}
	for _, c := range run.since {
		if c.forget {
			g.ledger.Delete(c.grant.Door, c.grant.Key)
		} else {
			g.ledger.Record(c.grant)
		}
	}
	took := time.Since(run.start).Round(time.Millisecond)
	if run.replace {
		g.log.Info("grants read anew from the kernel: changes someone else made came faster than their notifications",
			zap.Int("grants", n), zap.Duration("took", took))
		return
	}
	g.log.Info("grants the table kept read into the record", zap.Int("grants", n), zap.Duration("took", took))
}

// readFailed logs a failed read and, for one after lost notifications,
// tries again after the backoff.
func (g *Gate) readFailed(replace bool, err error) {
	if !replace {
		g.log.Error("reading the grants the table kept failed: they stay in the kernel until they run out, but are not restored if it is flushed",
			zap.Error(err))
		return
	}
	g.log.Error("reading grants changed by someone else failed; retrying", zap.Duration("retry_in", g.backoff), zap.Error(err))
	g.again(nft.Overrun)
}

// again schedules ch to be looked at again after the backoff, and doubles
// it.
func (g *Gate) again(ch nft.Change) {
	g.pending |= ch
	g.retryAt = time.Now().Add(g.backoff)
	g.backoff = min(2*g.backoff, healRetryMax)
}
