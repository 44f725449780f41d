// Package hook runs door hooks (on_open, on_close): knockd's start_command and
// stop_command without the shell: an argv array run directly, so that
// nothing a network sends can become shell syntax, a second argument or an
// option. The nftables set stays the access mechanism; hooks are side
// effects (notifications, audit), so a hook that fails, hangs or is skipped
// never changes who gets in.
package hook

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

const (
	// hookPath is the whole PATH a hook gets: the system directories, not
	// whatever the daemon was started with.
	hookPath = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
	// hookStderrMax bounds what is kept of a hook's stderr for the log; the
	// rest is read and thrown away, so a chatty hook neither blocks on a
	// full pipe nor grows the daemon's memory.
	hookStderrMax = 2 << 10
	// hookWaitDelay is how long, once a hook has been killed (or has
	// exited), the runner keeps waiting for its stderr to close before
	// closing it itself: a descendant that left the process group may
	// hold it open for ever.
	hookWaitDelay = 2 * time.Second
	// hookReapSlack is what wait allows beyond a hook's worst case
	// (timeout + hookWaitDelay) for the kill, the reaping and the log line.
	hookReapSlack = time.Second
	// Used when the caller passes a zero or negative value, so that a
	// hook can never run unbounded or not at all by mistake.
	defaultHookTimeout    = 10 * time.Second
	defaultHookMaxRunning = 1
)

// Runner runs door hooks off the packet path.
//
// Run never blocks and never waits for a hook: it only counts the hook in
// and starts a goroutine that forks and waits. At most maxRunning hooks run
// at once; one more is skipped with a warning, so a flood of knocks costs a
// bounded number of processes and goroutines, never a growing queue.
//
// A hook runs in a process group of its own, which is killed as a whole at
// the timeout. What a hook leaves running in its group after it exits is
// not killed (the runner stops waiting for its stderr hookWaitDelay after
// the exit and logs that); a hook that means to start something lasting
// should hand it to systemd-run or the like.
type Runner struct {
	log        *zap.Logger
	timeout    time.Duration
	maxRunning int

	mu      sync.Mutex
	running int
	// idle is closed when running drops to zero; a new channel is made
	// when it rises from zero. wait selects on it with a deadline, which a
	// sync.WaitGroup cannot do.
	idle chan struct{}
}

func NewRunner(log *zap.Logger, timeout time.Duration, maxRunning int) *Runner {
	if timeout <= 0 {
		timeout = defaultHookTimeout
	}
	if maxRunning < 1 {
		maxRunning = defaultHookMaxRunning
	}
	idle := make(chan struct{})
	close(idle)
	return &Runner{log: log, timeout: timeout, maxRunning: maxRunning, idle: idle}
}

// Timeout is how long a hook may run before it is killed.
func (h *Runner) Timeout() time.Duration { return h.timeout }

// Run starts argv for event ("on_open" or "on_close") of door for src and
// returns at once. In argv, an argument that is exactly "{src}" becomes
// src.String(), exactly "{door}" becomes door; nothing else is replaced
// ("x{src}" stays as it is) — substitution only as whole arguments, so an
// address can never become two arguments or an option.
func (h *Runner) Run(event, door string, src netip.Addr, argv []string) {
	fields := []zap.Field{zap.String("event", event), zap.String("door", door), zap.Stringer("source", src)}
	if len(argv) == 0 {
		h.log.Warn("hook not run: it has no program", fields...)
		return
	}
	// Config validation guarantees an absolute path; this is the last
	// line of defence against a relative one being resolved against the
	// daemon's working directory or PATH.
	if !filepath.IsAbs(argv[0]) {
		h.log.Warn("hook not run: its program must be an absolute path", append(fields, zap.String("hook", argv[0]))...)
		return
	}
	if !h.acquire() {
		h.log.Warn("hook skipped: too many hooks are running", append(fields,
			zap.String("hook", argv[0]), zap.Int("max_running", h.maxRunning))...)
		return
	}
	args := make([]string, len(argv))
	for i, a := range argv {
		switch a {
		case "{src}":
			args[i] = src.String()
		case "{door}":
			args[i] = door
		default:
			args[i] = a
		}
	}
	env := []string{
		hookPath,
		"NFTKNOCK_EVENT=" + event,
		"NFTKNOCK_DOOR=" + door,
		"NFTKNOCK_SOURCE=" + src.String(),
	}
	go func() {
		defer h.release()
		h.execute(h.timeout, args, env, fields)
	}()
}

