// Package daemon puts nftknockd together: the NFLOG reader with the doors
// (package engine) and the writer of nf_tables with the grant ledger
// (package gate), as tasks under one errgroup and one context. Run returns
// once every goroutine it started has ended.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock"
	"github.com/nftknock/nftknock/knock/control"
	"github.com/nftknock/nftknock/knock/engine"
	"github.com/nftknock/nftknock/knock/gate"
	"github.com/nftknock/nftknock/knock/loglimit"
	"github.com/nftknock/nftknock/knock/sshspa"
	"github.com/nftknock/nftknock/nft"
)

// Options configure Run.
type Options struct {
	Log *zap.Logger
	// Load reads and validates the configuration: at start and at every
	// reload.
	Load func() (*config.Config, error)
	// Reload receives a value for each reload asked for (SIGHUP).
	Reload <-chan struct{}
	// Source and Firewall stand in for NFLOG and nf_tables in tests; nil
	// means the real ones, for the config's group and table.
	Source   engine.Source
	Firewall gate.Firewall
	// Now is the clock (tests replace it).
	Now func() time.Time
	// The service manager: told when the daemon is ready (with its status
	// line), reloading and stopping, and pinged every WatchdogEvery from
	// the packet loop. Nil functions are not called.
	Ready, Reloading func(status string)
	Stopping         func()
	Watchdog         func()
	WatchdogEvery    time.Duration
}

// MaxHooksRunning bounds the on_open/on_close hooks running at once per
// door, whatever a flood of knocks does.
const MaxHooksRunning = 8

// Run starts the daemon and runs it until ctx is done (nil) or something
// fails. It binds the NFLOG group before it touches the table, so that a
// second daemon started by mistake fails without replacing the first
// one's ruleset. On its way out it leaves the table in place: the opened
// ports stay filtered for everyone else and live grants run out in the
// kernel on their own.
func Run(ctx context.Context, o Options) error {
	if o.Now == nil {
		o.Now = time.Now
	}
	cfg, err := o.Load()
	if err != nil {
		return err
	}
	src, fw := o.Source, o.Firewall
	owned := false
	var overruns func() uint64
	if src == nil {
		nl, err := knock.ListenNFLOG(knock.NFLOGConfig{Group: cfg.NFLOGGroup, Logger: o.Log, CopyRange: CopyRange})
		if err != nil {
			return err
		}
		defer nl.Close()
		src, overruns = nl, nl.Overruns
	}
	if fw == nil {
		f, err := OpenFirewall(cfg)
		if err != nil {
			return err
		}
		defer f.Close()
		fw = gate.NFT{Firewall: f}
		owned = f.Owned()
	}
	lines := loglimit.New(o.Log)
	g := gate.New(fw, gate.Options{Log: o.Log, Lines: lines, Now: o.Now, MaxHooksRunning: MaxHooksRunning})

	tasks, ctx := errgroup.WithContext(ctx)
	tasks.Go(func() error { return g.Run(ctx) })
	if owned {
		// No other process may write an owned table: the tool asks.
		srv, err := control.Listen(cfg.Table)
		if err != nil {
			return err
		}
		tasks.Go(func() error { return srv.Serve(ctx, toolHandler(o.Log, g)) })
	}
	var e *engine.Engine
	tasks.Go(func() error {
		var err error
		e, err = engine.Start(ctx, cfg, engine.Options{
			Log: o.Log, Lines: lines, Source: src, Gate: g, Now: o.Now, Load: o.Load,
			Ready: o.Ready, Reloading: o.Reloading, Watchdog: o.Watchdog, WatchdogEvery: o.WatchdogEvery,
		})
		if err != nil {
			return err
		}
		o.Log.Info("nftknockd started",
			zap.String("config", cfg.File), zap.String("table", strings.TrimPrefix(engine.Where(cfg), "table ")),
			zap.Uint16("nflog_group", cfg.NFLOGGroup), zap.Strings("doors", engine.DoorNames(cfg)),
			zap.Bool("table_owned", owned))
		// Only now: the table is installed and the NFLOG group bound.
		if o.Ready != nil {
			o.Ready(e.Status())
		}
		tasks.Go(func() error {
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-o.Reload:
					e.Reload()
				}
			}
		})
		err = e.Run(ctx)
		if o.Stopping != nil {
			o.Stopping()
		}
		return err
	})
	err = tasks.Wait()
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	fields := []zap.Field{zap.Uint64("grants_dropped", g.Dropped())}
	if overruns != nil {
		fields = append(fields, zap.Uint64("nflog_overruns", overruns()))
	}
	if e != nil {
		fields = append(fields, e.Counts()...)
	}
	o.Log.Info("nftknockd stopping: the table stays, live grants run out on their own", fields...)
	return nil
}

// OpenFirewall opens the nftables side of cfg: the daemon's own table, or
// attached, its chain in the admin's table.
func OpenFirewall(cfg *config.Config) (*nft.Firewall, error) {
	if a := cfg.Attach; a != nil {
		return nft.OpenAttached(nft.Attach{Table: a.Table, Chain: a.Chain}, cfg.Table)
	}
	f, err := nft.Open(cfg.Table)
	if err == nil && cfg.OwnTable {
		f.Own() // false on a kernel without NFT_TABLE_F_PERSIST: heal instead
	}
	return f, err
}

// CopyRange is how much of each logged packet NFLOG hands the daemon,
// from its network header: the largest IPv4 header (60), a UDP header (8)
// and the largest datagram a door reads (an fwknop packet, 1500 bytes). The
// kernel copies no more than a packet has, so a knock's SYN costs what it
// is.
const CopyRange = 60 + 8 + 1500

// A public-key SPA datagram (knock/sshspa) arrives whole: this fails to
// compile if the format outgrows the copy range.
var _ [CopyRange - (60 + 8 + sshspa.Size)]struct{}

// toolHandler carries out `nftknock grant` and `revoke` asked over the
// control socket, and logs each: they are root's break-glass changes.
func toolHandler(log *zap.Logger, g *gate.Gate) func(context.Context, control.Request) error {
	return func(ctx context.Context, r control.Request) error {
		addr, err := netip.ParseAddr(r.Addr)
		if err != nil {
			return fmt.Errorf("address: %w", err)
		}
		var port config.Port
		if r.Port != "" {
			if port, err = config.ParsePort(r.Port); err != nil {
				return fmt.Errorf("port: %w", err)
			}
		}
		q := gate.ToolRequest{Door: r.Door, Addr: addr, Port: port}
		switch r.Op {
		case "grant":
			q.For = time.Duration(r.ForMS) * time.Millisecond
		case "revoke":
			q.Revoke = true
		default:
			return fmt.Errorf("unknown op %q", r.Op)
		}
		if err := g.Tool(ctx, q); err != nil {
			return err
		}
		fields := []zap.Field{zap.String("door", r.Door), zap.Stringer("address", addr)}
		if r.Port != "" {
			fields = append(fields, zap.Stringer("port", port))
		}
		if q.Revoke {
			log.Info("nftknock revoke: grant ended", fields...)
		} else {
			log.Info("nftknock grant: let in", append(fields, zap.Duration("for", q.For))...)
		}
		return nil
	}
}
