package main

import (
	"cmp"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nftknock/nftknock/nft"
)

var statusCmd = &command{
	name:     "status",
	synopsis: "[-json] [-table NAME | -config FILE]",
	summary:  "whether the daemon's table is installed, and every live grant",
	help: `Reads the daemon's table from the kernel: whether it is installed, its
doors, and every live grant in the doors' sets with the time it has left.
Works whether nftknockd runs or not. Exits 3 when the table is not
installed.

-json prints one object:

  {
    "table": "nftknock",        the table inet it looked at
    "installed": true,          false: the other fields are empty
    "doors": ["ssh"],           doors the table has sets for
    "grants": [                 by door, IPv4 before IPv6, by address
      {
        "door": "ssh",
        "address": "192.0.2.2",
        "family": "ipv4",       or "ipv6"
        "anyone": false,        true: an open_to = "anyone" door, open to
                                every address of the family; the address
                                is then 0.0.0.0 or ::
        "port": "22:tcp",       the one port the grant opens, for a door
                                that grants per port (an fwknop door);
                                absent for a grant of all the door's ports
        "timeout_ms": 30000,    the grant's whole timeout; 0: none
        "left_ms": 29492,       time left; 0 when it has no timeout
        "expires_at": "2025-01-02T15:04:05.123Z"   absent without timeout
      }
    ]
  }

doors and grants are [] (never null) when empty. Fields may be added,
never renamed or removed.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) int {
		asJSON := fs.Bool("json", false, "print JSON (see above) instead of a table")
		tf := addTableFlags(fs)
		return func(e *env, args []string) int {
			if len(args) > 0 {
				return usageErr(e, "status", "unexpected argument %q", args[0])
			}
			fw, code := tf.open(e, "status")
			if fw == nil {
				return code
			}
			defer fw.Close()
			return status(e, fw, *asJSON)
		}
	},
}

// statusJSON is the -json output; see statusCmd.help.
type statusJSON struct {
	Table     string      `json:"table"`
	Installed bool        `json:"installed"`
	Doors     []string    `json:"doors"`
	Grants    []grantJSON `json:"grants"`
}

type grantJSON struct {
	Door      string `json:"door"`
	Address   string `json:"address"`
	Family    string `json:"family"`
	Anyone    bool   `json:"anyone"`
	Port      string `json:"port,omitempty"`
	TimeoutMS int64  `json:"timeout_ms"`
	LeftMS    int64  `json:"left_ms"`
	ExpiresAt string `json:"expires_at,omitempty"`
}

func status(e *env, fw *nft.Firewall, asJSON bool) int {
	out := statusJSON{Table: fw.Table(), Doors: []string{}, Grants: []grantJSON{}}
	doors, err := fw.Doors()
	switch {
	case errors.Is(err, nft.ErrNotInstalled):
	case err != nil:
		fail(e, "status", err)
		return exitFail
	default:
		out.Installed = true
		out.Doors = append(out.Doors, doors...)
	}
	var grants []nft.Grant
	if out.Installed && len(doors) > 0 {
		if grants, err = fw.Grants(); err != nil {
			fail(e, "status", err)
			return exitFail
		}
	}
	// Read after the kernel reported the time left.
	now := e.now()
	for _, g := range grants {
		j := grantJSON{Door: g.Door, Address: g.Addr.String(), Family: "ipv4",
			Anyone: fw.AnyoneDoor(g.Door), TimeoutMS: g.Timeout.Milliseconds()}
		if g.Addr.Is6() {
			j.Family = "ipv6"
		}
		if g.Port.Num != 0 {
			j.Port = g.Port.String()
		}
		if g.Timeout != 0 {
			j.LeftMS = g.Expires.Milliseconds()
			j.ExpiresAt = now.Add(g.Expires).UTC().Format("2006-01-02T15:04:05.000Z07:00")
		}
		out.Grants = append(out.Grants, j)
	}

	if asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			fail(e, "status", err)
			return exitFail
		}
	} else {
		printStatus(e.stdout, out, grants)
	}
	if !out.Installed {
		return exitNotInstalled
	}
	return exitOK
}

func printStatus(w io.Writer, s statusJSON, grants []nft.Grant) {
	if !s.Installed {
		fmt.Fprintf(w, "table inet %s: not installed (nftknockd installs it when it starts)\n", s.Table)
		return
	}
	doors := strings.Join(s.Doors, ", ")
	if doors == "" {
		doors = "none"
	}
	fmt.Fprintf(w, "table inet %s: installed; doors: %s\n", s.Table, doors)
	if len(grants) == 0 {
		fmt.Fprintln(w, "no live grants")
		return
	}
	// A PORT column when some grant names its port (a door that grants
	// per port); "all" for the others.
	ports := slices.ContainsFunc(s.Grants, func(g grantJSON) bool { return g.Port != "" })
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if ports {
		fmt.Fprintln(tw, "DOOR\tADDRESS\tPORT\tLEFT\tTIMEOUT")
	} else {
		fmt.Fprintln(tw, "DOOR\tADDRESS\tLEFT\tTIMEOUT")
	}
	for i, g := range grants {
		left, timeout := "-", "none"
		if g.Timeout != 0 {
			left, timeout = fmtLeft(g.Expires), fmtDuration(g.Timeout)
		}
		addr := g.Addr.String()
		if s.Grants[i].Anyone {
			addr = "anyone (" + map[bool]string{false: "IPv4", true: "IPv6"}[g.Addr.Is6()] + ")"
		}
		if ports {
			port := cmp.Or(s.Grants[i].Port, "all")
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", g.Door, addr, port, left, timeout)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", g.Door, addr, left, timeout)
	}
	tw.Flush()
}

// fmtLeft writes a time left as precisely as it is worth reading:
// tenths of a second under a minute, seconds under an hour, minutes above.
func fmtLeft(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmtDuration(d.Truncate(100 * time.Millisecond))
	case d < time.Hour:
		return fmtDuration(d.Truncate(time.Second))
	}
	return fmtDuration(d.Truncate(time.Minute))
}

// fmtDuration is time.Duration's notation without zero units: 1h, 1h30m,
// 90m is 1h30m, 30s, 1.5s.
func fmtDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
