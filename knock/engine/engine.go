// Package engine is the daemon's side of NFLOG: one goroutine that reads
// what the kernel logged, hands each packet to the door whose rule logged
// it (or to the tracker, for knock doors), and runs the doors' timers. It
// owns the NFLOG socket, the doors, the tracker and the SPA replay cache;
// what doors decide it passes to the gate (package gate), which owns
// nf_tables.
//
// The doors, their routing and their plan form a generation. A reload
// builds the next one whole — doors with their keys and files read, the
// plan laid out and checked — and only then has the gate install its plan
// in one batch and switches to it in one step; a config that does not
// validate, a file that cannot be read or a plan the kernel refuses leaves
// the running generation as it was, in the daemon and in the kernel. A
// door's NFLOG prefix carries a tag of its capture rules' version, so a
// packet logged under an older version of a door is told apart and
// dropped, never handled by another door or by the door's new rules.
//
// Work that costs a door hundreds of microseconds a packet (a public-key
// SPA door's seal and signature checks) runs on one worker goroutine, not
// on the engine's: the doors hand it jobs through a bounded queue
// (door.Deps.Offload), the worker hands the results back through a list
// the engine takes after each Read, waking the Read. A flood of datagrams
// that need such work then costs at most the worker's core, never the
// other doors their packets; the doors bound their own share of the queue.
package engine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock"
	"github.com/nftknock/nftknock/knock/door"
	"github.com/nftknock/nftknock/knock/gate"
	"github.com/nftknock/nftknock/knock/loglimit"
	"github.com/nftknock/nftknock/knock/spa"
	"github.com/nftknock/nftknock/nft"
	"github.com/nftknock/nftknock/nft/plan"
)

// Source is where logged packets come from: knock.NFLOG, or a fake in
// tests.
type Source interface {
	// Read hands handle the packets that arrive until deadline or Wake.
	Read(deadline time.Time, handle func(knock.Logged)) error
	// Wake makes a Read under way return.
	Wake()
}

// Options configure an Engine.
type Options struct {
	Log    *zap.Logger
	Lines  *loglimit.Limiter
	Source Source
	Gate   *gate.Gate
	Now    func() time.Time
	// Load reads the configuration anew, for a reload.
	Load func() (*config.Config, error)
	// Ready is called with the status line once a generation is
	// installed; Reloading when a reload starts.
	Ready, Reloading func(status string)
	// Watchdog, if set, is called from the loop every WatchdogEvery: a
	// loop that is stuck stops calling it.
	Watchdog      func()
	WatchdogEvery time.Duration
}

// Engine reads logged packets and runs the doors.
type Engine struct {
	o      Options
	log    *zap.Logger
	replay *spa.Replay
	gen    *generation
	// tags are each door's capture version: part of its NFLOG prefix.
	tags map[string]uint32

	lg      knock.Logged // the packet being handled
	reload  atomic.Bool
	replan  bool // a door asked for a new plan during this packet or tick
	evicted int
	stale   uint64 // packets logged under a prefix of no door now

	// Counted as they happen, read by the status and the stop line.
	parseErrors atomic.Uint64
	spaRejects  [door.NumSPAReasons]atomic.Uint64

	// jobs go to the worker (offload); finished come back from it, for
	// the engine goroutine to take (takeFinished), which swaps in spare.
	jobs       chan offloaded
	finishedMu sync.Mutex
	finished   []offloaded
	spare      []offloaded
}

// offloadQueue bounds the jobs waiting for the worker, all doors together.
const offloadQueue = 256

// offloaded is a job of door d.
type offloaded struct {
	d   door.Door
	job door.Job
}

// generation is one config's doors, their routing, their plan.
type generation struct {
	cfg   *config.Config
	doors []door.Door
	// route maps an NFLOG prefix to a door (its index in doors).
	route map[string]int
	// tracked maps a door's index to its index in the tracker, and
	// trackedDoors back.
	tracked      map[int]int
	trackedDoors []int
	tracker      *knock.Tracker
	plan         *plan.Plan
	acts         []door.Actions
}

