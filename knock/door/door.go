// Package door is what each kind of door does at run time: what it has the
// kernel capture (its rules in the plan), what it does with a packet the
// kernel logged for it, and what it does as time passes. The kinds are
// knock sequences (sequence.go: fixed, one-time, with a close sequence),
// shared-key SPA (spa.go), fwknop's SPA (fwknop.go) and rotating sequences
// (rotating.go). A new kind
// is a file here with its constructor in New, beside its KindSpec in
// package config. Public-key SPA doors (keyspa.go) open for SSH keys.
//
// Doors run on the engine's goroutine (package engine), one at a time:
// they need no locks. What they decide (grant, revoke, set ports) they ask
// of the engine through Actions; the engine hands it to the gate, which
// owns nf_tables.
package door

import (
	"fmt"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock"
	"github.com/nftknock/nftknock/knock/loglimit"
	"github.com/nftknock/nftknock/knock/spa"
	"github.com/nftknock/nftknock/nft/plan"
)

// Door is one configured door at run time.
type Door interface {
	// Config is the door as configured.
	Config() *config.Door
	// Plan adds what the door has the kernel capture to b. (Its gate
	// comes from its config: see Gate.)
	Plan(b *plan.Builder)
	// Packet handles a packet the kernel logged under the door's prefix.
	// Sequenced doors get theirs through the tracker instead (Event).
	Packet(now time.Time, lg *knock.Logged, a Actions)
	// Tick runs once a second, and at the time Next says if the door is
	// Timed.
	Tick(now time.Time, a Actions)
}

// Sequenced is a door whose knocks the engine's tracker follows: the
// tracker is shared by all such doors, since a knock on one door's port
// breaks off a knock on another's.
type Sequenced interface {
	Door
	// Tracked is what the tracker follows for the door.
	Tracked() knock.TrackedDoor
	// Event handles what the tracker reports for the door.
	Event(now time.Time, e knock.Event, a Actions)
}

// Timed is a door that wants a Tick at a time of its own.
type Timed interface {
	// Next is when the door's next Tick is due after now.
	Next(now time.Time) time.Time
}

// Actions are what a door asks of the daemon.
type Actions interface {
	// Open grants the door to addr, for a knock or datagram from source;
	// by names who made it, if a key tells ("" otherwise).
	Open(addr, source netip.Addr, by string)
	// OpenPorts is Open for a door that grants per port (its kind's
	// GrantsPerPort): ports alone, each one the door opens, open to addr,
	// for d (0: the door's open_for).
	OpenPorts(addr, source netip.Addr, by string, ports []config.Port, d time.Duration)
	// Close ends addr's grant at once.
	Close(addr netip.Addr)
	// Ports makes one of the door's port sets hold ports.
	Ports(set string, ports []uint16)
	// SetSequence gives one of the door's sequences (a slot of Tracked)
	// new steps in the tracker; nil opens nothing.
	SetSequence(slot int, steps []config.Port)
	// Replan has the ruleset rebuilt: the door's capture rules changed.
	Replan()
}

// Deps are what the daemon gives every door.
type Deps struct {
	Log *zap.Logger
	// Lines bounds the per-packet and per-source lines.
	Lines *loglimit.Limiter
	// Replay is the SPA replay cache, shared by the SPA doors and kept
	// across reloads (a reload must not let a datagram through again).
	Replay *spa.Replay
	// PortSet reads a port set of the installed table (ok false when it
	// does not exist): what a rotating door recorded there of its used
	// sequences survives the daemon.
	PortSet func(set string) (ports []uint16, ok bool, err error)
	// Now is the clock.
	Now func() time.Time
	// Rejected counts a datagram an SPA door refused, by reason (nil: not
	// counted).
	Rejected func(SPAReason)
	// Offload has job done off the engine goroutine, so that work of
	// hundreds of microseconds a packet (a signature check) does not hold
	// up the other doors: job.Work runs on the engine's worker, then
	// job.Done back on the engine goroutine with d's Actions, if d still
	// runs (after a reload replaced d, nothing more). It reports false,
	// and runs nothing, when the worker's queue is full. Nil (engine.Check,
	// tests): the door does the work itself.
	Offload func(d Door, job Job) bool
	// Shared are the generation's doors that share a capture port (nil:
	// none do; a test of one door).
	Shared *Shared
}

// Job is work a door hands to the engine's worker (Deps.Offload).
type Job interface {
	// Work runs on the worker goroutine.
	Work()
	// Done runs on the engine goroutine after Work.
	Done(now time.Time, a Actions)
}

