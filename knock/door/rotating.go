package door

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock"
	"github.com/nftknock/nftknock/knock/rotate"
	"github.com/nftknock/nftknock/nft/plan"
)

// rotating is a rotating-sequence door. It accepts two windows' sequences,
// the current one's and the previous one's; window w's lives in the
// tracker's slot w%2, so that a turn of the window replaces only the older
// slot and a knock part-way through the newer one carries on.
//
// Its two port sets in the kernel (<door>_first, <door>_next) hold the
// knocks valid now, and are also its record of which sequences are unused:
// the table outlives the daemon, its memory does not.
type rotating struct {
	cfg    *config.Door
	k      *config.Rotating
	deps   Deps
	key    []byte
	derive *rotate.Deriver
	slots  [2]rotSlot
	// newest is the newest window filled in so far: a window that is not
	// newer (the wall clock stepped back) is filled as used, so that a
	// sequence is never accepted twice for its window.
	newest uint64
}

// rotSlot is one window's sequence; an empty slot has no seq.
type rotSlot struct {
	window uint64
	seq    []config.Port
	used   bool // opened the door once, or may have before a restart
}

// newRotating makes the door and fills both of its slots for now. Which of
// the two sequences are still unused is carried over from prev (a reload
// that keeps the door as it was) or read from the door's port sets in the
// kernel (a start). What cannot be told counts as used: the door then
// opens from the next window on (fail closed).
func newRotating(file string, d *config.Door, k *config.Rotating, deps Deps, prev *rotating) (*rotating, error) {
	key, err := readKey(k.KeyFile)
	if err != nil {
		return nil, fieldError(file, d, "sequence_key_file", err)
	}
	r := &rotating{cfg: d, k: k, deps: deps, key: key, derive: rotate.NewDeriver(key, d.Name, k.Length, k.Ports)}
	if prev != nil && slices.Equal(prev.key, key) && *prev.k == *k {
		r.slots, r.newest = prev.slots, prev.newest
		return r, nil
	}
	now := deps.Now()
	w := rotate.Window(now, k.Every)
	wins := []uint64{w}
	if w > 0 {
		wins = []uint64{w - 1, w}
	}
	for _, win := range wins {
		r.slots[win%2] = rotSlot{window: win, seq: r.derive.Sequence(win), used: true}
	}
	r.newest = w
	valid, err := r.stillValid(wins)
	if err != nil {
		deps.Log.Error("rotating door: cannot read which sequences are unused; it opens from the next window on",
			zap.String("door", d.Name), zap.Error(err))
	}
	for j, win := range wins {
		r.slots[win%2].used = err != nil || !valid[j]
	}
	fields := []zap.Field{zap.String("door", d.Name), zap.Uint64("window", w), zap.Int("unused", len(r.live())), zap.String("client", clientCommand(k, d.Name))}
	if len(r.live()) == 0 {
		deps.Log.Info("rotating door: no sequence of this or the last window can be told unused; it opens from the next window on", fields...)
	} else {
		deps.Log.Info("rotating door", fields...)
	}
	return r, nil
}

// stillValid tells, for the sequences of wins, whether the door's sets in
// the kernel hold each whole: its first knock in <door>_first, its others
// in either set. Sets that do not exist (a fresh start) hold nothing.
func (r *rotating) stillValid(wins []uint64) ([]bool, error) {
	valid := make([]bool, len(wins))
	var held [2]map[uint16]bool
	for i, set := range []string{plan.FirstSetName(r.cfg.Name), plan.NextSetName(r.cfg.Name)} {
		ports, ok, err := r.deps.PortSet(set)
		if err != nil || !ok {
			return valid, err
		}
		held[i] = map[uint16]bool{}
		for _, p := range ports {
			held[i][p] = true
		}
	}
	for i, win := range wins {
		seq := r.slots[win%2].seq
		valid[i] = len(seq) > 0 && held[0][seq[0].Num]
		for _, p := range seq[min(1, len(seq)):] {
			valid[i] = valid[i] && (held[0][p.Num] || held[1][p.Num])
		}
	}
	return valid, nil
}

func (r *rotating) Config() *config.Door { return r.cfg }

// live lists the sequences the door accepts now, the older window's first.
func (r *rotating) live() [][]config.Port {
	a, b := r.slots[0], r.slots[1]
	if b.window < a.window {
		a, b = b, a
	}
	var seqs [][]config.Port
	for _, sl := range []rotSlot{a, b} {
		if sl.seq != nil && !sl.used {
			seqs = append(seqs, sl.seq)
		}
	}
	return seqs
}

// trackerSeq is what the tracker's slot i follows: nothing once used.
func (r *rotating) trackerSeq(i int) []config.Port {
	if r.slots[i].used {
		return nil
	}
	return r.slots[i].seq
}

