package hook

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// The hooks under test are real programs: Debian's /bin/true, /bin/false
// and /bin/sleep, and small #!/bin/sh scripts the tests write — they stand
// for a user's hook; the runner itself never involves a shell.

var (
	hookSrc6 = netip.MustParseAddr("2001:db8::7")
	hookSrc4 = netip.MustParseAddr("192.0.2.2")
)

func newTestHookRunner(t *testing.T, timeout time.Duration, maxRunning int) (*Runner, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zap.InfoLevel)
	h := NewRunner(zap.New(core), timeout, maxRunning)
	// No test may leave a hook running behind it.
	t.Cleanup(h.Wait)
	return h, logs
}

// hookScript writes an executable #!/bin/sh script into dir; the text may
// name OUT, which becomes dir.
func hookScript(t *testing.T, dir, name, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	body = strings.ReplaceAll(body, "OUT", dir)
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o700); err != nil {
		t.Fatal(err)
	}
	return path
}

// hookLines returns the finished/failed/skipped lines the runner logged.
func hookLines(logs *observer.ObservedLogs, msg string) []observer.LoggedEntry {
	return logs.FilterMessage(msg).AllUntimed()
}

func onlyHookLine(t *testing.T, logs *observer.ObservedLogs, msg string) map[string]any {
	t.Helper()
	lines := hookLines(logs, msg)
	if len(lines) != 1 {
		t.Fatalf("want one %q line, got %d; all lines: %v", msg, len(lines), logs.AllUntimed())
	}
	return lines[0].ContextMap()
}

func nulFields(b []byte) []string {
	return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
}

// The script records the argv and environment the kernel gave it
// (/proc/$$/cmdline and /proc/$$/environ), so that what is checked is what
// the runner passed to execve, not what the shell made of it.
const hookRecorder = `/bin/cat /proc/$$/cmdline > OUT/argv
/bin/cat /proc/$$/environ > OUT/env
`

func TestHookSubstitutesWholeArgumentsOnly(t *testing.T) {
	dir := t.TempDir()
	script := hookScript(t, dir, "record", hookRecorder)
	h, logs := newTestHookRunner(t, 5*time.Second, 4)

	argv := []string{script, "{src}", "{door}", "x{src}", "{src}x", "{SRC}", "--to={src}", "{door}{src}", " {src}", "a b", "{src}"}
	h.Run("on_open", "ssh", hookSrc6, argv)
	h.Wait()

	got, err := os.ReadFile(filepath.Join(dir, "argv"))
	if err != nil {
		t.Fatalf("the hook did not run: %v; logs: %v", err, logs.AllUntimed())
	}
	// A #! script runs as /bin/sh SCRIPT ARGS...
	want := []string{"/bin/sh", script, "2001:db8::7", "ssh", "x{src}", "{src}x", "{SRC}", "--to={src}", "{door}{src}", " {src}", "a b", "2001:db8::7"}
	if g := nulFields(got); !slices.Equal(g, want) {
		t.Errorf("argv:\n got %q\nwant %q", g, want)
	}
	if argv[1] != "{src}" {
		t.Errorf("run changed the caller's argv: %q", argv)
	}
	onlyHookLine(t, logs, "hook finished")
}

func TestHookEnvironmentIsMinimal(t *testing.T) {
	t.Setenv("NFTKNOCK_TEST_SENTINEL", "leaked")
	dir := t.TempDir()
	script := hookScript(t, dir, "record", hookRecorder)
	h, _ := newTestHookRunner(t, 5*time.Second, 4)

	h.Run("on_close", "vpn", hookSrc4, []string{script})
	h.Wait()

	got, err := os.ReadFile(filepath.Join(dir, "env"))
	if err != nil {
		t.Fatal(err)
	}
	env := nulFields(got)
	slices.Sort(env)
	want := []string{
		"NFTKNOCK_DOOR=vpn",
		"NFTKNOCK_EVENT=on_close",
		"NFTKNOCK_SOURCE=192.0.2.2",
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin",
	}
	if !slices.Equal(env, want) {
		t.Errorf("environment:\n got %q\nwant exactly %q", env, want)
	}
	if bytes.Contains(got, []byte("NFTKNOCK_TEST_SENTINEL")) {
		t.Error("the daemon's environment leaked into the hook")
	}
}

