package door

import (
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock"
	"github.com/nftknock/nftknock/nft/plan"
)

// sequence is a knock door: a fixed sequence, or the one a
// one_time_sequences file has due now, and maybe a close sequence.
type sequence struct {
	cfg  *config.Door
	k    *config.Sequence
	deps Deps
	file string
	// oneTime is the door's one_time_sequences file, or nil.
	oneTime *config.OneTime
	// seq is the open sequence now: the fixed one, or the file's due one
	// (nil once the file has run out: the door then opens nothing).
	seq []config.Port
}

func newSequence(file string, d *config.Door, k *config.Sequence, deps Deps) (*sequence, error) {
	s := &sequence{cfg: d, k: k, deps: deps, file: file, seq: k.Sequence}
	if k.OneTimeFile == "" {
		return s, nil
	}
	if err := config.CheckPrivate(k.OneTimeFile); err != nil {
		return nil, fieldError(file, d, "one_time_sequences", err)
	}
	ot, err := config.LoadOneTime(k.OneTimeFile)
	if err != nil {
		return nil, fieldError(file, d, "one_time_sequences", err)
	}
	s.oneTime = ot
	if seq, _, ok := ot.Current(); ok {
		s.seq = seq
	} else {
		deps.Log.Warn("door disabled: its one_time_sequences file has no unused sequence left; add lines to it and reload",
			zap.String("door", d.Name), zap.String("file", k.OneTimeFile))
	}
	return s, nil
}

// Claims are the knocks of the sequence due now of a one-time door, which
// the config cannot know: they must pass config.CheckClaims too.
func (s *sequence) Claims() []config.Claim {
	if s.oneTime == nil {
		return nil
	}
	var cs []config.Claim
	for _, k := range s.seq {
		c := config.KnockClaim("one_time_sequences", k)
		c.Own = fmt.Sprintf("%s: the sequence due now knocks on it: a knock port must not be an opened port", s.k.OneTimeFile)
		cs = append(cs, c)
	}
	return cs
}

func (s *sequence) Config() *config.Door { return s.cfg }

func (s *sequence) Tracked() knock.TrackedDoor {
	return knock.TrackedDoor{Slots: [][]config.Port{s.seq}, Close: s.k.CloseSequence, SeqTimeout: s.k.SeqTimeout, TCPFlags: s.k.TCPFlags}
}

// Plan has the kernel log each step of the door's sequences.
func (s *sequence) Plan(b *plan.Builder) {
	for _, u := range knockUses(s.seq, s.k.CloseSequence) {
		b.Knock(s.cfg.Name, plan.Knock{
			Step:       u.step,
			When:       plan.DoorMatch(s.cfg.Interface, s.k.TCPFlags, u.step.Proto),
			Label:      u.label(len(s.seq), len(s.k.CloseSequence)),
			Watch:      u.watch(len(s.seq), len(s.k.CloseSequence)),
			SeqTimeout: s.k.SeqTimeout,
		})
	}
}

func (s *sequence) Packet(time.Time, *knock.Logged, Actions) {}
func (s *sequence) Tick(time.Time, Actions)                  {}

func (s *sequence) Event(now time.Time, e knock.Event, a Actions) {
	switch e.Kind {
	case knock.EventOpen:
		if s.oneTime != nil && !s.useOneTime(a) {
			return
		}
		a.Open(e.Src, e.Src, "")
	case knock.EventClose:
		a.Close(e.Src)
	default:
		logEvent(s.deps, s.cfg, e, s.k.SeqTimeout)
	}
}

// useOneTime marks the one-time sequence due now used and moves the door
// to the next one, in the tracker and in the kernel's rules (a new plan).
// It reports whether the knock may open the door: if the file cannot be
// marked, the door is disabled and nothing opens (fail closed).
func (s *sequence) useOneTime(a Actions) bool {
	door, file := zap.String("door", s.cfg.Name), zap.String("file", s.k.OneTimeFile)
	if err := s.oneTime.Use(); err != nil {
		s.deps.Log.Error("door disabled: the used one-time sequence could not be marked in its file; nothing opened", door, file, zap.Error(err))
		s.next(a, nil)
		return false
	}
	next, line, ok := s.oneTime.Current()
	if !ok {
		s.deps.Log.Warn("door disabled: its one_time_sequences file has run out; add lines to it and reload", door, file)
	} else {
		s.deps.Log.Info("one-time sequence used; the next is due", door, file, zap.Int("line", line), zap.Int("left", s.oneTime.Remaining()))
	}
	s.next(a, next)
	return true
}

func (s *sequence) next(a Actions, seq []config.Port) {
	s.seq = seq
	a.SetSequence(0, seq)
	a.Replan()
}

// knockUse is one step of a door's sequences: the knock, and which steps
// of the open (0) and close (1) sequences it is.
type knockUse struct {
	step  config.Port
	steps [2][]int // 1-based
}

// knockUses lists the distinct steps of open and close, in order.
func knockUses(open, close []config.Port) []*knockUse {
	var uses []*knockUse
	for kind, seq := range [][]config.Port{open, close} {
		for i, p := range seq {
			var u *knockUse
			for _, x := range uses {
				if x.step == p {
					u = x
				}
			}
			if u == nil {
				u = &knockUse{step: p}
				uses = append(uses, u)
			}
			u.steps[kind] = append(u.steps[kind], i+1)
		}
	}
	return uses
}

// watch is the knocking set the step puts a source in: knock_first for a
// first step of either sequence, none when every use of it ends its
// sequence (nothing left to watch for), knocking otherwise.
func (u *knockUse) watch(nOpen, nClose int) plan.Watch {
	last := true
	for i, of := range []int{nOpen, nClose} {
		for _, n := range u.steps[i] {
			if n == 1 {
				return plan.WatchFirst
			}
			last = last && n == of
		}
	}
	if last {
		return plan.WatchNone
	}
	return plan.WatchNext
}

// label is "knock 1 of 3", "knocks 1, 3 and 5 of 5", "close knock 2 of 2".
func (u *knockUse) label(nOpen, nClose int) string {
	var parts []string
	for i, what := range []string{"knock", "close knock"} {
		steps := u.steps[i]
		if len(steps) == 0 {
			continue
		}
		of := nOpen
		if i == 1 {
			of = nClose
		}
		if len(steps) > 1 {
			what += "s"
		}
		parts = append(parts, fmt.Sprintf("%s %s of %d", what, joinSteps(steps), of))
	}
	return strings.Join(parts, ", ")
}

// joinSteps writes 1 / 1 and 3 / 1, 2 and 4.
func joinSteps(steps []int) string {
	s := make([]string, len(steps))
	for i, n := range steps {
		s[i] = fmt.Sprint(n)
	}
	if len(s) == 1 {
		return s[0]
	}
	return strings.Join(s[:len(s)-1], ", ") + " and " + s[len(s)-1]
}
