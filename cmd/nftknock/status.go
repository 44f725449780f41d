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

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock/authkeys"
	"github.com/nftknock/nftknock/knock/door"
	"github.com/nftknock/nftknock/nft"
)

var statusCmd = &command{
	name:     "status",
	synopsis: "[-json] [-table NAME | -config FILE]",
	summary:  "whether the daemon's table is installed, and every live grant",
	help: `Reads the daemon's table from the kernel: whether it is installed, its
doors, and every live grant in the doors' sets with the time it has left
and, when the daemon knew, whose key made it (the element's comment).
Works whether nftknockd runs or not. Exits 3 when the table is not
installed. With -config it also reads the authorized_keys files of the
public-key SPA doors, as the daemon does, and lists the keys each trusts
now and what it skips; and with attach in the configuration, it reads the
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
        "port": "22:tcp",       the one port the grant opens, for a door
                                that grants per port (an fwknop door);
                                absent for a grant of all the door's ports
        "timeout_ms": 30000,    the grant's whole timeout; 0: none
        "left_ms": 29492,       time left; 0 when it has no timeout
        "expires_at": "2025-01-02T15:04:05.123Z",  absent without timeout
        "by": "'alice@laptop' SHA256:…"   who made it; absent if unknown
      }
    ],
    "keys": [                   with -config: per public-key SPA door
      {
        "door": "team",
        "key": "'alice@laptop' SHA256:…",   comment and fingerprint
        "type": "ssh-ed25519",
        "file": "/etc/nftknock/team.authorized_keys",
        "line": 3,
        "from": "10.0.0.0/8",   absent: from anywhere
        "expires_at": "2026-01-01T00:00:00Z"   absent: never
      }
    ],
    "skipped": [                with -config: what those files hold that
      {                         is not trusted (a file, or one line)
        "door": "team",
        "file": "/home/bob/.ssh/authorized_keys",
        "line": 0,              0: the whole file
        "reason": "writable by group or others …"
      }
    ]
  }

doors, grants, keys and skipped are [] (never null) when empty. Fields
may be added, never renamed or removed.`,
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
			return status(e, fw, tf.cfg, *asJSON)
		}
	},
}

// statusJSON is the -json output; see statusCmd.help.
type statusJSON struct {
	Table     string        `json:"table"`
	Installed bool          `json:"installed"`
	Attach    *attachJSON   `json:"attach,omitempty"`
	Doors     []string      `json:"doors"`
	Grants    []grantJSON   `json:"grants"`
	Keys      []keyJSON     `json:"keys"`
	Skipped   []skippedJSON `json:"skipped"`
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
	Port      string `json:"port,omitempty"`
	TimeoutMS int64  `json:"timeout_ms"`
	LeftMS    int64  `json:"left_ms"`
	ExpiresAt string `json:"expires_at,omitempty"`
	By        string `json:"by,omitempty"`
}

type keyJSON struct {
	Door      string `json:"door"`
	Key       string `json:"key"`
	Type      string `json:"type"`
	File      string `json:"file"`
	Line      int    `json:"line"`
	From      string `json:"from,omitempty"`
	ExpiresAt string `json:"expires_at,omitempty"`
}

type skippedJSON struct {
	Door   string `json:"door"`
	File   string `json:"file"`
	Line   int    `json:"line"`
	Reason string `json:"reason"`
}