func TestHookExitStatusIsLogged(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name   string
		argv   []string
		level  zapcore.Level
		msg    string
		status string
	}{
		{"success", []string{"/bin/true"}, zap.InfoLevel, "hook finished", "0"},
		{"failure", []string{"/bin/false"}, zap.WarnLevel, "hook failed", "1"},
		{"exit code", []string{hookScript(t, dir, "exit7", "exit 7\n")}, zap.WarnLevel, "hook failed", "7"},
		{"signal", []string{hookScript(t, dir, "term", "kill -TERM $$\n")}, zap.WarnLevel, "hook failed", "signal terminated"},
		{"missing program", []string{filepath.Join(dir, "no-such-hook")}, zap.WarnLevel, "hook failed", "not started: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, logs := newTestHookRunner(t, 5*time.Second, 4)
			h.Run("on_open", "ssh", hookSrc4, tc.argv)
			h.Wait()
			lines := logs.AllUntimed()
			if len(lines) != 1 {
				t.Fatalf("want one line, got %v", lines)
			}
			l := lines[0]
			f := l.ContextMap()
			if l.Level != tc.level || l.Message != tc.msg || !strings.HasPrefix(f["status"].(string), tc.status) {
				t.Errorf("got %s %q status %q, want %s %q status %q", l.Level, l.Message, f["status"], tc.level, tc.msg, tc.status)
			}
			for k, v := range map[string]any{"event": "on_open", "door": "ssh", "source": "192.0.2.2", "hook": tc.argv[0]} {
				if fmt.Sprint(f[k]) != v {
					t.Errorf("%s = %v, want %v", k, f[k], v)
				}
			}
			if _, ok := f["duration"].(time.Duration); !ok {
				t.Errorf("no duration logged: %v", f)
			}
		})
	}
}

func TestHookRefusesRelativeProgram(t *testing.T) {
	h, logs := newTestHookRunner(t, 5*time.Second, 4)
	h.Run("on_open", "ssh", hookSrc4, []string{"true"})
	h.Run("on_open", "ssh", hookSrc4, []string{"./true"})
	h.Run("on_open", "ssh", hookSrc4, nil)
	h.Wait()
	if n := len(hookLines(logs, "hook not run: its program must be an absolute path")); n != 2 {
		t.Errorf("want 2 refusals of a relative path, got %d: %v", n, logs.AllUntimed())
	}
	if n := len(hookLines(logs, "hook not run: it has no program")); n != 1 {
		t.Errorf("want 1 refusal of an empty argv, got %d", n)
	}
	if n := len(hookLines(logs, "hook finished")) + len(hookLines(logs, "hook failed")); n != 0 {
		t.Errorf("a refused hook ran: %v", logs.AllUntimed())
	}
}

func TestHookStderrIsCapturedAndCapped(t *testing.T) {
	dir := t.TempDir()
	t.Run("short", func(t *testing.T) {
		h, logs := newTestHookRunner(t, 5*time.Second, 4)
		h.Run("on_open", "ssh", hookSrc4, []string{hookScript(t, dir, "short", "echo out; echo 'boom: no mail' >&2; exit 3\n")})
		h.Wait()
		f := onlyHookLine(t, logs, "hook failed")
		if f["stderr"] != "boom: no mail" || f["status"] != "3" {
			t.Errorf("stderr %q status %q, want %q and 3 (stdout discarded)", f["stderr"], f["status"], "boom: no mail")
		}
		if _, ok := f["stderr_bytes_dropped"]; ok {
			t.Errorf("nothing was dropped: %v", f)
		}
	})
	t.Run("chatty", func(t *testing.T) {
		// 1 MiB of stderr: far more than a pipe holds, so the hook exits 0
		// only if the runner keeps draining past the cap.
		const total = 1 << 20
		h, logs := newTestHookRunner(t, 10*time.Second, 4)
		h.Run("on_open", "ssh", hookSrc4, []string{hookScript(t, dir, "chatty",
			fmt.Sprintf("/usr/bin/head -c %d /dev/zero | /usr/bin/tr '\\0' e >&2\n", total))})
		h.Wait()
		f := onlyHookLine(t, logs, "hook finished")
		if s := f["stderr"].(string); s != strings.Repeat("e", hookStderrMax) {
			t.Errorf("stderr kept %d bytes, want the first %d", len(s), hookStderrMax)
		}
		if f["stderr_bytes_dropped"] != int64(total-hookStderrMax) {
			t.Errorf("stderr_bytes_dropped = %v, want %d", f["stderr_bytes_dropped"], total-hookStderrMax)
		}
	})
}

