package config

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The unit's SystemCallFilter=~@privileged forbids chown. These tests run
// a rewrite in a child process (this test binary again) under a seccomp
// filter that kills the process on any chown, as systemd's filter did
// before the unit set SystemCallErrorNumber=EPERM: a Use that calls chown
// dies of SIGSYS, one that does not survives.

// sandboxChildEnv tells a re-run test binary to act as the child: the
// value says what it does under the filter, sandboxFileEnv on which file.
const (
	sandboxChildEnv = "NFTKNOCK_TEST_CHOWN_KILLS"
	sandboxFileEnv  = "NFTKNOCK_TEST_CHOWN_KILLS_FILE"
)

// TestOneTimeUseNeedsNoChownWhenOwnerMatches: marking a one-time sequence
// used, in a file owned by whoever rewrites it (root under the unit),
// makes no chown call at all.
func TestOneTimeUseNeedsNoChownWhenOwnerMatches(t *testing.T) {
	runSandboxChild()
	dir := t.TempDir()
	path := otWrite(t, dir, "7000,8000:udp\n9000\n")
	if out, err := runUnderChownKiller(t, "use", path); err != nil {
		t.Fatalf("Use under a filter that kills chown: %v\n%s", err, out)
	}
	if got := otRead(t, path); got != "#7000,8000:udp\n9000\n" {
		t.Errorf("file after Use in the child: %q", got)
	}
	otNoTemp(t, dir, "otp")
}

// TestChownKillerKillsChown shows that the filter of the test above is
// live: the same child, doing a chown that changes nothing, is killed.
func TestChownKillerKillsChown(t *testing.T) {
	runSandboxChild()
	path := otWrite(t, t.TempDir(), "7000\n")
	out, err := runUnderChownKiller(t, "chown", path)
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("child that calls chown under the filter: %v, want killed by SIGSYS\n%s", err, out)
	}
	if ws, ok := exit.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGSYS {
		t.Fatalf("child that calls chown under the filter: %v, want killed by SIGSYS\n%s", err, out)
	}
}

// runUnderChownKiller runs this test again as a child that installs the
// filter and then does what (use: LoadOneTime + Use; chown: os.Chown to
// the owner it has) on path. It returns the child's output and error.
func runUnderChownKiller(t *testing.T, what, path string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), sandboxChildEnv+"="+what, sandboxFileEnv+"="+path)
	return cmd.CombinedOutput()
}

// runSandboxChild returns at once in the test itself; in the child it does
// the child's work and exits, never returning to the test.
func runSandboxChild() {
	what := os.Getenv(sandboxChildEnv)
	if what == "" {
		return
	}
	path := os.Getenv(sandboxFileEnv)
	if err := killOnChown(); err != nil {
		fmt.Fprintln(os.Stderr, "install the seccomp filter:", err)
		os.Exit(3)
	}
	var err error
	switch what {
	case "use":
		var o *OneTime
		if o, err = LoadOneTime(path); err == nil {
			err = o.Use()
		}
	case "chown":
		err = os.Chown(path, os.Getuid(), os.Getgid())
	default:
		err = fmt.Errorf("unknown child action %q", what)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(4)
	}
	os.Exit(0)
}

// killOnChown installs, on every thread of the process, a seccomp filter
// that kills the process on fchown and fchownat: Go makes every chown of
// the os package through these two (os.Chown and os.Lchown as fchownat,
// File.Chown as fchown). No architecture check: the child runs Go code
// only, which makes native system calls. No privilege is needed once
// no_new_privs is set.
func killOnChown() error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_NO_NEW_PRIVS): %w", err)
	}
	filter := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0}, // seccomp_data.nr
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: unix.SYS_FCHOWN, Jt: 2},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: unix.SYS_FCHOWNAT, Jt: 1},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_KILL_PROCESS},
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if _, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER,
		unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&prog))); errno != 0 {
		return fmt.Errorf("seccomp(SECCOMP_SET_MODE_FILTER): %w", errno)
	}
	return nil
}