func (r *rotating) Tracked() knock.TrackedDoor {
	return knock.TrackedDoor{Slots: [][]config.Port{r.trackerSeq(0), r.trackerSeq(1)}, SeqTimeout: r.k.SeqTimeout, TCPFlags: r.k.TCPFlags}
}

// Plan has the kernel log knocks on the ports of the door's sets, which
// hold the knocks valid now, and drop the rest of the range.
func (r *rotating) Plan(b *plan.Builder) {
	first, next := splitKnocks(r.live())
	b.RotatingKnocks(r.cfg.Name, plan.RotatingKnocks{
		Range:      r.k.Ports,
		When:       plan.DoorMatch(r.cfg.Interface, r.k.TCPFlags, r.k.Ports.Proto),
		SeqTimeout: r.k.SeqTimeout,
		First:      first,
		Next:       next,
	})
}

func (r *rotating) Packet(time.Time, *knock.Logged, Actions) {}

// Next is when the next window begins.
func (r *rotating) Next(now time.Time) time.Time {
	return rotate.Start(rotate.Window(now, r.k.Every)+1, r.k.Every)
}

// Tick moves the door to the window of now: each slot whose window has
// passed gets the new window's sequence, in the tracker and, in one batch,
// in the kernel's sets. It is cheap when nothing turned, so it runs every
// second as well as at Next (a timer counts monotonic time; windows follow
// the wall clock).
func (r *rotating) Tick(now time.Time, a Actions) {
	w := rotate.Window(now, r.k.Every)
	changed := false
	for _, win := range []uint64{w - 1, w} {
		sl := &r.slots[win%2]
		if win > w || (sl.seq != nil && sl.window == win) {
			continue
		}
		*sl = rotSlot{window: win, seq: r.derive.Sequence(win), used: win <= r.newest}
		a.SetSequence(int(win%2), r.trackerSeq(int(win%2)))
		changed = true
	}
	if !changed {
		return
	}
	r.newest = max(r.newest, w)
	r.deps.Log.Debug("rotating door: window turned", zap.String("door", r.cfg.Name), zap.Uint64("window", w))
	r.push(a)
}

func (r *rotating) Event(now time.Time, e knock.Event, a Actions) {
	if e.Kind != knock.EventOpen {
		logEvent(r.deps, r.cfg, e, r.k.SeqTimeout)
		return
	}
	// A sequence opens the door once in its window: the tracker drops it
	// and the kernel's sets lose its ports, so a replay within the window
	// is dropped without reaching the daemon.
	sl := &r.slots[e.Slot]
	if sl.used {
		return
	}
	sl.used = true
	a.SetSequence(e.Slot, nil)
	r.deps.Log.Info("rotating sequence used up for its window", zap.String("door", r.cfg.Name), zap.Uint64("window", sl.window))
	r.push(a)
	a.Open(e.Src, e.Src, "")
}

// push gives the kernel the door's knocks valid now.
func (r *rotating) push(a Actions) {
	first, next := splitKnocks(r.live())
	a.Ports(plan.FirstSetName(r.cfg.Name), first)
	a.Ports(plan.NextSetName(r.cfg.Name), next)
}

// splitKnocks puts each sequence's first port in first and its other ports
// in next. A port that is the first knock of one sequence and a later
// knock of another (the two windows' sequences are drawn independently)
// goes in first only, so that no packet is logged twice; the tracker,
// which follows both sequences, does not mind which set logged it.
func splitKnocks(seqs [][]config.Port) (first, next []uint16) {
	for _, seq := range seqs {
		if len(seq) > 0 && !slices.Contains(first, seq[0].Num) {
			first = append(first, seq[0].Num)
		}
	}
	for _, seq := range seqs {
		for _, p := range seq[min(1, len(seq)):] {
			if !slices.Contains(first, p.Num) && !slices.Contains(next, p.Num) {
				next = append(next, p.Num)
			}
		}
	}
	slices.Sort(first)
	slices.Sort(next)
	return first, next
}

// clientCommand is the nftknock command line that knocks on rotating door
// name, leaving out what the client's defaults already say.
func clientCommand(k *config.Rotating, name string) string {
	args := []string{"nftknock", "knock", "-door", name, "-key-file", "KEYFILE"}
	if k.Length != config.DefaultSequenceLength {
		args = append(args, "-length", fmt.Sprint(k.Length))
	}
	if k.Ports.String() != config.DefaultSequencePorts {
		args = append(args, "-ports", k.Ports.String())
	}
	if k.Every != config.DefaultRotateEvery {
		args = append(args, "-every", k.Every.String())
	}
	return strings.Join(append(args, "HOST"), " ")
}
