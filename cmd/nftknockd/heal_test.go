package main

import (
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/nft"
)

type fakeHealFW struct {
	heals, resyncs int
	healed         bool
	restored       int
	healErr        error
	resyncErr      error
}

func (f *fakeHealFW) Heal(*config.Config) (bool, int, error) {
	f.heals++
	return f.healed, f.restored, f.healErr
}

func (f *fakeHealFW) Resync() error {
	f.resyncs++
	return f.resyncErr
}

type fakeWatcher struct {
	c       chan struct{}
	mu      sync.Mutex
	pending nft.Change
	again   []nft.Change
	err     error
	closed  bool
}

func newFakeWatcher() *fakeWatcher { return &fakeWatcher{c: make(chan struct{}, 1)} }

func (w *fakeWatcher) C() <-chan struct{} { return w.c }
func (w *fakeWatcher) Err() error         { return w.err }
func (w *fakeWatcher) Close() error       { w.closed = true; return nil }

func (w *fakeWatcher) Take() nft.Change {
	w.mu.Lock()
	defer w.mu.Unlock()
	ch := w.pending
	w.pending = 0
	return ch
}

func (w *fakeWatcher) Again(ch nft.Change) {
	w.mu.Lock()
	w.again = append(w.again, ch)
	w.pending |= ch
	w.mu.Unlock()
	select {
	case w.c <- struct{}{}:
	default:
	}
}

func (w *fakeWatcher) see(ch nft.Change) {
	w.mu.Lock()
	w.pending |= ch
	w.mu.Unlock()
}

func testHealer(t *testing.T) (*healer, *fakeHealFW, *fakeWatcher, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	fw := &fakeHealFW{}
	w := newFakeWatcher()
	h, err := newHealer(zap.New(core), "nftknock", fw, func() (watcher, error) { return w, nil })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.close)
	return h, fw, w, logs
}

// TestHealerActs: what the healer does for each kind of change.
func TestHealerActs(t *testing.T) {
	cfg := &config.Config{Table: "nftknock"}
	for _, tc := range []struct {
		name            string
		seen            nft.Change
		healed          bool
		heals, resyncs  int
		logsReinstalled bool
	}{
		{"elements only: read them, no check", nft.ChangedElements, false, 0, 1, false},
		{"ruleset changed but intact: nothing to do", nft.ChangedRuleset, false, 1, 0, false},
		{"ruleset broken: re-installed, the mirror is fresh", nft.ChangedRuleset, true, 1, 0, true},
		{"both, intact: read the elements", nft.ChangedRuleset | nft.ChangedElements, false, 1, 1, false},
		{"both, broken: re-installed", nft.ChangedRuleset | nft.ChangedElements, true, 1, 0, true},
		{"overrun, intact: check and read", nft.Overrun, false, 1, 1, false},
		{"overrun, broken: re-installed", nft.Overrun, true, 1, 0, true},
		{"nothing pending", 0, false, 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, fw, w, logs := testHealer(t)
			fw.healed, fw.restored = tc.healed, 2
			w.see(tc.seen)
			h.heal(cfg)
			if fw.heals != tc.heals || fw.resyncs != tc.resyncs {
				t.Errorf("Heal called %d times, Resync %d; want %d, %d", fw.heals, fw.resyncs, tc.heals, tc.resyncs)
			}
			n := logs.FilterMessage("table gone: re-installed with 2 live grants restored").Len()
			if (n == 1) != tc.logsReinstalled || n > 1 {
				t.Errorf("logged the re-install %d times; logs: %v", n, logs.All())
			}
			if w.Take() != 0 {
				t.Error("changes left pending")
			}
			if len(w.again) != 0 {
				t.Errorf("retry scheduled after success: %v", w.again)
			}
		})
	}
}

// TestHealerRetries: a heal that fails is tried again later, with a
// growing delay, and the delay resets once it works.
func TestHealerRetries(t *testing.T) {
	h, fw, w, logs := testHealer(t)
	cfg := &config.Config{Table: "nftknock"}
	h.backoff = 10 * time.Millisecond
	fw.healErr = errors.New("kernel says no")
	w.see(nft.ChangedRuleset | nft.ChangedElements)
	h.heal(cfg)
	if logs.FilterMessageSnippet("re-installing it failed").Len() != 1 {
		t.Errorf("failure not logged: %v", logs.All())
	}
	if fw.resyncs != 0 {
		t.Error("Resync after a failed heal: it would empty the mirror of a table that is gone")
	}
	if h.backoff != 20*time.Millisecond {
		t.Errorf("backoff %v after one failure, want doubled to 20ms", h.backoff)
	}
	select {
	case <-w.C():
	case <-time.After(2 * time.Second):
		t.Fatal("no retry")
	}
	if got := w.Take(); got != nft.ChangedRuleset|nft.ChangedElements {
		t.Errorf("retry with %v, want the same changes", got)
	}

	fw.healErr, fw.healed = nil, true
	w.see(nft.ChangedRuleset)
	h.heal(cfg)
	if h.backoff != healRetryMin {
		t.Errorf("backoff %v after success, want reset to %v", h.backoff, healRetryMin)
	}
	for range 10 {
		h.again(nft.Overrun)
	}
	if h.backoff != healRetryMax {
		t.Errorf("backoff %v after many failures, want capped at %v", h.backoff, healRetryMax)
	}
}

// TestHealerRewatches: a Watcher that stopped is replaced, and since
// notifications may have been lost meanwhile, the table is checked.
func TestHealerRewatches(t *testing.T) {
	h, fw, w, logs := testHealer(t)
	w2 := newFakeWatcher()
	h.watch = func() (watcher, error) { return w2, nil }
	w.err = errors.New("socket gone")
	h.heal(&config.Config{})
	if !w.closed || h.w != w2 {
		t.Error("the stopped Watcher was not replaced")
	}
	if fw.heals != 1 || fw.resyncs != 1 {
		t.Errorf("Heal %d, Resync %d after a lost watch; want both once", fw.heals, fw.resyncs)
	}
	if logs.FilterMessageSnippet("watching anew").Len() != 1 {
		t.Errorf("not logged: %v", logs.All())
	}
	var nilHealer *healer
	if nilHealer.C() != nil {
		t.Error("a server without a healer must never be woken by it")
	}
	nilHealer.close()
}
