package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
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
installed. With attach in the configuration (give -config), it reads the
daemon's chain and sets in the admin's table, and says whether the admin's
chain jumps to the daemon's: without the jump nothing is gated.

-json prints one object:

  {
    "table": "nftknock",        the table inet it looked at (attached: the
                                admin's, e.g. "filter")
    "installed": true,          false: the other fields are empty
    "attach": {                 only with attach in the configuration
      "chain": "input",         the admin's chain that must jump
      "jumps": [                one per chain of the daemon's there
        {"chain": "nftknock", "from": "input", "present": true,
         "position": 1}         the jump's rule number in "from"; 0 if absent
      ]
    },
    "doors": ["ssh"],           doors the table has sets for
    "grants": [                 by door, IPv4 before IPv6, by address
      {
        "door": "ssh",
        "address": "192.0.2.2",
        "family": "ipv4",       or "ipv6"
        "anyone": false,        true: an open_to = "anyone" door, open to
                                every address of the family; the address
                                is then 0.0.0.0 or ::
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
	Attach    *attachJSON `json:"attach,omitempty"`
	Doors     []string    `json:"doors"`
	Grants    []grantJSON `json:"grants"`
}

type attachJSON struct {
	Chain string     `json:"chain"`
	Jumps []jumpJSON `json:"jumps"`
}

type jumpJSON struct {
	Chain    string `json:"chain"`
	From     string `json:"from"`
	Present  bool   `json:"present"`
	Position int    `json:"position"`
}

type grantJSON struct {
	Door      string `json:"door"`
	Address   string `json:"address"`
	Family    string `json:"family"`
	Anyone    bool   `json:"anyone"`
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
	var jumps []nft.Jump
	if a := fw.Attached(); a != nil {
		out.Attach = &attachJSON{Chain: a.Chain, Jumps: []jumpJSON{}}
		if out.Installed {
			if jumps, err = fw.Jumps(); err != nil {
				fail(e, "status", err)
				return exitFail
			}
		}
		for _, j := range jumps {
			out.Attach.Jumps = append(out.Attach.Jumps, jumpJSON{Chain: j.Chain, From: j.From, Present: j.Present, Position: j.Position})
		}
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
		printStatus(e.stdout, fw.Where(), out, grants, jumps)
	}
	if !out.Installed {
		return exitNotInstalled
	}
	return exitOK
}

func printStatus(w io.Writer, where string, s statusJSON, grants []nft.Grant, jumps []nft.Jump) {
	if !s.Installed {
		hint := "nftknockd installs it when it starts"
		if s.Attach == nil {
			hint += "; if its configuration has attach, give -config"
		}
		fmt.Fprintf(w, "%s: not installed (%s)\n", where, hint)
		return
	}
	doors := strings.Join(s.Doors, ", ")
	if doors == "" {
		doors = "none"
	}
	fmt.Fprintf(w, "%s: installed; doors: %s\n", where, doors)
	for _, j := range jumps {
		if j.Present {
			fmt.Fprintf(w, "jump: %s\n", j)
		} else {
			fmt.Fprintf(w, "jump MISSING: %s: its rules never run, nothing is gated; add `jump %s` first in your chain %s (and `chain %s {}` to your ruleset file)\n",
				j, j.Chain, j.From, j.Chain)
		}
	}
	if len(grants) == 0 {
		fmt.Fprintln(w, "no live grants")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DOOR\tADDRESS\tLEFT\tTIMEOUT")
	for i, g := range grants {
		left, timeout := "-", "none"
		if g.Timeout != 0 {
			left, timeout = fmtLeft(g.Expires), fmtDuration(g.Timeout)
		}
		addr := g.Addr.String()
		if s.Grants[i].Anyone {
			addr = "anyone (" + map[bool]string{false: "IPv4", true: "IPv6"}[g.Addr.Is6()] + ")"
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
