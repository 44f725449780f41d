package main

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock/control"
	"github.com/nftknock/nftknock/nft"
)

// maxGrant is the longest -for: open_for's limit in the configuration.
const maxGrant = 30 * 24 * time.Hour

var grantCmd = &command{
	name:     "grant",
	synopsis: "-door DOOR -for DURATION [-port PORT] [-table NAME | -config FILE] ADDRESS",
	summary:  "let an address through a door for a while, without a knock (break-glass)",
	help: `Adds ADDRESS (IPv4 or IPv6) to the door's set with a timeout of DURATION,
exactly as a knock would with open_for = DURATION; if the address already
has a grant, its timer restarts at DURATION. The kernel expires it. For an
open_to = "anyone" door, ADDRESS is 0.0.0.0 (every IPv4 address) or ::
(every IPv6 address). Works
whether nftknockd runs or not: a daemon that owns its table (own_table, the
default on Linux 6.9 and later) is asked to make the grant over its control
socket, since no other process may write the table; otherwise the tool
writes it and a running daemon learns of it. Either way the daemon keeps
the grant (a heal restores it) and a knock from the address never shortens
it.
DURATION is a Go duration ("90s", "1h30m"), 1ms to 720h, whole milliseconds.
A door that grants per port (an fwknop door) opens one port a grant: name
it with -port (22:tcp); other doors open all their ports and take none.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) int {
		door := fs.String("door", "", "the `door` whose ports to open (required)")
		d := fs.Duration("for", 0, "how long, e.g. 1h (required)")
		portFlag := fs.String("port", "", "the `port` to open (PORT:tcp|udp), for a door that grants per port")
		tf := addTableFlags(fs)
		return func(e *env, args []string) int {
			addr, ok := grantArgs(e, "grant", *door, args)
			if !ok {
				return exitUsage
			}
			port, ok := portArg(e, "grant", *portFlag)
			if !ok {
				return exitUsage
			}
			if err := checkFor(fs, *d); err != nil {
				return usageErr(e, "grant", "%v", err)
			}
			fw, code := tf.open(e, "grant")
			if fw == nil {
				return code
			}
			defer fw.Close()
			err := checkDoorAddr(fw, *door, addr)
			if err == nil {
				err = viaDaemon(fw, control.Request{Op: "grant", Door: *door, Addr: addr.String(), Port: portText(port), ForMS: d.Milliseconds()},
					func() error { return fw.GrantPort(*door, addr, port, *d) })
			}
			if err != nil {
				fail(e, "grant", err)
				return exitFail
			}
			until := e.now().Add(*d).UTC().Format(time.RFC3339)
			fmt.Fprintf(e.stdout, "door %s: %s let in for %s, until %s\n", *door, who(fw, *door, addr, port), fmtDuration(*d), until)
			return exitOK
		}
	},
}

var revokeCmd = &command{
	name:     "revoke",
	synopsis: "-door DOOR [-port PORT] [-table NAME | -config FILE] ADDRESS",
	summary:  "end an address's grant on a door now",
	help: `Deletes ADDRESS from the door's set: new connections from it to the door's
ports are dropped at once. Connections already let in stay up (the ruleset
accepts established connections). An address with no grant is not an
error. For a door that grants per port, -port names the grant to end.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) int {
		door := fs.String("door", "", "the `door` (required)")
		portFlag := fs.String("port", "", "the `port` (PORT:tcp|udp) whose grant ends, for a door that grants per port")
		tf := addTableFlags(fs)
		return func(e *env, args []string) int {
			addr, ok := grantArgs(e, "revoke", *door, args)
			if !ok {
				return exitUsage
			}
			port, ok := portArg(e, "revoke", *portFlag)
			if !ok {
				return exitUsage
			}
			fw, code := tf.open(e, "revoke")
			if fw == nil {
				return code
			}
			defer fw.Close()
			err := checkDoorAddr(fw, *door, addr)
			had := false
			if err == nil {
				had, err = hasGrant(fw, *door, addr, port)
			}
			if err == nil {
				err = viaDaemon(fw, control.Request{Op: "revoke", Door: *door, Addr: addr.String(), Port: portText(port)},
					func() error { return fw.RevokePort(*door, addr, port) })
			}
			if err != nil {
				fail(e, "revoke", err)
				return exitFail
			}
			if had {
				fmt.Fprintf(e.stdout, "door %s: %s revoked\n", *door, who(fw, *door, addr, port))
			} else {
				fmt.Fprintf(e.stdout, "door %s: %s had no grant\n", *door, who(fw, *door, addr, port))
			}
			return exitOK
		}
	},
}