// New makes the door of d, reading what its kind needs (keys, one-time
// files), with the state of prev, the door of the same name in the
// running generation, if any and of the same kind. file names the config
// in errors, which are *config.Error naming the door and field.
func New(file string, d *config.Door, deps Deps, prev Door) (Door, error) {
	switch k := d.Kind.(type) {
	case Maker:
		return k.NewDoor(file, d, deps, prev)
	case *config.Sequence:
		return newSequence(file, d, k, deps)
	case *config.SPA:
		return newSPA(file, d, k, deps)
	case *config.KeySPA:
		return newKeySPA(file, d, k, deps)
	case *config.Fwknop:
		return newFwknop(file, d, k, deps)
	case *config.Rotating:
		p, _ := prev.(*rotating)
		return newRotating(file, d, k, deps, p)
	}
	return nil, &config.Error{File: file, Door: d.Name, Msg: fmt.Sprintf("no door of kind %T", d.Kind)}
}

// Maker is a config.Kind that makes its own doors: a kind added from
// outside this package (a test's) needs no case in New.
type Maker interface {
	NewDoor(file string, d *config.Door, deps Deps, prev Door) (Door, error)
}

// Gate is the gate of d: what it opens, to whom; per port if its kind
// grants so (GrantsPerPort).
func Gate(d *config.Door) plan.Door {
	pp, _ := d.Kind.(interface{ GrantsPerPort() bool })
	g := plan.Door{Name: d.Name, Open: d.Open, Anyone: d.OpenToAnyone, AlwaysAllow: d.AlwaysAllow, MaxGrants: d.MaxGrants,
		PerPort: pp != nil && pp.GrantsPerPort(), To: d.To, ForwardTo: d.ForwardTo}
	if d.Hook == config.HookForward {
		g.Hook = plan.HookForward
	}
	return g
}

// fieldError is a problem with a file a door's field names.
func fieldError(file string, d *config.Door, field string, err error) error {
	return &config.Error{File: file, Door: d.Name, Field: field, Msg: err.Error()}
}

// readKey reads a door key file: root's (config.CheckPrivate), readable by
// no one else, holding the base64 of 32 random bytes.
func readKey(path string) ([]byte, error) {
	if err := config.CheckPrivate(path); err != nil {
		return nil, err
	}
	return spa.ReadKeyFile(path)
}

// logEvent logs what the tracker reports of a sequenced door. A first step
// (and its timeout) is what a flood of spoofed sources produces, one per
// packet: it is logged at debug level only. The rest go through the line
// limiter.
func logEvent(deps Deps, d *config.Door, e knock.Event, seqTimeout time.Duration) {
	// Constant messages: a string built per event would be garbage per
	// packet of a flood.
	what, stage, timedOut := "knock", "knock stage reached", "knock timed out"
	if e.Close {
		what, stage, timedOut = "close knock", "close knock stage reached", "close knock timed out"
	}
	switch e.Kind {
	case knock.EventStep:
		msg := stage
		if e.Step == 1 {
			// Checked first: building the fields would be garbage per
			// packet of a flood.
			if ce := deps.Log.Check(zap.DebugLevel, msg); ce != nil {
				ce.Write(zap.String("door", d.Name), zap.Stringer("source", e.Src), zap.String("step", fmt.Sprintf("%d/%d", e.Step, e.Of)))
			}
			return
		}
		deps.Lines.Info(msg, zap.String("door", d.Name), zap.Stringer("source", e.Src), zap.String("step", fmt.Sprintf("%d/%d", e.Step, e.Of)))
	case knock.EventReset:
		fields := []zap.Field{zap.String("door", d.Name), zap.Stringer("source", e.Src), zap.Stringer("got", e.Got), zap.Int("after_steps", e.Step)}
		if e.Reason == knock.ResetWrongKnock {
			fields = append(fields, zap.Stringer("want", e.Want))
		}
		deps.Lines.Info(what+" reset: "+e.Reason.String(), fields...)
	case knock.EventTimeout:
		msg := timedOut
		if e.Step == 1 {
			if ce := deps.Log.Check(zap.DebugLevel, msg); ce != nil {
				ce.Write(zap.String("door", d.Name), zap.Stringer("source", e.Src), zap.Int("after_steps", e.Step), zap.Duration("seq_timeout", seqTimeout))
			}
			return
		}
		deps.Lines.Info(msg, zap.String("door", d.Name), zap.Stringer("source", e.Src), zap.Int("after_steps", e.Step), zap.Duration("seq_timeout", seqTimeout))
	}
}
