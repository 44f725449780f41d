package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock"
	"github.com/nftknock/nftknock/nft"
)

// sweepEvery is how often expired knock progress is forgotten and the
// grant mirror pruned: often enough that a stale half-sequence is gone
// about a second after its seq_timeout.
const sweepEvery = time.Second

// queueLen bounds the packets waiting between the NFLOG reader and the
// server loop. When the loop falls behind, further packets are dropped and
// counted, so memory stays bounded whatever arrives.
const queueLen = 4096

// maxHooksRunning bounds the on_open/on_close hooks running at once per
// door, whatever a flood of knocks does.
const maxHooksRunning = 8

// firewall is what the server needs of nft.Firewall.
type firewall interface {
	Install(cfg *config.Config) error
	Grant(door string, addr netip.Addr, d time.Duration) error
	Revoke(door string, addr netip.Addr) error
	Prune(now time.Time)
	Rotate(door string, seqs [][]config.Port) error
	StillValid(door string, seqs [][]config.Port) ([]bool, error)
}

// server owns the tracker and the firewall: both are used only from the
// goroutine that runs loop, so neither needs a lock.
type server struct {
	log     *zap.Logger
	path    string // config file, reread on reload
	cfg     *config.Config
	fw      firewall
	tracker *knock.Tracker
	now     func() time.Time
	notify  *notifier // the service manager (sd_notify); nil outside one
	healer  *healer   // re-installs the table when someone deletes it (heal.go); nil in tests
	spa     *spaState // single-packet authorization doors (spa.go)

	// doors maps an NFLOG prefix (a door's name) to the door's index; the
	// reader goroutine reads it, a reload swaps it.
	doors atomic.Pointer[map[string]int]
	// Per door: its one_time_sequences file, if any, and its hook runner.
	oneTime []*config.OneTime
	hooks   []*hookRunner
	// rotors[d] keeps rotating door d's sequences (rotate.go); nil for
	// other doors.
	rotors []*rotor
	// closing holds when each grant of a door with on_close ends, so the
	// hook runs then. Access is the kernel's business; this only times a
	// side effect.
	closing map[grant]time.Time

	// pendingSeqs are one-time sequence changes for the tracker, applied
	// once the Observe that caused them has returned.
	pendingSeqs []seqChange
	// evicted counts sources forgotten since the last housekeep: under a
	// flood a line per eviction would flood the journal too.
	evicted int

	// Counted by the reader goroutine, read by the loop.
	queueDrops  atomic.Uint64 // packets dropped because the loop fell behind
	parseErrors atomic.Uint64 // logged packets that were not ones a knock rule matches
	dropsLogged uint64
}

type grant struct {
	door string
	src  netip.Addr
}

func newServer(log *zap.Logger, path string, cfg *config.Config, fw firewall) (*server, error) {
	s := &server{log: log, path: path, fw: fw, now: time.Now, closing: map[grant]time.Time{}, spa: newSPAState(time.Now())}
	if err := s.use(cfg); err != nil {
		return nil, err
	}
	return s, nil
}

// use makes cfg the running config: door routing, one-time files, hooks
// and a tracker for its sequences.
func (s *server) use(cfg *config.Config) error {
	if err := s.spa.load(cfg); err != nil {
		return err
	}
	oneTime := make([]*config.OneTime, len(cfg.Doors))
	for i, d := range cfg.Doors {
		if d.OneTime == "" {
			continue
		}
		ot, err := config.LoadOneTime(d.OneTime)
		if err != nil {
			return err
		}
		oneTime[i] = ot
		if seq, _, ok := ot.Current(); !ok {
			s.log.Warn("door disabled: its one_time_sequences file has no unused sequence left; add lines to it and reload",
				zap.String("door", d.Name), zap.String("file", d.OneTime))
			cfg.Doors[i].Sequence = nil
		} else {
			cfg.Doors[i].Sequence = seq
		}
	}
	doors := make(map[string]int, len(cfg.Doors)+1)
	hooks := make([]*hookRunner, len(cfg.Doors))
	for i, d := range cfg.Doors {
		doors[d.Name] = i
		hooks[i] = newHookRunner(s.log, d.HookTimeout, maxHooksRunning)
	}
	doors[nft.ScanPrefix] = -1
	rotors := s.newRotors(cfg, s.now())
	s.cfg, s.oneTime, s.hooks, s.rotors = cfg, oneTime, hooks, rotors
	s.doors.Store(&doors)
	s.tracker = knock.NewTracker(cfg.Doors, cfg.MaxTracked, s.event)
	s.applyRotors()
	return nil
}

