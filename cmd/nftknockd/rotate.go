package main

import (
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock/rotate"
)

// rotor keeps one rotating door's sequences in step with the clock. The
// door accepts two windows' sequences, the current one's and the previous
// one's; window w's lives in the tracker's slot w%2, so that a turn of the
// window replaces only the older slot and a knock part-way through the
// newer one carries on. A rotor belongs to the server loop's goroutine.
type rotor struct {
	door   int
	name   string
	derive *rotate.Deriver
	every  time.Duration
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

// live lists the sequences the door accepts now, the older window's first.
func (r *rotor) live() [][]config.Port {
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
func (r *rotor) trackerSeq(i int) []config.Port {
	if r.slots[i].used {
		return nil
	}
	return r.slots[i].seq
}

// newRotors makes a rotor per rotating door of cfg and fills both of its
// slots for now. Which of the two sequences are still unused is read from
// the door's sets in the kernel (see nft.Firewall.StillValid): the table
// outlives the daemon, its memory does not. What cannot be read counts as
// used: the door then opens from the next window on (fail closed).
func (s *server) newRotors(cfg *config.Config, now time.Time) []*rotor {
	rotors := make([]*rotor, len(cfg.Doors))
	for i := range cfg.Doors {
		d := &cfg.Doors[i]
		if !d.IsRotating() {
			continue
		}
		r := &rotor{door: i, name: d.Name, derive: rotate.NewDeriver(d.SequenceKey, d.Name, d.SequenceLength, d.SequencePorts), every: d.RotateEvery}
		w := rotate.Window(now, r.every)
		wins := []uint64{w}
		if w > 0 {
			wins = []uint64{w - 1, w}
		}
		seqs := make([][]config.Port, len(wins))
		for j, win := range wins {
			seqs[j] = r.derive.Sequence(win)
			r.slots[win%2] = rotSlot{window: win, seq: seqs[j]}
		}
		r.newest = w
		valid, err := s.fw.StillValid(d.Name, seqs)
		if err != nil {
			s.log.Error("rotating door: cannot read which sequences are unused; it opens from the next window on",
				zap.String("door", d.Name), zap.Error(err))
		}
		for j, win := range wins {
			r.slots[win%2].used = err != nil || !valid[j]
		}
		rotors[i] = r
	}
	return rotors
}

// applyRotors hands every rotor's sequences to the tracker and the
// firewall: at start, before the table is installed (the firewall keeps
// them for Install), and after a reload.
func (s *server) applyRotors() {
	for _, r := range s.rotors {
		if r == nil {
			continue
		}
		for i := range r.slots {
			s.tracker.SetSequence(r.door, i, r.trackerSeq(i))
		}
		s.pushRotation(r)
		d := &s.cfg.Doors[r.door]
		fields := []zap.Field{zap.String("door", r.name), zap.Uint64("window", r.newest), zap.Int("unused", len(r.live())),
			zap.String("client", clientCommand(d))}
		if len(r.live()) == 0 {
			s.log.Info("rotating door: no sequence of this or the last window can be told unused; it opens from the next window on", fields...)
			continue
		}
		s.log.Info("rotating door", fields...)
	}
}

// rotate moves every rotor to the window of now: each slot whose window
// has passed gets the new window's sequence, in the tracker and, in one
// batch per door, in the kernel's sets. It is cheap when nothing turned,
// so the loop calls it from its timer and from housekeeping alike (a
// timer counts monotonic time; windows follow the wall clock).
func (s *server) rotate(now time.Time) {
	for _, r := range s.rotors {
		if r == nil {
			continue
		}
		w := rotate.Window(now, r.every)
		changed := false
		for _, win := range []uint64{w - 1, w} {
			sl := &r.slots[win%2]
			if win > w || (sl.seq != nil && sl.window == win) {
				continue
			}
			*sl = rotSlot{window: win, seq: r.derive.Sequence(win), used: win <= r.newest}
			s.tracker.SetSequence(r.door, int(win%2), r.trackerSeq(int(win%2)))
			changed = true
		}
		if !changed {
			continue
		}
		if w > r.newest {
			r.newest = w
		}
		s.log.Debug("rotating door: window turned", zap.String("door", r.name), zap.Uint64("window", w))
		s.pushRotation(r)
	}
}

// nextTurn is when the next window of any rotor begins.
func (s *server) nextTurn(now time.Time) (time.Time, bool) {
	var next time.Time
	for _, r := range s.rotors {
		if r == nil {
			continue
		}
		t := rotate.Start(rotate.Window(now, r.every)+1, r.every)
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	return next, !next.IsZero()
}

// useRotation marks the sequence in slot i of door's rotor used for its
// window, before the door opens: the tracker drops it (once the Observe
// that completed it returns) and the kernel's sets lose its ports, so a
// replay within the window is dropped without reaching the daemon. It
// reports whether the knock may open the door.
func (s *server) useRotation(door, i int) bool {
	r := s.rotors[door]
	if r.slots[i].used {
		return false
	}
	r.slots[i].used = true
	s.pendingSeqs = append(s.pendingSeqs, seqChange{door: door, slot: i})
	s.log.Info("rotating sequence used up for its window", zap.String("door", r.name), zap.Uint64("window", r.slots[i].window))
	s.pushRotation(r)
	return true
}

// pushRotation gives the kernel the door's sequences valid now. If the
// kernel refuses, the old ports stay in its sets, but the tracker follows
// the new sequences all the same: a used one never opens the door again.
func (s *server) pushRotation(r *rotor) {
	if err := s.fw.Rotate(r.name, r.live()); err != nil {
		s.log.Error("rotating door: knock ports not updated in the kernel", zap.String("door", r.name), zap.Error(err))
	}
}

// clientCommand is the nftknock command line that knocks on rotating door
// d, leaving out what the client's defaults already say.
func clientCommand(d *config.Door) string {
	args := []string{"nftknock", "knock", "-door", d.Name, "-key-file", "KEYFILE"}
	if d.SequenceLength != config.DefaultSequenceLength {
		args = append(args, "-length", fmt.Sprint(d.SequenceLength))
	}
	if d.SequencePorts.String() != config.DefaultSequencePorts {
		args = append(args, "-ports", d.SequencePorts.String())
	}
	if d.RotateEvery != config.DefaultRotateEvery {
		args = append(args, "-every", d.RotateEvery.String())
	}
	return strings.Join(append(args, "HOST"), " ")
}