func status(e *env, fw *nft.Firewall, cfg *config.Config, asJSON bool) int {
	out := statusJSON{Table: fw.Table(), Doors: []string{}, Grants: []grantJSON{}, Keys: []keyJSON{}, Skipped: []skippedJSON{}}
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
		if g.Port.Num != 0 {
			j.Port = g.Port.String()
		}
		if g.Timeout != 0 {
			j.LeftMS = g.Expires.Milliseconds()
			j.ExpiresAt = now.Add(g.Expires).UTC().Format("2006-01-02T15:04:05.000Z07:00")
		}
		j.By = g.Comment
		out.Grants = append(out.Grants, j)
	}
	if cfg != nil {
		if err := trustedKeys(cfg, &out); err != nil {
			fail(e, "status", err)
			return exitFail
		}
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
		if cfg != nil {
			printKeys(e.stdout, out, cfg)
		}
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
			fmt.Fprintf(w, "jump MISSING: %s: %s\n", j, j.Fix())
		}
	}
	if len(grants) == 0 {
		fmt.Fprintln(w, "no live grants")
		return
	}
	// A PORT column when some grant names its port (a door that grants
	// per port); "all" for the others.
	ports := slices.ContainsFunc(s.Grants, func(g grantJSON) bool { return g.Port != "" })
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	by := slices.ContainsFunc(grants, func(g nft.Grant) bool { return g.Comment != "" })
	header := []string{"DOOR", "ADDRESS"}
	if ports {
		header = append(header, "PORT")
	}
	header = append(header, "LEFT", "TIMEOUT")
	if by {
		header = append(header, "BY")
	}
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for i, g := range grants {
		left, timeout := "-", "none"
		if g.Timeout != 0 {
			left, timeout = fmtLeft(g.Expires), fmtDuration(g.Timeout)
		}
		addr := g.Addr.String()
		if s.Grants[i].Anyone {
			addr = "anyone (" + map[bool]string{false: "IPv4", true: "IPv6"}[g.Addr.Is6()] + ")"
		}
		row := []string{g.Door, addr}
		if ports {
			row = append(row, cmp.Or(s.Grants[i].Port, "all"))
		}
		row = append(row, left, timeout)
		if by {
			row = append(row, cmp.Or(g.Comment, "-"))
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	tw.Flush()
}

// trustedKeys adds to s the keys each public-key SPA door of cfg trusts
// now, and what its authorized_keys files hold that it skips, read as the
// daemon reads them.
func trustedKeys(cfg *config.Config, s *statusJSON) error {
	for _, d := range cfg.Doors {
		k, ok := d.Kind.(*config.KeySPA)
		if !ok {
			continue
		}
		w, err := authkeys.NewWatcher(k.AuthorizedKeys, authkeys.Options{})
		if err != nil {
			return fmt.Errorf("%s: door %q: authorized_keys: %w", cfg.File, d.Name, err)
		}
		set := w.Set()
		for _, key := range set.Keys() {
			j := keyJSON{Door: d.Name, Key: door.KeyLabel(key), Type: key.PublicKey.Type(), File: key.File, Line: key.Line}
			if key.From != nil {
				j.From = key.From.String()
			}
			if !key.Expiry.IsZero() {
				j.ExpiresAt = key.Expiry.UTC().Format(time.RFC3339)
			}
			s.Keys = append(s.Keys, j)
		}
		for _, p := range set.Problems() {
			if !p.Kept {
				s.Skipped = append(s.Skipped, skippedJSON{Door: d.Name, File: p.File, Line: p.Line, Reason: p.Reason})
			}
		}
	}
	return nil
}

// printKeys writes what trustedKeys found, door by door.
func printKeys(w io.Writer, s statusJSON, cfg *config.Config) {
	for _, d := range cfg.Doors {
		if _, ok := d.Kind.(*config.KeySPA); !ok {
			continue
		}
		var keys []keyJSON
		for _, k := range s.Keys {
			if k.Door == d.Name {
				keys = append(keys, k)
			}
		}
		fmt.Fprintf(w, "door %s trusts %d keys now:\n", d.Name, len(keys))
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, k := range keys {
			limits := ""
			if k.From != "" {
				limits += fmt.Sprintf(" from=%q", k.From)
			}
			if k.ExpiresAt != "" {
				limits += " expires " + k.ExpiresAt
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s:%d%s\n", k.Key, k.Type, k.File, k.Line, limits)
		}
		tw.Flush()
		for _, p := range s.Skipped {
			if p.Door != d.Name {
				continue
			}
			where := p.File
			if p.Line > 0 {
				where = fmt.Sprintf("%s:%d", p.File, p.Line)
			}
			reason := strings.TrimSuffix(strings.TrimSuffix(p.Reason, ": skipped, none of its keys is trusted"), ": skipped")
			fmt.Fprintf(w, "  skipped %s: %s\n", where, reason)
		}
	}
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