// Start builds the first generation of cfg, has the gate install it and
// returns the engine, ready to Run. The gate must be running.
func Start(ctx context.Context, cfg *config.Config, o Options) (*Engine, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Lines == nil {
		o.Lines = loglimit.New(o.Log)
	}
	e := &Engine{o: o, log: o.Log, replay: spa.NewReplay(spa.DefaultReplayCap, o.Now()), tags: map[string]uint32{},
		jobs: make(chan offloaded, offloadQueue)}
	gen, err := e.build(cfg, nil, e.deps(ctx))
	if err != nil {
		return nil, err
	}
	if err := o.Gate.Install(ctx, gen.plan, configs(gen)); err != nil {
		return nil, err
	}
	e.gen = gen
	return e, nil
}

// Reload asks the engine to reload its configuration. It never blocks.
func (e *Engine) Reload() {
	e.reload.Store(true)
	e.o.Source.Wake()
}

// Status is the one line `systemctl status` shows.
func (e *Engine) Status() string {
	cfg := e.gen.cfg
	return fmt.Sprintf("%s, NFLOG group %d, doors: %s", Where(cfg), cfg.NFLOGGroup, strings.Join(DoorNames(cfg), ", "))
}

func (e *Engine) ready() {
	if e.o.Ready != nil {
		e.o.Ready(e.Status())
	}
}

// Counts are the engine's counters, for the stop line.
func (e *Engine) Counts() []zap.Field {
	f := []zap.Field{zap.Uint64("unparsed_packets", e.parseErrors.Load()), zap.Uint64("stale_packets", e.stale)}
	for r := range door.NumSPAReasons {
		if n := e.spaRejects[r].Load(); n > 0 {
			f = append(f, zap.Uint64("spa_rejected_"+r.Key(), n))
		}
	}
	return f
}

// Run reads and handles packets until ctx is done. It runs the worker
// for the doors' offloaded jobs, and waits for it before it returns.
func (e *Engine) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, e.o.Source.Wake)
	defer stop()
	workCtx, stopWork := context.WithCancel(ctx)
	var worker sync.WaitGroup
	worker.Go(func() { e.work(workCtx) })
	defer worker.Wait()
	defer stopWork()
	nextSecond := e.o.Now().Add(time.Second)
	var nextPing time.Time
	if e.o.Watchdog != nil {
		nextPing = e.o.Now()
	}
	for {
		now := e.o.Now()
		if !nextPing.IsZero() && !now.Before(nextPing) {
			e.o.Watchdog()
			nextPing = now.Add(e.o.WatchdogEvery)
		}
		deadline := nextSecond
		if !nextPing.IsZero() && nextPing.Before(deadline) {
			deadline = nextPing
		}
		for _, d := range e.gen.doors {
			if t, ok := d.(door.Timed); ok {
				if next := t.Next(now); next.Before(deadline) {
					deadline = next
				}
			}
		}
		if err := e.o.Source.Read(deadline, e.packet); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
		if e.reload.Swap(false) {
			e.doReload(ctx)
		}
		e.takeFinished()
		now = e.o.Now()
		if !now.Before(deadline) || !now.Before(nextSecond) {
			e.tick(ctx, now, !now.Before(nextSecond))
			if !now.Before(nextSecond) {
				nextSecond = now.Add(time.Second)
			}
		}
		if e.replan {
			e.doReplan(ctx)
		}
	}
}

// packet routes one logged packet by its prefix.
func (e *Engine) packet(lg knock.Logged) {
	g := e.gen
	i, ok := g.route[string(lg.Prefix)]
	if !ok {
		// A prefix of a door's older rules, or none of ours.
		e.stale++
		return
	}
	now := e.o.Now()
	// lg is handed on by pointer to the engine's own copy: a pointer to
	// the argument would make it escape, an allocation per packet.
	e.lg = lg
	if i < 0 {
		e.observe(now, &e.lg, -1)
		return
	}
	if _, ok := g.tracked[i]; ok {
		e.observe(now, &e.lg, i)
		return
	}
	g.doors[i].Packet(now, &e.lg, e.actions(i))
}

