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

// firewall is what the server needs of nft.Firewall.
type firewall interface {
	Install(cfg *config.Config) error
	Grant(door string, addr netip.Addr, d time.Duration) error
	Prune(now time.Time)
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

	// Counted by the reader goroutine, read by the loop.
	queueDrops  atomic.Uint64 // packets dropped because the loop fell behind
	parseErrors atomic.Uint64 // logged packets that were not TCP/UDP with ports
	dropsLogged uint64
}

func newServer(log *zap.Logger, path string, cfg *config.Config, fw firewall) *server {
	s := &server{log: log, path: path, cfg: cfg, fw: fw, now: time.Now}
	s.tracker = knock.NewTracker(cfg.Doors, cfg.MaxTracked, s.event)
	return s
}

// run installs the ruleset, then reads knocks until ctx is done. It binds
// the NFLOG group before touching the table, so that a second daemon
// started by mistake fails without replacing the first one's ruleset.
func run(ctx context.Context, log *zap.Logger, path string, reload <-chan struct{}) error {
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
	if err := fw.Install(cfg); err != nil {
		return err
	}
	s := newServer(log, path, cfg, fw)
	log.Info("nftknockd started",
		zap.String("config", path), zap.String("table", "inet "+cfg.Table),
		zap.Uint16("nflog_group", cfg.NFLOGGroup), zap.Strings("doors", doorNames(cfg)))

	packets := make(chan knock.Packet, queueLen)
	readErr := make(chan error, 1)
	readCtx, stopRead := context.WithCancel(ctx)
	defer stopRead()
	go func() {
		readErr <- nl.Run(readCtx, func(payload []byte, _ uint32) { s.forward(payload, packets) })
	}()

	err = s.loop(ctx, packets, reload, readErr)
	stopRead()
	if err != nil {
		return err
	}
	log.Info("nftknockd stopping: the table stays, live grants run out on their own",
		zap.Uint64("nflog_overruns", nl.Overruns()), zap.Uint64("queue_drops", s.queueDrops.Load()),
		zap.Uint64("unparsed_packets", s.parseErrors.Load()))
	return nil
}

func (s *server) loop(ctx context.Context, packets <-chan knock.Packet, reload <-chan struct{}, readErr <-chan error) error {
	sweep := time.NewTicker(sweepEvery)
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case p := <-packets:
			s.packet(&p)
		case <-sweep.C:
			s.housekeep(s.now())
		case <-reload:
			s.reload()
		case err := <-readErr:
			if err == nil {
				err = errors.New("reader stopped")
			}
			return fmt.Errorf("read NFLOG group %d: %w", s.cfg.NFLOGGroup, err)
		}
	}
}

// forward runs on the reader goroutine: it parses a logged packet and
// queues what the tracker needs, copying no more than that.
func (s *server) forward(payload []byte, packets chan<- knock.Packet) {
	var p knock.Packet
	if err := knock.ParseIP(payload, &p); err != nil {
		s.parseErrors.Add(1)
		return
	}
	select {
	case packets <- p:
	default:
		s.queueDrops.Add(1)
	}
}

func (s *server) packet(p *knock.Packet) {
	s.tracker.Observe(s.now(), p)
}

// housekeep runs every sweepEvery on the loop goroutine.
func (s *server) housekeep(now time.Time) {
	s.tracker.Sweep(now)
	s.fw.Prune(now)
	if n := s.queueDrops.Load(); n != s.dropsLogged {
		s.log.Warn("knock packets dropped: the daemon fell behind", zap.Uint64("since_last", n-s.dropsLogged), zap.Uint64("total", n))
		s.dropsLogged = n
	}
}

// event logs what the tracker reports and grants a completed knock.
func (s *server) event(e knock.Event) {
	if e.Kind == knock.EventEvict {
		s.log.Info("source forgotten: max_tracked sources are knocking", zap.Stringer("source", e.Src),
			zap.Int("max_tracked", s.cfg.MaxTracked))
		return
	}
	d := &s.cfg.Doors[e.Door]
	door, src := zap.String("door", d.Name), zap.Stringer("source", e.Src)
	switch e.Kind {
	case knock.EventStep:
		s.log.Info("knock stage reached", door, src, zap.String("step", fmt.Sprintf("%d/%d", e.Step, len(d.Sequence))))
	case knock.EventReset:
		s.log.Info("knock reset: wrong port", door, src,
			zap.Stringer("got", e.Got), zap.Stringer("want", e.Want), zap.Int("after_steps", e.Step))
	case knock.EventTimeout:
		s.log.Info("knock timed out", door, src, zap.Int("after_steps", e.Step), zap.Duration("seq_timeout", d.SeqTimeout))
	case knock.EventOpen:
		if err := s.fw.Grant(d.Name, e.Src, d.OpenFor); err != nil {
			s.log.Error("door NOT opened: adding the source to the set failed", door, src, zap.Error(err))
			return
		}
		s.log.Info("door opened", door, src, zap.Duration("for", d.OpenFor), zap.Stringers("ports", d.Open))
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
	s.cfg = cfg
	// Progress through the old sequences means nothing under new ones.
	s.tracker = knock.NewTracker(cfg.Doors, cfg.MaxTracked, s.event)
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