// execute runs one hook to its end, killing it after timeout, and logs how
// it ended.
func (h *Runner) execute(timeout time.Duration, args, env []string, fields []zap.Field) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = env
	cmd.Dir = "/" // not wherever the daemon happened to be started
	// Stdin and Stdout stay nil: exec connects them to /dev/null.
	stderr := &cappedBuffer{max: hookStderrMax}
	cmd.Stderr = stderr
	// Its own process group, so that a timeout kills what the hook
	// started too, not only the hook.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// exec may call Cancel after Wait has reaped the hook, when the
		// group id could in theory name someone else's group: os.Process
		// knows whether it was reaped, and the signal-0 probe asks it.
		if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
			return err
		}
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = hookWaitDelay

	start := time.Now()
	err := cmd.Run()
	elapsed := time.Since(start)

	status, ok := hookStatus(ctx, timeout, cmd, err)
	fields = append(fields,
		zap.String("hook", args[0]),
		zap.String("status", status),
		zap.Duration("duration", elapsed.Round(time.Millisecond)))
	if out := strings.TrimRight(stderr.String(), "\n"); out != "" {
		fields = append(fields, zap.String("stderr", out))
	}
	if stderr.dropped > 0 {
		fields = append(fields, zap.Int64("stderr_bytes_dropped", stderr.dropped))
	}
	if ok {
		h.log.Info("hook finished", fields...)
	} else {
		h.log.Warn("hook failed", fields...)
	}
}

// hookStatus describes how a hook ended: "0", the exit code, the signal that
// killed it, or a timeout; ok is true for exit status 0 alone.
func hookStatus(ctx context.Context, timeout time.Duration, cmd *exec.Cmd, err error) (string, bool) {
	var exit *exec.ExitError
	switch {
	case err == nil:
		return "0", true
	case ctx.Err() != nil && cmd.ProcessState != nil && !cmd.ProcessState.Success():
		// Killed by Cancel (or failed at the very moment it ran out).
		return fmt.Sprintf("timed out after %s", timeout), false
	case errors.Is(err, exec.ErrWaitDelay):
		// Exit status 0, but something it started kept stderr open.
		return fmt.Sprintf("0, but its stderr stayed open %s after it exited (a background child?)", hookWaitDelay), false
	case errors.As(err, &exit):
		if ws, isWS := exit.Sys().(syscall.WaitStatus); isWS && ws.Signaled() {
			return "signal " + ws.Signal().String(), false
		}
		return strconv.Itoa(exit.ExitCode()), false
	case cmd.Process == nil:
		return fmt.Sprintf("not started: %v", err), false
	default:
		return err.Error(), false
	}
}

// acquire counts a hook in, unless maxRunning are running already.
func (h *Runner) acquire() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.running >= h.maxRunning {
		return false
	}
	if h.running == 0 {
		h.idle = make(chan struct{})
	}
	h.running++
	return true
}

func (h *Runner) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.running--
	if h.running == 0 {
		close(h.idle)
	}
}

// Wait waits (up to the timeout) for running hooks, for a clean shutdown.
//
// Each hook is killed at its own timeout, so a hook running when wait is
// called ends within the timeout plus hookWaitDelay (plus the moment it
// takes to kill and reap it): the bound wait uses. It is meant for
// shutdown, once nothing calls run any more; it may be called more than
// once.
func (h *Runner) Wait() {
	h.mu.Lock()
	idle, running := h.idle, h.running
	h.mu.Unlock()
	if running == 0 {
		return
	}
	t := time.NewTimer(h.timeout + hookWaitDelay + hookReapSlack)
	defer t.Stop()
	select {
	case <-idle:
	case <-t.C:
		h.mu.Lock()
		running = h.running
		h.mu.Unlock()
		h.log.Warn("hooks still running at shutdown", zap.Int("running", running))
	}
}

// cappedBuffer keeps the first max bytes written to it and counts the rest,
// which it accepts and drops: the writer (exec's copying goroutine) must
// never see an error, or it would stop draining the pipe and the hook
// would block on a full one. It is not an *os.File on purpose: exec then
// copies through a pipe instead of handing the child our descriptor.
// Only exec's goroutine writes to it, and Wait returns after that
// goroutine has finished, so it needs no lock.
type cappedBuffer struct {
	max     int
	buf     []byte
	dropped int64
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	n := min(len(p), b.max-len(b.buf))
	b.buf = append(b.buf, p[:n]...)
	b.dropped += int64(len(p) - n)
	return len(p), nil
}

func (b *cappedBuffer) String() string { return string(b.buf) }