// observe feeds the tracker a packet of door i (-1: the scan rule) and
// hands the doors what it reports.
func (e *Engine) observe(now time.Time, lg *knock.Logged, i int) {
	g := e.gen
	var p knock.Packet
	if err := knock.ParseIP(lg.Payload, &p); err != nil {
		e.parseErrors.Add(1)
		return
	}
	p.Door = -1
	if i >= 0 {
		p.Door = g.tracked[i]
	}
	e.events(now, g.tracker.Observe(now, &p))
}

func (e *Engine) events(now time.Time, evs []knock.Event) {
	g := e.gen
	for _, ev := range evs {
		if ev.Kind == knock.EventEvict {
			e.evicted++
			continue
		}
		i := g.trackedDoors[ev.Door]
		g.doors[i].(door.Sequenced).Event(now, ev, e.actions(i))
	}
}

// tick runs the doors' timers; second says a second has passed, for the
// once-a-second work.
func (e *Engine) tick(ctx context.Context, now time.Time, second bool) {
	g := e.gen
	for i, d := range g.doors {
		d.Tick(now, e.actions(i))
	}
	if !second {
		return
	}
	e.events(now, g.tracker.Sweep(now))
	e.replay.Prune(now)
	e.o.Lines.Flush()
	if e.evicted > 0 {
		e.log.Warn("sources forgotten: max_tracked sources were part-way through a knock (a flood?)",
			zap.Int("forgotten", e.evicted), zap.Int("max_tracked", g.cfg.MaxTracked))
		e.evicted = 0
	}
}

// work runs offloaded jobs until ctx is done, handing each back when it
// is done and waking the engine's Read to take it.
func (e *Engine) work(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-e.jobs:
			j.job.Work()
			e.finishedMu.Lock()
			e.finished = append(e.finished, j)
			e.finishedMu.Unlock()
			e.o.Source.Wake()
		}
	}
}

// offload queues job of door d for the worker (door.Deps.Offload). The
// doors bound how many jobs they have out, so finished stays bounded too.
func (e *Engine) offload(d door.Door, job door.Job) bool {
	select {
	case e.jobs <- offloaded{d, job}:
		return true
	default:
		return false
	}
}

// takeFinished hands the jobs the worker finished to their doors' Done,
// on the engine goroutine, for the doors that still run.
func (e *Engine) takeFinished() {
	e.finishedMu.Lock()
	done := e.finished
	e.finished = e.spare[:0]
	e.finishedMu.Unlock()
	if len(done) == 0 {
		e.spare = done
		return
	}
	now := e.o.Now()
	for _, j := range done {
		for i, d := range e.gen.doors {
			if d == j.d {
				j.job.Done(now, e.actions(i))
				break
			}
		}
	}
	clear(done)
	e.spare = done[:0]
}

// actions are what door i asks for: made once per generation, so that
// handing them to a door is no allocation per packet.
func (e *Engine) actions(i int) door.Actions { return e.gen.acts[i] }

type actions struct {
	e *Engine
	i int
}

func (a *actions) name() string { return a.e.gen.doors[a.i].Config().Name }

func (a *actions) Open(addr, source netip.Addr, by string) {
	a.e.o.Gate.Open(gate.Grant{Door: a.name(), Addr: addr, Source: source, By: by})
}

func (a *actions) OpenPorts(addr, source netip.Addr, by string, ports []config.Port, d time.Duration) {
	a.e.o.Gate.Open(gate.Grant{Door: a.name(), Addr: addr, Source: source, By: by, Ports: ports, For: d})
}

func (a *actions) Close(addr netip.Addr) {
	a.e.o.Gate.Revoke(context.Background(), a.name(), addr, addr)
}

