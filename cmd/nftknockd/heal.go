package main

import (
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/nft"
)

// Self-healing. `nft flush ruleset` (what `systemctl restart nftables` runs
// on most distributions), `nft delete table inet nftknock`, or a hand edit
// of the daemon's chain would silently open or close the gate. An
// nft.Watcher listens to nf_tables' notifications on its own goroutine and
// only wakes the server loop, which owns the Firewall and does the work:
// if the ruleset is no longer intact it installs it again, putting back
// every grant that was live with the time it had left, in one batch; if
// someone else changed the grant sets (`nftknock grant`/`revoke`, `nft`
// by hand), it reads them into the Firewall's mirror, so that they are
// restored too and a knock refreshes them right. The daemon's own batches
// are not changes (the Watcher knows them by their netlink port).

// healRetry bounds how long a failed heal waits before it is tried again.
const (
	healRetryMin = time.Second
	healRetryMax = 30 * time.Second
)

// healFirewall is what the healer needs of nft.Firewall.
type healFirewall interface {
	Heal(cfg *config.Config) (healed bool, restored int, err error)
	Resync() error
}

// watcher is what the healer needs of nft.Watcher.
type watcher interface {
	C() <-chan struct{}
	Take() nft.Change
	Again(nft.Change)
	Err() error
	Close() error
}

type healer struct {
	log   *zap.Logger
	table string
	fw    healFirewall
	watch func() (watcher, error) // starts a Watcher
	w     watcher
	now   func() time.Time

	// A heal that failed is tried again after backoff, by a timer that
	// puts the changes back into the Watcher.
	backoff time.Duration
	retry   *time.Timer
}

func newHealer(log *zap.Logger, table string, fw healFirewall, watch func() (watcher, error)) (*healer, error) {
	w, err := watch()
	if err != nil {
		return nil, err
	}
	return &healer{log: log, table: table, fw: fw, watch: watch, w: w, now: time.Now, backoff: healRetryMin}, nil
}

// watchFirewall starts an nft.Watcher on fw.
func watchFirewall(fw *nft.Firewall) func() (watcher, error) {
	return func() (watcher, error) {
		w, err := fw.Watch()
		if err != nil {
			return nil, err
		}
		return w, nil
	}
}

// C wakes the server loop when there is something to look at; nil (never
// ready) for a server without a healer.
func (h *healer) C() <-chan struct{} {
	if h == nil {
		return nil
	}
	return h.w.C()
}

// heal runs on the server loop: it takes the changes the Watcher saw and
// repairs what they broke. cfg is the running config.
func (h *healer) heal(cfg *config.Config) {
	ch := h.w.Take()
	if err := h.w.Err(); err != nil {
		// The Watcher stopped; anything may have happened since.
		h.log.Warn("watching the table failed; watching anew", zap.Error(err))
		h.w.Close()
		w, werr := h.watch()
		if werr != nil {
			h.log.Error("cannot watch the table: a flushed ruleset will not be noticed until this works", zap.Error(werr))
			h.again(ch | nft.Overrun)
			return
		}
		h.w = w
		ch |= nft.Overrun
	}
	if ch&(nft.ChangedRuleset|nft.Overrun) != 0 {
		start := h.now()
		healed, restored, err := h.fw.Heal(cfg)
		if err != nil {
			h.log.Error("the table is damaged or could not be checked, and re-installing it failed; retrying",
				zap.String("table", "inet "+h.table), zap.Duration("retry_in", h.backoff), zap.Error(err))
			h.again(ch)
			return
		}
		if healed {
			h.log.Warn(fmt.Sprintf("table gone: re-installed with %d live grants restored", restored),
				zap.String("table", "inet "+h.table), zap.Stringer("seen", ch), zap.Duration("took", h.now().Sub(start)))
			h.backoff = healRetryMin
			// Install read the grant sets it kept into the mirror.
			return
		}
	}
	if ch&(nft.ChangedElements|nft.Overrun) != 0 {
		if err := h.fw.Resync(); err != nil {
			h.log.Error("reading grants changed by someone else failed; retrying", zap.Duration("retry_in", h.backoff), zap.Error(err))
			h.again(nft.ChangedElements)
			return
		}
	}
	h.backoff = healRetryMin
}

// again schedules ch to be taken again after the backoff, and doubles it.
func (h *healer) again(ch nft.Change) {
	if h.retry != nil {
		h.retry.Stop()
	}
	w := h.w
	h.retry = time.AfterFunc(h.backoff, func() { w.Again(ch) })
	h.backoff = min(2*h.backoff, healRetryMax)
}

func (h *healer) close() {
	if h == nil {
		return
	}
	if h.retry != nil {
		h.retry.Stop()
	}
	h.w.Close()
}
