package neighbours

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// DockerCLI is the client Debian's docker.io installs. It is named by
// path: another docker earlier on PATH may be a different build.
const DockerCLI = "/usr/bin/docker"

// DockerTools are the programs Docker needs here, from Debian's docker.io
// (dockerd, docker-init, which is tini, and its client) and busybox-static
// (the container's only program).
var DockerTools = append([]string{"dockerd", "docker-init", "containerd", "runc", "iptables", "busybox", DockerCLI}, SandboxTools...)

// Docker is dockerd running in a server namespace, with its own data root,
// exec root, socket, pidfile and cgroup parent.
type Docker struct {
	sb     *sandbox
	sock   string
	daemon *daemon
}

// dockerStop is how long dockerd has to stop its containers and exit.
const dockerStop = 30 * time.Second

// StartDocker starts dockerd in network namespace netns and waits until
// it answers. Close stops it.
func StartDocker(netns string) (_ *Docker, err error) {
	sb, err := newSandbox(netns, "docker")
	if err != nil {
		return nil, err
	}
	d := &Docker{sb: sb, sock: filepath.Join(sb.dir, "docker.sock")}
	defer func() {
		if err != nil {
			err = errors.Join(err, d.Close())
		}
	}()
	// dockerd writes its key and reads daemon.json in /etc/docker; it
	// would run modprobe for br_netfilter, which would change how the
	// host's own bridges are filtered.
	for _, p := range []string{"/etc/docker", "/var/lib/docker"} {
		if err := sb.bindCopy(p); err != nil {
			return d, err
		}
	}
	if err := sb.mask("modprobe"); err != nil {
		return d, err
	}
	if err := d.start(); err != nil {
		return d, err
	}
	return d, nil
}