// run installs the ruleset, then reads knocks until ctx is done. It binds
// the NFLOG group before touching the table, so that a second daemon
// started by mistake fails without replacing the first one's ruleset.
func run(ctx context.Context, log *zap.Logger, path string, reload <-chan struct{}) error {
	notify, err := notifierFromEnv(log)
	if err != nil {
		return err
	}
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	nl, err := knock.ListenNFLOG(knock.NFLOGConfig{Group: cfg.NFLOGGroup, Logger: log})
	if err != nil {
		return err
	}
	defer nl.Close()
	fw, err := nft.Open(cfg.Table)
	if err != nil {
		return err
	}
	defer fw.Close()
	s, err := newServer(log, path, cfg, fw)
	if err != nil {
		return err
	}
	if err := fw.Install(s.cfg); err != nil {
		return err
	}
	if s.healer, err = newHealer(log, cfg.Table, fw, watchFirewall(fw)); err != nil {
		return err
	}
	defer s.healer.close()
	log.Info("nftknockd started",
		zap.String("config", path), zap.String("table", "inet "+cfg.Table),
		zap.Uint16("nflog_group", cfg.NFLOGGroup), zap.Strings("doors", doorNames(cfg)))
	// Only now: the table is installed and the NFLOG group bound.
	s.notify = notify
	s.notify.ready(s.status())

	packets := make(chan knock.Packet, queueLen)
	readErr := make(chan error, 1)
	readCtx, stopRead := context.WithCancel(ctx)
	defer stopRead()
	go func() {
		readErr <- nl.Run(readCtx, func(lg knock.Logged) { s.forward(lg, packets) })
	}()

	err = s.loop(ctx, packets, reload, readErr)
	s.notify.stopping()
	stopRead()
	for _, h := range s.hooks {
		h.wait()
	}
	if err != nil {
		return err
	}
	log.Info("nftknockd stopping: the table stays, live grants run out on their own",
		append([]zap.Field{zap.Uint64("nflog_overruns", nl.Overruns()), zap.Uint64("queue_drops", s.queueDrops.Load()),
			zap.Uint64("unparsed_packets", s.parseErrors.Load())}, s.spaRejectCounts()...)...)
	return nil
}

func (s *server) loop(ctx context.Context, packets <-chan knock.Packet, reload <-chan struct{}, readErr <-chan error) error {
	sweep := time.NewTicker(sweepEvery)
	defer sweep.Stop()
	// turn fires when the next window of a rotating door begins.
	turn := time.NewTimer(time.Hour)
	defer turn.Stop()
	armTurn := func() {
		now := s.now()
		if next, ok := s.nextTurn(now); ok {
			turn.Reset(next.Sub(now))
		} else {
			turn.Stop()
		}
	}
	armTurn()
	watchdog, stopWatchdog := s.notify.watchdogTicker()
	defer stopWatchdog()
	for {
		select {
		case <-ctx.Done():
			return nil
		case p := <-packets:
			s.packet(&p)
		case g := <-s.spa.grants:
			s.spaOpen(g)
		case <-sweep.C:
			s.housekeep(s.now())
		case <-turn.C:
			s.rotate(s.now())
			armTurn()
		case <-watchdog:
			s.notify.ping()
		case <-s.healer.C():
			s.healer.heal(s.cfg)
		case <-reload:
			s.notify.reloading()
			s.reload()
			armTurn()
			s.notify.ready(s.status())
		case err := <-readErr:
			if err == nil {
				err = errors.New("reader stopped")
			}
			return fmt.Errorf("read NFLOG group %d: %w", s.cfg.NFLOGGroup, err)
		}
	}
}

// forward runs on the reader goroutine: it parses a logged packet, tells
// from the log prefix which door's rule logged it, and queues what the
// tracker needs, copying no more than that.
func (s *server) forward(lg knock.Logged, packets chan<- knock.Packet) {
	if s.forwardSPA(lg, s.now()) {
		return
	}
	var p knock.Packet
	door, ok := (*s.doors.Load())[string(lg.Prefix)]
	if !ok {
		// Not one of our rules' prefixes (or a rule of a config just
		// replaced): nothing to count it for.
		s.parseErrors.Add(1)
		return
	}
	if err := knock.ParseIP(lg.Payload, &p); err != nil {
		s.parseErrors.Add(1)
		return
	}
	p.Door = door
	select {
	case packets <- p:
	default:
		s.queueDrops.Add(1)
	}
}