func (a *actions) Ports(set string, ports []uint16) {
	a.e.o.Gate.Ports(context.Background(), set, ports)
}

func (a *actions) SetSequence(slot int, steps []config.Port) {
	g := a.e.gen
	if t, ok := g.tracked[a.i]; ok {
		g.tracker.SetSequence(t, slot, steps)
	}
}

func (a *actions) Replan() {
	a.e.tags[a.name()]++
	a.e.replan = true
}

// doReload reads the configuration anew and switches to it, or keeps the
// running one.
func (e *Engine) doReload(ctx context.Context) {
	if e.o.Reloading != nil {
		e.o.Reloading("reloading the configuration")
	}
	defer e.ready()
	cfg, err := e.o.Load()
	if err == nil {
		err = sameOwnership(e.gen.cfg, cfg)
	}
	var gen *generation
	if err == nil {
		gen, err = e.build(cfg, e.gen, e.deps(ctx))
	}
	if err == nil {
		err = e.o.Gate.Install(ctx, gen.plan, configs(gen))
	}
	if err != nil {
		e.log.Error("reload refused, the running config stays", zap.String("config", e.gen.cfg.File), zap.Error(err))
		return
	}
	e.gen = gen
	e.log.Info("reloaded", zap.String("config", cfg.File), zap.Strings("doors", DoorNames(cfg)))
}

// doReplan lays the running doors' plan out again (a door's capture rules
// changed) and has the gate install it; the tracker and the doors stay.
func (e *Engine) doReplan(ctx context.Context) {
	e.replan = false
	g := *e.gen
	g.route, g.plan = e.layout(&g)
	if err := e.o.Gate.Install(ctx, g.plan, configs(&g)); err != nil {
		// The kernel keeps the old rules (the batch is atomic); the
		// tracker follows the new sequences all the same, so a used-up
		// one can never open the door again (fail closed).
		e.log.Error("knock rules not updated", zap.Error(err))
		return
	}
	e.gen = &g
}