// grantArgs checks -door and the one ADDRESS argument; an IPv4-mapped IPv6
// address is its IPv4 address, as the kernel sees such a source.
func grantArgs(e *env, cmd, door string, args []string) (netip.Addr, bool) {
	bad := func(format string, a ...any) (netip.Addr, bool) {
		usageErr(e, cmd, format, a...)
		return netip.Addr{}, false
	}
	if door == "" {
		return bad("-door is required")
	}
	switch len(args) {
	case 0:
		return bad("an ADDRESS is required")
	case 1:
	default:
		return bad("one ADDRESS at a time, got %d arguments", len(args))
	}
	addr, err := netip.ParseAddr(args[0])
	if err != nil {
		if _, perr := netip.ParsePrefix(args[0]); perr == nil {
			return bad("%q: a door's set holds single addresses, not networks", args[0])
		}
		return bad("%q is not an IPv4 or IPv6 address", args[0])
	}
	if addr.Zone() != "" {
		return bad("%q: an address with a zone cannot be granted; leave out %%%s", args[0], addr.Zone())
	}
	return addr.Unmap(), true
}

// portArg reads -port: "" (none), or one tcp or udp port.
func portArg(e *env, cmd, s string) (config.Port, bool) {
	if s == "" {
		return config.Port{}, true
	}
	p, err := config.ParsePort(s)
	if err == nil && (p.Last > p.Num || !strings.Contains(s, ":")) {
		err = fmt.Errorf("%q: give one port with its protocol, e.g. 22:tcp", s)
	}
	if err != nil {
		usageErr(e, cmd, "-port %v", err)
		return config.Port{}, false
	}
	return p, true
}

func checkFor(fs *flag.FlagSet, d time.Duration) error {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "for" })
	switch {
	case !given:
		return errors.New("-for is required")
	case d < time.Millisecond:
		return fmt.Errorf("-for %v: must be at least 1ms", d)
	case d > maxGrant:
		return fmt.Errorf("-for %v: must be at most %v", d, fmtDuration(maxGrant))
	case d%time.Millisecond != 0:
		return fmt.Errorf("-for %v: the kernel counts whole milliseconds", d)
	}
	return nil
}

// checkDoorAddr refuses an address that does not fit the door: an
// open_to = "anyone" door opens to every address of a family, named by its
// unspecified address (0.0.0.0, ::); other doors let in one source, which
// the unspecified address never is. It also finds out whether the table
// has the door at all.
func checkDoorAddr(fw *nft.Firewall, door string, addr netip.Addr) error {
	if _, err := fw.Doors(); err != nil {
		return err
	}
	switch anyone := fw.AnyoneDoor(door); {
	case anyone && !addr.IsUnspecified():
		return fmt.Errorf("door %s is open_to = \"anyone\": a grant opens it to every address of a family; give 0.0.0.0 for IPv4 or :: for IPv6, not %s", door, addr)
	case !anyone && addr.IsUnspecified():
		return fmt.Errorf("%s is no source address; door %s lets in one address at a time", addr, door)
	}
	return nil
}

// who names what a grant of door to addr (of port, for a door that grants
// per port) lets in.
func who(fw *nft.Firewall, door string, addr netip.Addr, port config.Port) string {
	if port.Num != 0 {
		return addr.String() + " to " + port.String()
	}
	if !fw.AnyoneDoor(door) {
		return addr.String()
	}
	if addr.Is4() {
		return "anyone (IPv4)"
	}
	return "anyone (IPv6)"
}

// hasGrant tells whether door's set holds addr (with port) now.
func hasGrant(fw *nft.Firewall, door string, addr netip.Addr, port config.Port) (bool, error) {
	gs, err := fw.Grants()
	if err != nil {
		return false, err
	}
	for _, g := range gs {
		if g.Door == door && g.Addr == addr && g.Port == port {
			return true, nil
		}
	}
	return false, nil
}

// viaDaemon asks the daemon of fw's table to make the change r, over its
// control socket: a daemon that owns its table is the only process that
// may write it. With no daemon listening (none runs, or its table is not
// owned: own_table = false, attach, a kernel before 6.9), the tool makes
// the change itself, direct.
func viaDaemon(fw *nft.Firewall, r control.Request, direct func() error) error {
	if fw.Attached() != nil {
		return direct()
	}
	resp, err := control.Ask(fw.Table(), r)
	switch {
	case errors.Is(err, control.ErrNoDaemon):
		return direct()
	case err != nil:
		return err
	case resp.Error != "":
		return fmt.Errorf("nftknockd refused: %s", resp.Error)
	}
	return nil
}

// portText is port as -port takes it, "" for none.
func portText(p config.Port) string {
	if p.Num == 0 {
		return ""
	}
	return p.String()
}