func (d *Docker) start() error {
	dir := d.sb.dir
	var err error
	// docker-init (tini) is the PID namespace's first process: it reaps
	// the shims containerd double-forks and passes SIGTERM on to dockerd.
	d.daemon, err = d.sb.startDaemon("dockerd", nil,
		"docker-init", "--", "dockerd",
		"--data-root", filepath.Join(dir, "data"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--host", "unix://"+d.sock,
		"--pidfile", filepath.Join(dir, "docker.pid"),
		"--cgroup-parent", d.cgroupParent(),
		"--shutdown-timeout", "2",
	)
	if err != nil {
		return err
	}
	return d.daemon.waitReady(60*time.Second, func() error {
		_, err := d.CLI("version", "--format", "{{.Server.Version}}")
		return err
	})
}

// cgroupParent is the cgroup under which dockerd puts its containers, in
// every hierarchy: named after the work directory, so it is unique.
func (d *Docker) cgroupParent() string { return filepath.Base(d.sb.dir) }

// CLI runs Debian's docker client against this dockerd and returns its
// standard output. The client's own configuration stays in the work
// directory, not in ~/.docker.
func (d *Docker) CLI(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, DockerCLI, append([]string{"--host", "unix://" + d.sock}, args...)...)
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+filepath.Join(d.sb.dir, "client"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return string(out), nil
}

// ImportBusybox makes image from a root file system of busybox-static
// alone (`docker import`: no registry).
func (d *Docker) ImportBusybox(image string) error {
	rootfs, err := busyboxRootfs()
	if err != nil {
		return err
	}
	tarball := filepath.Join(d.sb.dir, "rootfs.tar")
	if err := os.WriteFile(tarball, rootfs, 0o600); err != nil {
		return err
	}
	_, err = d.CLI("import", tarball, image)
	return err
}

// busyboxRootfs is a tarball of /bin/busybox (which must be the static
// build: the image has no libc) and the links the echo server needs.
func busyboxRootfs() ([]byte, error) {
	path, err := exec.LookPath("busybox")
	if err != nil {
		return nil, err
	}
	bin, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return nil, fmt.Errorf("%s is dynamically linked: install busybox-static", path)
		}
	}
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	entries := []tar.Header{
		{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bin))},
		{Name: "bin/sh", Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777},
		{Name: "bin/cat", Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777},
	}
	for _, h := range entries {
		if err := w.WriteHeader(&h); err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := io.Copy(w, bytes.NewReader(bin)); err != nil {
				return nil, err
			}
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// RunEcho runs container name from image, publishing ports (docker run
// -p, e.g. "8443:8080") and serving TCP echo on 8080 inside: busybox nc
// -ll keeps listening and -e /bin/cat echoes each connection. --init,
// because busybox as the container's first process ignores SIGTERM;
// --restart unless-stopped, so a restart of dockerd brings it back, as on
// a real host. It returns the container's IPv4 address.
func (d *Docker) RunEcho(name, image string, publish ...string) (string, error) {
	args := []string{"run", "--detach", "--init", "--name", name, "--restart", "unless-stopped",
		// Debian's kernels have AppArmor; this host need not have the
		// apparmor package that would load Docker's profile.
		"--security-opt", "apparmor=unconfined"}
	for _, p := range publish {
		args = append(args, "--publish", p)
	}
	args = append(args, image, "/bin/busybox", "nc", "-ll", "-p", "8080", "-e", "/bin/cat")
	if _, err := d.CLI(args...); err != nil {
		return "", err
	}
	return d.ContainerIP(name)
}

// ContainerIP is the container's address on Docker's default bridge.
func (d *Docker) ContainerIP(name string) (string, error) {
	out, err := d.CLI("inspect", "--format", "{{.NetworkSettings.IPAddress}}", name)
	ip := strings.TrimSpace(out)
	if err == nil && ip == "" {
		err = fmt.Errorf("container %s has no address", name)
	}
	return ip, err
}

// RestartContainer is `docker restart` of the container.
func (d *Docker) RestartContainer(name string) error {
	if _, err := d.CLI("restart", "--time", "1", name); err != nil {
		return err
	}
	return d.waitRunning(name)
}

// RestartDaemon stops dockerd (which stops the containers) and starts it
// again on the same data root, as `systemctl restart docker` does; it
// waits until the containers named are running again.
func (d *Docker) RestartDaemon(containers ...string) error {
	if err := d.daemon.stop(dockerStop); err != nil {
		return err
	}
	if err := d.start(); err != nil {
		return err
	}
	for _, c := range containers {
		if err := d.waitRunning(c); err != nil {
			return err
		}
	}
	return nil
}

func (d *Docker) waitRunning(name string) error {
	return d.daemon.waitReady(30*time.Second, func() error {
		out, err := d.CLI("inspect", "--format", "{{.State.Running}}", name)
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "true" {
			return fmt.Errorf("container %s is not running", name)
		}
		return nil
	})
}

// Log is what dockerd has logged.
func (d *Docker) Log() string {
	if d.daemon == nil {
		return ""
	}
	return d.daemon.log.String()
}

// Close stops dockerd, which stops its containers (whatever is left dies
// with its PID namespace), removes the cgroups it made, and releases the
// sandbox.
func (d *Docker) Close() error {
	var errs []error
	if d.daemon != nil {
		errs = append(errs, d.daemon.stop(dockerStop))
	}
	errs = append(errs, removeCgroups(d.cgroupParent()), d.sb.close())
	return errors.Join(errs...)
}

// removeCgroups removes cgroup name, and the cgroups under it, from every
// cgroup hierarchy the host has mounted. dockerd removes its containers'
// cgroups when it stops them, but not the parent it was given.
func removeCgroups(name string) error {
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var errs []error
	for _, line := range strings.Split(string(mounts), "\n") {
		// mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS... - FSTYPE SOURCE SUPER
		pre, post, ok := strings.Cut(line, " - ")
		fields, fs := strings.Fields(pre), strings.Fields(post)
		if !ok || len(fields) < 5 || len(fs) < 1 || (fs[0] != "cgroup" && fs[0] != "cgroup2") {
			continue
		}
		dir := filepath.Join(fields[4], name)
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		// Deepest first: a cgroup is removed with rmdir, once it has no
		// children and no processes.
		var dirs []string
		filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil {
				errs = append(errs, fmt.Errorf("remove cgroup: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}