func TestHookTimeoutKillsProcessGroup(t *testing.T) {
	dir := t.TempDir()
	// The hook starts a child in the background and waits for it: both
	// must die at the timeout, the child through the process group.
	script := hookScript(t, dir, "hang", "/bin/sleep 60 &\necho $! > OUT/child.tmp && /bin/mv OUT/child.tmp OUT/child\nwait\n")
	const timeout = 300 * time.Millisecond
	h, logs := newTestHookRunner(t, timeout, 4)

	childFile := filepath.Join(dir, "child")
	t.Cleanup(func() {
		// Whatever the outcome, the sleep 60 does not outlive the test;
		// the pid is checked first, as it may have been reused since.
		b, err := os.ReadFile(childFile)
		if err != nil {
			return
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 1 {
			return
		}
		if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); string(cmdline) == "/bin/sleep\x0060\x00" {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})

	start := time.Now()
	h.Run("on_open", "ssh", hookSrc4, []string{script})
	h.Wait()
	if took := time.Since(start); took >= hookWaitDelay {
		// Had only the hook been killed, the child would have held stderr
		// open until hookWaitDelay closed it.
		t.Errorf("wait returned after %s, the timeout is %s: the child kept stderr open, so its group was not killed", took, timeout)
	}
	f := onlyHookLine(t, logs, "hook failed")
	if f["status"] != "timed out after 300ms" {
		t.Errorf("status %q, want timed out after 300ms", f["status"])
	}
	if d := f["duration"].(time.Duration); d < timeout || d >= hookWaitDelay {
		t.Errorf("the hook ran %s, want about the timeout (%s)", d, timeout)
	}

	b, err := os.ReadFile(childFile)
	if err != nil {
		t.Fatalf("the hook did not record its child: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	// SIGKILL is delivered at once, but the orphan is reaped by init: until
	// then it is a zombie, which is dead too.
	deadline := time.Now().Add(5 * time.Second)
	for {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || hookProcState(stat) == "Z" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the hook's child %d survived the timeout: %s", pid, stat)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// hookProcState returns the state letter of /proc/PID/stat ("R", "S", "Z"…),
// which follows the parenthesised command name.
func hookProcState(stat []byte) string {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+3 > len(stat) {
		return ""
	}
	return string(stat[i+2 : i+3])
}

func TestHookMaxRunningSkips(t *testing.T) {
	// Two hooks hang until the timeout; the third is skipped at once.
	h, logs := newTestHookRunner(t, time.Second, 2)
	for range 3 {
		h.Run("on_open", "ssh", hookSrc4, []string{"/bin/sleep", "60"})
	}
	skipped := hookLines(logs, "hook skipped: too many hooks are running")
	if len(skipped) != 1 {
		t.Fatalf("want 1 skipped hook, got %d: %v", len(skipped), logs.AllUntimed())
	}
	if l := skipped[0]; l.Level != zap.WarnLevel || l.ContextMap()["max_running"] != int64(2) {
		t.Errorf("skip line: %s %v", l.Level, l.ContextMap())
	}
	h.Wait()
	if n := len(hookLines(logs, "hook failed")); n != 2 {
		t.Errorf("want the 2 hooks that ran to time out, got %d", n)
	}

	// Finished hooks give their slots back.
	h.Run("on_close", "ssh", hookSrc4, []string{"/bin/true"})
	h.Wait()
	if n := len(hookLines(logs, "hook finished")); n != 1 {
		t.Errorf("a hook after the others finished did not run: %v", logs.AllUntimed())
	}
}

func TestHookRunReturnsAtOnce(t *testing.T) {
	h, logs := newTestHookRunner(t, 500*time.Millisecond, 4)
	start := time.Now()
	h.Run("on_open", "ssh", hookSrc4, []string{"/bin/sleep", "60"})
	// A bound, not a benchmark: forking alone takes a fraction of it.
	if took := time.Since(start); took > 50*time.Millisecond {
		t.Errorf("run took %s: it must not wait for the hook", took)
	}
	if n := len(logs.AllUntimed()); n != 0 {
		t.Errorf("the hook was logged as finished before it could be: %v", logs.AllUntimed())
	}
}

func TestHookWaitWaitsForRunningHooks(t *testing.T) {
	dir := t.TempDir()
	script := hookScript(t, dir, "slow", "/bin/sleep 0.3\n: > OUT/done\n")
	h, logs := newTestHookRunner(t, 5*time.Second, 4)

	start := time.Now()
	h.Wait() // nothing is running: returns at once
	if took := time.Since(start); took > 50*time.Millisecond {
		t.Errorf("wait with no hook running took %s", took)
	}

	h.Run("on_open", "ssh", hookSrc4, []string{script})
	h.Run("on_close", "ssh", hookSrc4, []string{"/bin/sleep", "0.2"})
	h.Wait()
	if _, err := os.Stat(filepath.Join(dir, "done")); err != nil {
		t.Errorf("wait returned before the hook finished: %v", err)
	}
	if n := len(hookLines(logs, "hook finished")); n != 2 {
		t.Errorf("want 2 finished hooks logged when wait returns, got %v", logs.AllUntimed())
	}
}

func TestHookConcurrentRuns(t *testing.T) {
	// Many goroutines at once (run under -race): every hook is either
	// run and logged, or skipped and logged, never lost.
	const n = 32
	h, logs := newTestHookRunner(t, 5*time.Second, 4)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.Run("on_open", "d"+strconv.Itoa(i), hookSrc6, []string{"/bin/true"})
		}()
	}
	wg.Wait()
	h.Wait()
	ran := len(hookLines(logs, "hook finished"))
	skipped := len(hookLines(logs, "hook skipped: too many hooks are running"))
	if ran+skipped != n || ran == 0 {
		t.Errorf("%d ran + %d skipped, want %d in all", ran, skipped, n)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.running != 0 {
		t.Errorf("%d hooks counted as running after wait", h.running)
	}
}

func TestCappedBuffer(t *testing.T) {
	b := &cappedBuffer{max: 4}
	for _, s := range []string{"ab", "cde", "fgh"} {
		if n, err := b.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v: it must accept everything", s, n, err)
		}
	}
	if b.String() != "abcd" || b.dropped != 4 {
		t.Errorf("kept %q, dropped %d; want \"abcd\", 4", b.String(), b.dropped)
	}
}
