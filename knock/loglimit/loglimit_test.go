package loglimit

import (
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestLimiter: PerSecond lines of a kind between two Flushes, the rest
// counted in one summary line per kind; kinds apart; a new second after
// each Flush.
func TestLimiter(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	l := New(zap.New(core))
	for range 25 {
		l.Info("knock reset: wrong knock", zap.String("door", "ssh"))
	}
	l.Info("door opened")
	l.Log(zapcore.DebugLevel, "x", "not at this level")
	if n := logs.FilterMessage("knock reset: wrong knock").Len(); n != PerSecond {
		t.Errorf("%d reset lines, want %d", n, PerSecond)
	}
	l.Flush()
	sum := logs.FilterMessageSnippet("more lines than are logged one by one").All()
	if len(sum) != 1 || sum[0].ContextMap()["not_logged"] != uint64(15) {
		t.Fatalf("summaries %v, want one with 15 held back", sum)
	}
	l.Info("knock reset: wrong knock")
	l.Flush()
	if n := logs.FilterMessage("knock reset: wrong knock").Len(); n != PerSecond+1 {
		t.Errorf("after a new second: %d lines, want %d", n, PerSecond+1)
	}
	if n := logs.FilterMessageSnippet("more lines").Len(); n != 1 {
		t.Errorf("%d summaries, want still 1", n)
	}
	if logs.FilterMessage("not at this level").Len() != 0 || logs.FilterMessage("door opened").Len() != 1 {
		t.Error("levels or kinds mixed up")
	}
}

// TestAdmitCountsAsLog: Admit is Log's decision alone: the same budget a
// kind, the same summary of what was held back, nothing at a level that
// is off.
func TestAdmitCountsAsLog(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	l := New(zap.New(core))
	admitted := 0
	for range 15 {
		if l.Admit(zapcore.InfoLevel, "junk", "fwknop SPA packet rejected: too short") {
			admitted++
		}
	}
	if l.Admit(zapcore.DebugLevel, "debug", "off") {
		t.Error("a line at a level that is off was admitted")
	}
	if admitted != PerSecond {
		t.Errorf("%d admitted, want %d", admitted, PerSecond)
	}
	l.Flush()
	sum := logs.FilterMessage("more lines than are logged one by one (a flood?): fwknop SPA packet rejected: too short").All()
	if len(sum) != 1 || sum[0].ContextMap()["not_logged"] != uint64(5) {
		t.Errorf("summaries %v, want one with 5 held back", logs.All())
	}
}