func (s *server) packet(p *knock.Packet) {
	s.tracker.Observe(s.now(), p)
	// Sequence changes wait until Observe has returned: the tracker calls
	// event from inside Observe and must not be changed under itself.
	for _, c := range s.pendingSeqs {
		s.tracker.SetSequence(c.door, c.slot, c.seq)
	}
	s.pendingSeqs = s.pendingSeqs[:0]
}

// housekeep runs every sweepEvery on the loop goroutine.
func (s *server) housekeep(now time.Time) {
	s.rotate(now) // in case the wall clock stepped since the timer was set
	s.tracker.Sweep(now)
	s.spaSummary()
	s.spa.replay.Prune(now)
	if s.evicted > 0 {
		s.log.Warn("sources forgotten: max_tracked sources were part-way through a knock (a flood?)",
			zap.Int("forgotten", s.evicted), zap.Int("max_tracked", s.cfg.MaxTracked))
		s.evicted = 0
	}
	s.fw.Prune(now)
	for g, end := range s.closing {
		if now.After(end) {
			delete(s.closing, g)
			s.runHook("on_close", g.door, g.src)
		}
	}
	if n := s.queueDrops.Load(); n != s.dropsLogged {
		s.log.Warn("knock packets dropped: the daemon fell behind", zap.Uint64("since_last", n-s.dropsLogged), zap.Uint64("total", n))
		s.dropsLogged = n
	}
}

// event logs what the tracker reports and acts on completed knocks.
func (s *server) event(e knock.Event) {
	if e.Kind == knock.EventEvict {
		s.evicted++
		return
	}
	d := &s.cfg.Doors[e.Door]
	what := "knock"
	if e.Close {
		what = "close knock"
	}
	door, src := zap.String("door", d.Name), zap.Stringer("source", e.Src)
	switch e.Kind {
	case knock.EventStep:
		// A first step is what a flood of spoofed sources produces, one
		// per packet: logged at debug level only, so that a flood does
		// not also flood the journal. Later steps need a real source.
		lvl := zap.InfoLevel
		if e.Step == 1 {
			lvl = zap.DebugLevel
		}
		s.log.Log(lvl, what+" stage reached", door, src, zap.String("step", fmt.Sprintf("%d/%d", e.Step, e.Of)))
	case knock.EventReset:
		fields := []zap.Field{door, src, zap.Stringer("got", e.Got), zap.Int("after_steps", e.Step)}
		if e.Reason == knock.ResetWrongKnock {
			fields = append(fields, zap.Stringer("want", e.Want))
		}
		s.log.Info(what+" reset: "+e.Reason.String(), fields...)
	case knock.EventTimeout:
		lvl := zap.InfoLevel
		if e.Step == 1 {
			lvl = zap.DebugLevel // as for the first step
		}
		s.log.Log(lvl, what+" timed out", door, src, zap.Int("after_steps", e.Step), zap.Duration("seq_timeout", d.SeqTimeout))
	case knock.EventOpen:
		if s.rotors[e.Door] != nil && !s.useRotation(e.Door, e.Slot) {
			return
		}
		s.open(e.Door, e.Src)
	case knock.EventClose:
		s.close(e.Door, e.Src)
	}
}

// grantees are the addresses a door opens to for a knock from src: src
// itself, or for an open_to = "anyone" door every address of both
// families (the unspecified addresses stand for them in the door's set).
func grantees(d *config.Door, src netip.Addr) []netip.Addr {
	if d.OpenToAnyone {
		return []netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()}
	}
	return []netip.Addr{src}
}

// open grants a completed knock. A one-time sequence is marked used first:
// if that fails the door is disabled and nothing is opened (fail closed).
func (s *server) open(i int, src netip.Addr) {
	d := &s.cfg.Doors[i]
	door := zap.String("door", d.Name)
	if s.oneTime[i] != nil && !s.useOneTime(i) {
		return
	}
	for _, a := range grantees(d, src) {
		if err := s.fw.Grant(d.Name, a, d.OpenFor); err != nil {
			s.log.Error("door NOT opened: adding the source to the set failed", door, zap.Stringer("source", src), zap.Error(err))
			return
		}
	}
	to := src.String()
	if d.OpenToAnyone {
		to = "anyone"
	}
	s.log.Info("door opened", door, zap.Stringer("source", src), zap.String("to", to),
		zap.Duration("for", d.OpenFor), zap.Stringers("ports", d.Open))
	s.runHook("on_open", d.Name, src)
	if len(d.OnClose) > 0 {
		s.closing[grant{d.Name, src}] = s.now().Add(d.OpenFor)
	}
}

