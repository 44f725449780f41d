// Package neighbours runs, inside a lab's server network namespace, the
// software a real server has next to nftknock: Docker (dockerd and a
// container publishing a port), firewalld (nftables backend, its own
// D-Bus), ufw, and an admin's own nftables ruleset. The integration tests
// use it to see how today's gate fares among them.
//
// Nothing here touches the host. Each neighbour runs in a sandbox: a
// private mount namespace whose processes run in the server's network
// namespace, where the sysfs is the namespace's own, /run is an empty
// tmpfs, and every file the neighbour writes (/etc/docker, /etc/firewalld,
// /etc/ufw ...) is a private copy bind-mounted over the host's. Daemons
// run as the first process of their own PID namespace, so that stopping
// one kills and reaps everything it started (Docker's shims and
// containers too). Close stops the daemons, releases the sandbox (its
// mounts go with it) and deletes the work directory; the server
// namespace's firewall state goes with the namespace.
package neighbours

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// SandboxTools are the programs every sandbox drives (util-linux and
// coreutils: on every Debian machine).
var SandboxTools = []string{"nsenter", "unshare", "mount", "umount", "cp", "cat", "true"}

// sandbox is a private mount namespace for one neighbour, whose commands
// run in network namespace netns.
type sandbox struct {
	netns string // name under /run/netns
	dir   string // work directory (on the host, seen inside too)
	// holder keeps the mount namespace alive: `unshare --mount cat`, which
	// reads a pipe only we write to. When we close it — or die — cat
	// exits and the namespace goes with the last process in it.
	holder *exec.Cmd
	stdin  io.WriteCloser
	done   chan struct{}
}

// cmdTimeout bounds every one-shot command a sandbox runs.
const cmdTimeout = 60 * time.Second

// newSandbox makes a sandbox for netns with a fresh work directory. Its
// path is short on purpose: dockerd and containerd put unix sockets under
// it, and those have a 108-byte limit.
func newSandbox(netns, name string) (_ *sandbox, err error) {
	if _, err := os.Stat("/run/netns/" + netns); err != nil {
		return nil, fmt.Errorf("network namespace %s: %w", netns, err)
	}
	dir, err := os.MkdirTemp("", "nftk-"+name)
	if err != nil {
		return nil, err
	}
	s := &sandbox{netns: netns, dir: dir, done: make(chan struct{})}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.close())
		}
	}()
	s.holder = exec.Command("unshare", "--mount", "--propagation", "private", "cat")
	if s.stdin, err = s.holder.StdinPipe(); err != nil {
		return s, err
	}
	if err := s.holder.Start(); err != nil {
		return s, fmt.Errorf("start the sandbox's mount namespace: %w", err)
	}
	go func() { s.holder.Wait(); close(s.done) }()
	// The namespace exists once unshare has exec'd cat; until then
	// /proc/PID/ns/mnt is still the host's.
	if err := s.waitUnshared(5 * time.Second); err != nil {
		return s, err
	}

	// Inside: the network namespace's own sysfs (as `ip netns exec` does),
	// with the host's cgroup hierarchies moved onto it (dockerd needs
	// them), and an empty /run, so that nothing finds the host's daemons'
	// sockets (containerd's, D-Bus's) or writes next to them.
	stage := filepath.Join(dir, "cgroup")
	if err := os.Mkdir(stage, 0o700); err != nil {
		return s, err
	}
	steps := [][]string{
		{"mount", "--rbind", "/sys/fs/cgroup", stage},
		{"umount", "--lazy", "/sys"},
		{"mount", "-t", "sysfs", "sysfs", "/sys"},
		{"mount", "--move", stage, "/sys/fs/cgroup"},
		{"mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"},
	}
	for _, argv := range steps {
		if _, err := s.run(nil, argv...); err != nil {
			return s, fmt.Errorf("prepare the sandbox: %w", err)
		}
	}
	return s, nil
}

