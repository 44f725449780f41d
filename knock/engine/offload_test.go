package engine

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock/door"
	"github.com/nftknock/nftknock/knock/gate"
)

// recordingJob notes what became of it.
type recordingJob struct {
	worked bool
	done   door.Actions
}

func (j *recordingJob) Work()                            { j.worked = true }
func (j *recordingJob) Done(_ time.Time, a door.Actions) { j.done = a }

// TestOffloadedJobsGoBackToTheirDoor: a finished job's Done runs with its
// own door's Actions; one of a door no longer running (a reload replaced
// it) is dropped; the queue refuses what it has no room for.
func TestOffloadedJobsGoBackToTheirDoor(t *testing.T) {
	cfg, err := config.Parse(filepath.Join(t.TempDir(), "f.toml"), []byte(`
[[door]]
name = "a"
sequence = ["7000"]
seq_timeout = "1s"
open = ["22"]
open_for = "1s"
[[door]]
name = "b"
sequence = ["7001"]
seq_timeout = "1s"
open = ["23"]
open_for = "1s"
`))
	if err != nil {
		t.Fatal(err)
	}
	g := gate.New(gate.NewFakeFirewall(nil), gate.Options{Log: zap.NewNop()})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go g.Run(ctx)
	e, err := Start(ctx, cfg, Options{Log: zap.NewNop(), Source: NewFakeSource(1), Gate: g})
	if err != nil {
		t.Fatal(err)
	}
	b, gone := e.gen.doors[1], &recordingJob{}
	mine := &recordingJob{}
	replaced, err := door.New(cfg.File, &cfg.Doors[1], e.deps(ctx), nil) // b as a reload would make it anew
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []offloaded{{b, mine}, {replaced, gone}} {
		if !e.offload(o.d, o.job) {
			t.Fatal("the queue refused a job")
		}
	}
	workCtx, stopWork := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go func() { e.work(workCtx); close(stopped) }()
	deadline := time.Now().Add(3 * time.Second)
	for {
		e.finishedMu.Lock()
		n := len(e.finished)
		e.finishedMu.Unlock()
		if n == 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	e.takeFinished()
	if !mine.worked || mine.done != e.actions(1) {
		t.Errorf("the running door's job: worked %v, done with %v, want door b's Actions", mine.worked, mine.done)
	}
	if !gone.worked || gone.done != nil {
		t.Errorf("the replaced door's job: worked %v, done %v, want dropped", gone.worked, gone.done)
	}
	stopWork()
	<-stopped
	full := 0
	for range offloadQueue + 1 {
		if !e.offload(b, &recordingJob{}) {
			full++
		}
	}
	if full != 1 {
		t.Errorf("%d of %d jobs refused, want 1 past the queue's %d", full, offloadQueue+1, offloadQueue)
	}
}