// close ends a source's grant at once, on a completed close sequence.
func (s *server) close(i int, src netip.Addr) {
	d := &s.cfg.Doors[i]
	for _, a := range grantees(d, src) {
		if err := s.fw.Revoke(d.Name, a); err != nil {
			s.log.Error("door NOT closed: removing the source from the set failed", zap.String("door", d.Name),
				zap.Stringer("source", src), zap.Error(err))
			return
		}
	}
	s.log.Info("door closed by close sequence", zap.String("door", d.Name), zap.Stringer("source", src))
	delete(s.closing, grant{d.Name, src})
	s.runHook("on_close", d.Name, src)
}

// useOneTime marks door i's current one-time sequence used and moves the
// door to the next one, in the kernel as well: the knock rules change. It
// reports whether the knock may open the door.
func (s *server) useOneTime(i int) bool {
	d := &s.cfg.Doors[i]
	ot := s.oneTime[i]
	if err := ot.Use(); err != nil {
		s.log.Error("door disabled: the used one-time sequence could not be marked in its file; nothing opened",
			zap.String("door", d.Name), zap.String("file", d.OneTime), zap.Error(err))
		s.setSequence(i, nil)
		return false
	}
	next, line, ok := ot.Current()
	if !ok {
		s.log.Warn("door disabled: its one_time_sequences file has run out; add lines to it and reload",
			zap.String("door", d.Name), zap.String("file", d.OneTime))
	} else {
		s.log.Info("one-time sequence used; the next is due", zap.String("door", d.Name),
			zap.String("file", d.OneTime), zap.Int("line", line), zap.Int("left", ot.Remaining()))
	}
	s.setSequence(i, next)
	return true
}

// setSequence gives door i a new sequence in the kernel rules and the
// tracker. If the kernel refuses the batch, the old knock rules stay (it
// is atomic), but the tracker follows the new sequence all the same: the
// used-up one can never open the door again (fail closed).
func (s *server) setSequence(i int, seq []config.Port) {
	s.cfg.Doors[i].Sequence = seq
	if err := s.fw.Install(s.cfg); err != nil {
		s.log.Error("knock rules not updated for the next one-time sequence", zap.String("door", s.cfg.Doors[i].Name), zap.Error(err))
	}
	s.pendingSeqs = append(s.pendingSeqs, seqChange{door: i, seq: seq})
}

type seqChange struct {
	door, slot int
	seq        []config.Port
}

func (s *server) runHook(event, door string, src netip.Addr) {
	i, ok := (*s.doors.Load())[door]
	if !ok || i < 0 {
		return
	}
	argv := s.cfg.Doors[i].OnOpen
	if event == "on_close" {
		argv = s.cfg.Doors[i].OnClose
	}
	if len(argv) > 0 {
		s.hooks[i].run(event, door, src, argv)
	}
}

// reload applies the config file anew. A config that does not validate,
// or that the kernel refuses, is logged and refused: the old one keeps
// running, its ruleset untouched (the install is one atomic batch).
func (s *server) reload() {
	cfg, err := config.Load(s.path)
	if err == nil {
		err = sameOwnership(s.cfg, cfg)
	}
	if err == nil {
		err = s.fw.Install(cfg)
	}
	if err != nil {
		s.log.Error("reload refused, the running config stays", zap.String("config", s.path), zap.Error(err))
		return
	}
	// Progress through the old sequences means nothing under new ones.
	if err := s.use(cfg); err != nil {
		s.log.Error("reload: config installed but not taken up", zap.Error(err))
		return
	}
	s.log.Info("reloaded", zap.String("config", s.path), zap.Strings("doors", doorNames(cfg)))
}

// sameOwnership refuses a reload that moves the daemon to another table or
// NFLOG group: the old table would be left behind with its rules, and
// rebinding the group is a restart's job.
func sameOwnership(old, cfg *config.Config) error {
	if old.Table != cfg.Table {
		return fmt.Errorf("%s: table: changed from %q to %q: restart nftknockd to move tables (and run `nftknockd -remove` with the old config first)", cfg.File, old.Table, cfg.Table)
	}
	if old.NFLOGGroup != cfg.NFLOGGroup {
		return fmt.Errorf("%s: nflog_group: changed from %d to %d: restart nftknockd to change it", cfg.File, old.NFLOGGroup, cfg.NFLOGGroup)
	}
	return nil
}

func doorNames(cfg *config.Config) []string {
	names := make([]string, len(cfg.Doors))
	for i, d := range cfg.Doors {
		names[i] = d.Name
	}
	return names
}