// waitUnshared waits until the holder is in a mount namespace of its own.
func (s *sandbox) waitUnshared(within time.Duration) error {
	host, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return err
	}
	deadline := time.Now().Add(within)
	for {
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", s.holder.Process.Pid))
		if err == nil && ns != host {
			return nil
		}
		select {
		case <-s.done:
			return errors.New("unshare --mount exited at once")
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("unshare --mount did not make a mount namespace within %s", within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// command returns a command that runs argv inside the sandbox.
func (s *sandbox) command(ctx context.Context, env []string, argv ...string) *exec.Cmd {
	args := append([]string{
		"--mount=/proc/" + fmt.Sprint(s.holder.Process.Pid) + "/ns/mnt",
		"--net=/run/netns/" + s.netns,
		"--",
	}, argv...)
	cmd := exec.CommandContext(ctx, "nsenter", args...)
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

// run runs argv inside the sandbox and returns its combined output.
func (s *sandbox) run(env []string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := s.command(ctx, env, argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s (in %s): %w: %s", strings.Join(argv, " "), s.netns, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// bindCopy copies path (a file or a directory) into the work directory
// and bind-mounts the copy over path inside the sandbox, so that what the
// neighbour writes there stays private. A path the host does not have is
// left alone: mounting over it would mean creating it on the host.
func (s *sandbox) bindCopy(path string) error {
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	dst := filepath.Join(s.dir, "copy", strings.ReplaceAll(strings.Trim(path, "/"), "/", "_"))
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	if out, err := exec.Command("cp", "-a", path, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("cp -a %s %s: %v: %s", path, dst, err, out)
	}
	_, err := s.run(nil, "mount", "--bind", dst, path)
	return err
}

// mask bind-mounts true(1) over program inside the sandbox, if the host
// has it: for programs a neighbour would run that act on the whole machine
// (modprobe), which then succeed and do nothing.
func (s *sandbox) mask(program string) error {
	path, err := exec.LookPath(program)
	if err != nil {
		return nil
	}
	noop, err := exec.LookPath("true")
	if err != nil {
		return err
	}
	_, err = s.run(nil, "mount", "--bind", noop, path)
	return err
}

// close releases the mount namespace (once every process in it is gone,
// the kernel drops it and its mounts) and deletes the work directory.
func (s *sandbox) close() error {
	var errs []error
	if s.holder != nil && s.holder.Process != nil {
		s.stdin.Close()
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
			s.holder.Process.Kill()
			<-s.done
		}
	}
	if err := os.RemoveAll(s.dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// daemon is a long-running program in a sandbox, started as the first
// process of a PID namespace of its own: when it exits, the kernel kills
// whatever it left behind, and reaps it.
type daemon struct {
	name string
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
	err  error
}

// startDaemon starts argv in the sandbox, in a new PID namespace with its
// own /proc (unshare --mount-proc: in a mount namespace nested in the
// sandbox's, so whatever the daemon mounts stays with it). If the test
// process dies, the kernel kills the daemon (Pdeathsig) and so its
// namespace.
func (s *sandbox) startDaemon(name string, env []string, argv ...string) (*daemon, error) {
	full := append([]string{"unshare", "--mount", "--propagation", "private", "--mount-proc", "--"}, argv...)
	d := &daemon{name: name, log: &syncBuffer{}, done: make(chan struct{})}
	d.cmd = s.command(context.Background(), env, full...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.done) }()
	return d, nil
}

// exited tells whether the daemon has exited.
func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits for the daemon to exit; after within it
// kills it, and says so.
func (d *daemon) stop(within time.Duration) error {
	if d.exited() {
		return nil
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil && !d.exited() {
		return fmt.Errorf("stop %s: %w", d.name, err)
	}
	select {
	case <-d.done:
		return nil
	case <-time.After(within):
		d.cmd.Process.Kill()
		<-d.done
		return fmt.Errorf("%s did not exit within %s of SIGTERM: killed\n%s", d.name, within, d.log)
	}
}

// waitReady polls ready until it succeeds, the daemon exits, or within
// runs out.
func (d *daemon) waitReady(within time.Duration, ready func() error) error {
	deadline := time.Now().Add(within)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		if d.exited() {
			return fmt.Errorf("%s exited (%v) before it was ready: %v\n%s", d.name, d.err, err, d.log)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready within %s: %v\n%s", d.name, within, err, d.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