// build makes the generation of cfg: its doors (with the state of the
// same doors of prev), its tracker, its routing and its plan. It changes
// nothing outside what it returns but the doors' capture tags.
func (e *Engine) build(cfg *config.Config, prev *generation, deps door.Deps) (*generation, error) {
	g := &generation{cfg: cfg, tracked: map[int]int{}}
	// The generation's doors find the doors they share a port with among
	// their own, and act for them through their Actions.
	deps.Shared = door.NewShared(g.actionsOf)
	var errs []error
	extra := map[int][]config.Claim{}
	for i := range cfg.Doors {
		d := &cfg.Doors[i]
		var before door.Door
		if prev != nil {
			if j := slices.IndexFunc(prev.cfg.Doors, func(o config.Door) bool { return o.Name == d.Name }); j >= 0 {
				before = prev.doors[j]
			}
		}
		dd, err := door.New(cfg.File, d, deps, before)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if c, ok := dd.(interface{ Claims() []config.Claim }); ok {
			extra[i] = c.Claims()
		}
		g.doors = append(g.doors, dd)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	for _, ce := range config.CheckClaims(cfg.Doors, extra) {
		errs = append(errs, &config.Error{File: cfg.File, Door: cfg.Doors[ce.Door()].Name, Field: ce.Field(), Msg: ce.Msg()})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	var tracked []knock.TrackedDoor
	for i, d := range g.doors {
		if s, ok := d.(door.Sequenced); ok {
			g.tracked[i] = len(tracked)
			g.trackedDoors = append(g.trackedDoors, i)
			tracked = append(tracked, s.Tracked())
		}
	}
	g.tracker = knock.NewTracker(tracked, cfg.MaxTracked, e.o.Now())
	for i := range g.doors {
		g.acts = append(g.acts, &actions{e, i})
	}
	// A door whose config changed gets a new capture tag: packets its old
	// rules logged are not its new rules'.
	for i := range cfg.Doors {
		d := &cfg.Doors[i]
		same := false
		if prev != nil {
			if j := slices.IndexFunc(prev.cfg.Doors, func(o config.Door) bool { return o.Name == d.Name }); j >= 0 {
				same = reflect.DeepEqual(prev.cfg.Doors[j], *d)
			}
		}
		if !same || e.tags[d.Name] == 0 {
			e.tags[d.Name]++
		}
	}
	g.route, g.plan = e.layout(g)
	if n, err := nft.BatchBytes(g.plan); err != nil {
		return nil, err
	} else if n > nft.MaxBatch {
		return nil, &config.Error{File: cfg.File, Msg: fmt.Sprintf(
			"the ruleset of this configuration takes %.1f MiB in one batch, more than the %.1f MiB nftknock sends at once: configure fewer doors, opened ports or knocks",
			float64(n)/(1<<20), float64(nft.MaxBatch)/(1<<20))}
	}
	return g, nil
}

// actionsOf are the Actions of d, one of g's doors.
func (g *generation) actionsOf(d door.Door) door.Actions {
	return g.acts[slices.Index(g.doors, d)]
}

// layout lays out the plan of g's doors and the routing of their
// prefixes.
func (e *Engine) layout(g *generation) (map[string]int, *plan.Plan) {
	route := map[string]int{plan.ScanPrefix: -1}
	b := plan.NewBuilder(g.cfg.Table, g.cfg.NFLOGGroup, e.prefix)
	if g.cfg.Attach != nil {
		b.Attach()
	}
	for i, d := range g.doors {
		b.Door(door.Gate(d.Config()))
		d.Plan(b)
		route[e.prefix(d.Config().Name)] = i
	}
	return route, b.Build()
}

// prefix is a door's NFLOG prefix: its name and its capture tag.
func (e *Engine) prefix(name string) string { return fmt.Sprintf("%s/%d", name, e.tags[name]) }

func (e *Engine) deps(ctx context.Context) door.Deps {
	return door.Deps{
		Log:    e.log,
		Lines:  e.o.Lines,
		Replay: e.replay,
		Now:    e.o.Now,
		PortSet: func(set string) ([]uint16, bool, error) {
			return e.o.Gate.ReadPorts(ctx, set)
		},
		Rejected: func(r door.SPAReason) { e.spaRejects[r].Add(1) },
		Offload:  e.offload,
	}
}

// Check does what a start does, short of touching the kernel: it reads
// the files the doors name, checks what only they tell (the sequence a
// one-time file has due now), lays the plan out and checks that it fits in
// one batch. A config that passes Check installs.
func Check(cfg *config.Config) error {
	_, err := Plan(cfg)
	return err
}

// Plan is the plan a first start would install for cfg (rotating doors'
// sets empty: a start that finds no table counts their sequences used).
func Plan(cfg *config.Config) (*plan.Plan, error) {
	nop := zap.NewNop()
	e := &Engine{o: Options{Log: nop, Lines: loglimit.New(nop), Now: time.Now}, log: nop, tags: map[string]uint32{}}
	e.replay = spa.NewReplay(spa.DefaultReplayCap, time.Now())
	deps := door.Deps{Log: nop, Lines: e.o.Lines, Replay: e.replay, Now: time.Now,
		PortSet: func(string) ([]uint16, bool, error) { return nil, false, nil }}
	g, err := e.build(cfg, nil, deps)
	if err != nil {
		return nil, err
	}
	return g.plan, nil
}

func configs(g *generation) []*config.Door {
	out := make([]*config.Door, len(g.doors))
	for i, d := range g.doors {
		out[i] = d.Config()
	}
	return out
}

// sameOwnership refuses a reload that moves the daemon to another table or
// NFLOG group: the old table would be left behind with its rules, and
// rebinding the group is a restart's job.
func sameOwnership(old, cfg *config.Config) error {
	if old.Table != cfg.Table {
		return fmt.Errorf("%s: table: changed from %q to %q: restart nftknockd to move tables (and run `nftknockd -remove` with the old config first)", cfg.File, old.Table, cfg.Table)
	}
	if !reflect.DeepEqual(old.Attach, cfg.Attach) {
		return fmt.Errorf("%s: attach: changed from %s to %s: restart nftknockd to move its rules (and run `nftknockd -remove` with the old config first)", cfg.File, attachText(old), attachText(cfg))
	}
	if old.NFLOGGroup != cfg.NFLOGGroup {
		return fmt.Errorf("%s: nflog_group: changed from %d to %d: restart nftknockd to change it", cfg.File, old.NFLOGGroup, cfg.NFLOGGroup)
	}
	if old.OwnTable != cfg.OwnTable {
		// The kernel lets a table's owner go only with its socket.
		return fmt.Errorf("%s: own_table: changed from %v to %v: restart nftknockd to change it (the table and its grants stay)", cfg.File, old.OwnTable, cfg.OwnTable)
	}
	return nil
}

// DoorNames are cfg's doors' names.
func DoorNames(cfg *config.Config) []string {
	names := make([]string, len(cfg.Doors))
	for i, d := range cfg.Doors {
		names[i] = d.Name
	}
	return names
}

func attachText(cfg *config.Config) string {
	if cfg.Attach == nil {
		return "none (a table of its own)"
	}
	return fmt.Sprintf("%q", cfg.Attach.String())
}

// Where names where cfg's rules go, for messages: "table inet nftknock",
// or "chain nftknock in table inet filter".
func Where(cfg *config.Config) string {
	if cfg.Attach == nil {
		return "table inet " + cfg.Table
	}
	return "chain " + cfg.Table + " in table inet " + cfg.Attach.Table
}

// FindDNAT finds the rules that DNAT connections to ports elsewhere: what
// nft.FindDNAT does in the daemon's network namespace. Tests give another.
type FindDNAT func(ports []config.Port) ([]nft.DNAT, error)

// Warnings are what cfg would do that a user would not want, though it is
// valid: see config.Warnings; and, when find is given, a door on the input
// hook whose opened port a rule of the ruleset DNATs elsewhere (Docker's
// published ports, a router's port forward): such connections are
// forwarded, never reach the input hook, and the door gates nothing for
// them. find only reads the ruleset; when it cannot (no root, no
// netlink), the warning says it could not look.
func Warnings(cfg *config.Config, find FindDNAT) []string {
	ws := config.Warnings(cfg)
	if find == nil {
		return ws
	}
	var ports []config.Port
	for _, d := range cfg.Doors {
		if d.Hook != config.HookInput {
			continue
		}
		for _, p := range d.Open {
			if p.Proto != config.ICMP && !slices.Contains(ports, p) {
				ports = append(ports, p)
			}
		}
	}
	if len(ports) == 0 {
		return ws
	}
	found, err := find(ports)
	if err != nil && len(found) == 0 {
		hint := ""
		if errors.Is(err, os.ErrPermission) {
			hint = " (reading the ruleset needs CAP_NET_ADMIN: run as root to look)"
		}
		return append(ws, fmt.Sprintf("%s: could not look for rules that DNAT the doors' ports elsewhere, which doors on the input hook would not gate: %v%s", cfg.File, err, hint))
	}
	for _, d := range cfg.Doors {
		if d.Hook != config.HookInput {
			continue
		}
		for _, dn := range found {
			if !slices.ContainsFunc(d.Open, func(p config.Port) bool { return p == dn.Port }) {
				continue
			}
			ws = append(ws, fmt.Sprintf("%s: door %q: open %s: %s: connections to %s are DNAT'd and forwarded, never reaching the input hook this door gates, so it gates nothing for them: set hook = \"forward\" on the door",
				cfg.File, d.Name, dn.Port, dn, dn.Port))
		}
	}
	if err != nil {
		ws = append(ws, fmt.Sprintf("%s: some chains could not be read in the look for rules that DNAT the doors' ports elsewhere: %v", cfg.File, err))
	}
	return ws
}
