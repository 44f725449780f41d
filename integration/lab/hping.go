package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Hping is hping3 running in a namespace: a benchmark's flood.
type Hping struct {
	cmd     *exec.Cmd
	done    chan struct{}
	started time.Time
	once    sync.Once
	took    time.Duration
}

// StartHping runs hping3 with args in namespace ns, its output to out
// (which must be safe for concurrent writes). If the caller dies, the
// kernel kills hping3.
func StartHping(ctx context.Context, ns string, out io.Writer, args ...string) (*Hping, error) {
	h := &Hping{done: make(chan struct{})}
	h.cmd = Command(ctx, ns, append([]string{"hping3"}, args...)...)
	h.cmd.Stdout, h.cmd.Stderr = out, out
	// ip execs hping3: this is hping3's pid. SIGINT makes it print its
	// statistics.
	h.cmd.Cancel = func() error { return h.cmd.Process.Signal(os.Interrupt) }
	h.cmd.WaitDelay = 3 * time.Second
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := h.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start hping3: %w", err)
	}
	h.started = time.Now()
	go func() { h.cmd.Wait(); close(h.done) }()
	return h, nil
}

// Done is closed when hping3 has exited.
func (h *Hping) Done() <-chan struct{} { return h.done }

// Stop ends the flood (SIGINT, for its statistics; SIGKILL after 3 s) and
// returns how long it ran. It may be called more than once.
func (h *Hping) Stop() time.Duration {
	h.once.Do(func() {
		h.took = time.Since(h.started)
		h.cmd.Process.Signal(os.Interrupt)
		select {
		case <-h.done:
		case <-time.After(3 * time.Second):
			h.cmd.Process.Kill()
			<-h.done
		}
	})
	return h.took
}

// PinProcess puts every thread of this process on cpu; threads made later
// inherit it from the thread that makes them.
func PinProcess(cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("pin thread %d to CPU %d: %w", tid, cpu, err)
		}
	}
	return nil
}
