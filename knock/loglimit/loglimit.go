// Package loglimit bounds the log lines that packets cause. A line per
// knock step, reset, timeout, grant or refused datagram is what an admin
// wants to read; a flood of spoofed sources would make it a line per
// packet, and a journal write per packet on the daemon's packet path. A
// Limiter lets each kind of line through a few times a second and counts
// the rest; once a second Flush logs one summary line per kind that was
// held back.
package loglimit

import (
	"sort"
	"sync"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// PerSecond is how many lines of one kind a Limiter lets through between
// two Flushes (a second apart).
const PerSecond = 10

// Limiter counts lines by kind. It is safe for concurrent use.
type Limiter struct {
	log *zap.Logger
	mu  sync.Mutex
	// kinds are few and fixed (a message each), so the map stays small.
	kinds map[string]*count
}

type count struct {
	lines, held uint64
	// summary is what the held-back lines said, for the summary line.
	summary string
}

// New returns a Limiter that logs to log.
func New(log *zap.Logger) *Limiter {
	return &Limiter{log: log, kinds: map[string]*count{}}
}

// Info logs msg with fields at info level unless PerSecond lines of msg's
// kind went out since the last Flush; then it only counts it.
func (l *Limiter) Info(msg string, fields ...zap.Field) {
	l.Log(zapcore.InfoLevel, msg, msg, fields...)
}

// Log is Info with a level and an explicit kind (several messages may
// share one).
func (l *Limiter) Log(lvl zapcore.Level, kind, msg string, fields ...zap.Field) {
	if !l.Admit(lvl, kind, msg) {
		return
	}
	l.log.Log(lvl, msg, fields...)
}

// Admit counts a line of kind as Log does and tells whether to write it
// (with the Limiter's logger): for a caller on a packet path that builds
// the line's fields only then, so that a line held back costs nothing, not
// even the fields' slice.
func (l *Limiter) Admit(lvl zapcore.Level, kind, msg string) bool {
	return l.log.Core().Enabled(lvl) && l.allow(kind, msg)
}

func (l *Limiter) allow(kind, msg string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.kinds[kind]
	if c == nil {
		c = &count{summary: msg}
		l.kinds[kind] = c
	}
	if c.lines < PerSecond {
		c.lines++
		return true
	}
	c.held++
	return false
}

// Flush logs, for each kind that had lines held back since the last
// Flush, one warning with how many, and starts a new second.
func (l *Limiter) Flush() {
	l.mu.Lock()
	var held []struct {
		kind string
		c    count
	}
	for k, c := range l.kinds {
		if c.held > 0 {
			held = append(held, struct {
				kind string
				c    count
			}{k, *c})
		}
		c.lines, c.held = 0, 0
	}
	l.mu.Unlock()
	sort.Slice(held, func(i, j int) bool { return held[i].kind < held[j].kind })
	for _, h := range held {
		l.log.Warn("more lines than are logged one by one (a flood?): "+h.c.summary,
			zap.Uint64("not_logged", h.c.held), zap.Int("logged", PerSecond))
	}
}
