package neighbours

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// FirewalldTools are the programs firewalld needs here (Debian's firewalld
// and dbus).
var FirewalldTools = append([]string{"firewalld", "firewall-cmd", "dbus-daemon"}, SandboxTools...)

// systemBusConfig is the system bus configuration Debian's dbus installs;
// the private bus is made from it.
const systemBusConfig = "/usr/share/dbus-1/system.conf"

// Firewalld is firewalld with its nftables backend running in a server
// namespace, in its default zone (public: ssh and dhcpv6-client allowed),
// on a D-Bus system bus of its own.
type Firewalld struct {
	sb       *sandbox
	env      []string // DBUS_SYSTEM_BUS_ADDRESS of the private bus
	bus, fwd *daemon
	logFile  string
}

// StartFirewalld starts a private D-Bus system bus and firewalld in
// network namespace netns, and waits until firewalld says it is running.
// Close stops both.
func StartFirewalld(netns string) (_ *Firewalld, err error) {
	sb, err := newSandbox(netns, "firewalld")
	if err != nil {
		return nil, err
	}
	f := &Firewalld{sb: sb, logFile: filepath.Join(sb.dir, "firewalld.log")}
	defer func() {
		if err != nil {
			err = errors.Join(err, f.Close())
		}
	}()
	// firewalld writes its permanent configuration to /etc/firewalld.
	if err := sb.bindCopy("/etc/firewalld"); err != nil {
		return f, err
	}
	sock := filepath.Join(sb.dir, "system_bus_socket")
	conf, err := privateBusConfig(sock)
	if err != nil {
		return f, err
	}
	confFile := filepath.Join(sb.dir, "system-bus.conf")
	if err := os.WriteFile(confFile, conf, 0o644); err != nil {
		return f, err
	}
	f.env = []string{"DBUS_SYSTEM_BUS_ADDRESS=unix:path=" + sock}
	if f.bus, err = sb.startDaemon("dbus-daemon", nil, "dbus-daemon", "--nofork", "--config-file", confFile); err != nil {
		return f, err
	}
	if err := f.bus.waitReady(10*time.Second, func() error { _, err := os.Stat(sock); return err }); err != nil {
		return f, err
	}
	f.fwd, err = sb.startDaemon("firewalld", f.env,
		"firewalld", "--nofork", "--nopid", "--log-target", "file", "--log-file", f.logFile)
	if err != nil {
		return f, err
	}
	err = f.fwd.waitReady(60*time.Second, func() error {
		out, err := f.Cmd("--state")
		if err == nil && strings.TrimSpace(out) != "running" {
			err = fmt.Errorf("firewall-cmd --state: %q", out)
		}
		return err
	})
	return f, err
}

// Elements of the stock bus configuration a private bus must not have:
// bus activation (every firewall-cmd call would try to start polkit and
// wait for it), the setuid activation helper, the pid file in /run/dbus,
// syslog, and daemonising.
var busConfigDrop = regexp.MustCompile(`(?s)<standard_system_servicedirs\s*/>|<servicehelper>.*?</servicehelper>|<pidfile>.*?</pidfile>|<syslog\s*/>|<fork\s*/>`)

var (
	busListen = regexp.MustCompile(`(?s)<listen>.*?</listen>`)
	// The policy directory the stock configuration names relative to its
	// own directory, which the copy is not in.
	busRelativeSystemD = regexp.MustCompile(`<includedir>system\.d</includedir>`)
)

// privateBusConfig is Debian's system bus configuration listening on sock
// instead, without activation, helper, pid file, syslog or fork; the
// policies (firewalld's among them) are the system's.
func privateBusConfig(sock string) ([]byte, error) {
	stock, err := os.ReadFile(systemBusConfig)
	if err != nil {
		return nil, err
	}
	if !busListen.Match(stock) {
		return nil, fmt.Errorf("%s has no <listen> element to replace", systemBusConfig)
	}
	conf := busConfigDrop.ReplaceAll(stock, nil)
	conf = busListen.ReplaceAll(conf, []byte("<listen>unix:path="+sock+"</listen>"))
	conf = busRelativeSystemD.ReplaceAll(conf, []byte("<includedir>"+filepath.Join(filepath.Dir(systemBusConfig), "system.d")+"</includedir>"))
	return conf, nil
}

// Cmd runs firewall-cmd with args against this firewalld.
func (f *Firewalld) Cmd(args ...string) (string, error) {
	return f.sb.run(f.env, append([]string{"firewall-cmd"}, args...)...)
}

// Reload is `firewall-cmd --reload`: firewalld rebuilds its table from
// the permanent configuration (runtime changes are lost).
func (f *Firewalld) Reload() error {
	_, err := f.Cmd("--reload")
	return err
}

// AddPort opens port ("8443/tcp") in the default zone, at runtime
// (`firewall-cmd --add-port`): until the next reload.
func (f *Firewalld) AddPort(port string) error {
	_, err := f.Cmd("--add-port=" + port)
	return err
}

// Log is what firewalld has logged.
func (f *Firewalld) Log() string {
	b, _ := os.ReadFile(f.logFile)
	s := string(b)
	if f.fwd != nil {
		s += f.fwd.log.String()
	}
	return s
}

// Close stops firewalld (which removes its table: CleanupOnExit=yes) and
// the bus, and releases the sandbox.
func (f *Firewalld) Close() error {
	var errs []error
	if f.fwd != nil {
		errs = append(errs, f.fwd.stop(20*time.Second))
	}
	if f.bus != nil {
		errs = append(errs, f.bus.stop(10*time.Second))
	}
	errs = append(errs, f.sb.close())
	return errors.Join(errs...)
}
