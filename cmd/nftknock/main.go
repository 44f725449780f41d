// Command nftknock is what a person types to look at and steer the gate
// that nftknockd keeps in `table inet nftknock`:
//
//	nftknock status [-json] [-table NAME | -config FILE]
//	nftknock grant -door DOOR -for DURATION [-table NAME | -config FILE] ADDRESS
//	nftknock revoke -door DOOR [-table NAME | -config FILE] ADDRESS
//	nftknock migrate KNOCKD_CONF
//	nftknock migrate -fwknop ACCESS_CONF [-fwknopd-conf FWKNOPD_CONF] -keys-dir DIR
//	nftknock knock [-u] [-d MS] [-4|-6] [-v] HOST PORT[:tcp|udp|icmp]...
//	nftknock keygen [-server FILE]
//	nftknock spa -door NAME -key-file FILE [-allow ADDRESS | -nat] [-p PORT] HOST
//	nftknock spa -door NAME -server-key-file FILE | -known-hosts [-identity agent|KEYFILE] [-allow ADDRESS | -nat] [-p PORT] HOST
//	nftknock open [-config FILE] [-wait PORT] HOST
//	nftknock proxy [-config FILE] HOST PORT
//	nftknock help [COMMAND]
//	nftknock -version
//
// status, grant and revoke talk to the kernel's sets directly, over
// netlink: they work the same whether nftknockd runs or not, and need what
// nftables needs (root, or CAP_NET_ADMIN); knock, keygen, spa, open and
// proxy are the client side, and touch no firewall state. A running daemon hears of grants and
// revocations made here through nf_tables' notifications: it restores them
// too if the table is ever flushed, and a knock never shortens them.
//
// Exit status: 0 done; 1 failed (an error, a door the table does not
// have, a table that is not installed for grant and revoke); 2 usage
// error; 3 `status` found the table not installed.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/nft"
)

// version is stamped by the Makefile: -ldflags "-X main.version=…".
var version = "dev"

// Exit statuses.
const (
	exitOK           = 0
	exitFail         = 1
	exitUsage        = 2
	exitNotInstalled = 3
)

// env is what a command runs against; tests replace open and now, and
// may give stdin and getenv (nil: the process's own).
type env struct {
	stdout, stderr io.Writer
	stdin          io.Reader
	// open opens the daemon's table, or attached (attach not nil), its
	// chain and sets in the admin's table.
	open   func(table string, attach *nft.Attach) (*nft.Firewall, error)
	now    func() time.Time
	getenv func(string) string
}

// env returns the environment variable key.
func (e *env) env(key string) string {
	if e.getenv != nil {
		return e.getenv(key)
	}
	return os.Getenv(key)
}

// input is the command's standard input.
func (e *env) input() io.Reader {
	if e.stdin != nil {
		return e.stdin
	}
	return os.Stdin
}

// command is one `nftknock <name>`. New subcommands (migrate, knock, ...)
// are one more entry in commands.
type command struct {
	name     string
	synopsis string // after "nftknock <name> "
	summary  string
	// help is printed under the usage line by `nftknock help <name>`.
	help string
	// flags declares the command's flags on fs; the returned function
	// runs the command with the positional arguments.
	flags func(fs *flag.FlagSet) func(e *env, args []string) int
}

var commands []*command

// Set in init: the commands' own code looks the table up for usage lines.
func init() {
	commands = []*command{statusCmd, grantCmd, revokeCmd, migrateCmd, knockCmd, keygenCmd, spaCmd, openCmd, proxyCmd}
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

func main() {
	e := &env{stdout: os.Stdout, stderr: os.Stderr, now: time.Now,
		open: func(table string, a *nft.Attach) (*nft.Firewall, error) {
			if a != nil {
				return nft.OpenAttached(*a, table)
			}
			return nft.Open(table)
		}}
	os.Exit(realMain(e, os.Args[1:]))
}

func realMain(e *env, args []string) int {
	fs := flag.NewFlagSet("nftknock", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(e.stdout)
			return exitOK
		}
		fmt.Fprintf(e.stderr, "nftknock: %v\n\n", err)
		usage(e.stderr)
		return exitUsage
	}
	if *showVersion {
		if fs.NArg() > 0 {
			fmt.Fprintf(e.stderr, "nftknock: -version takes no command\n")
			return exitUsage
		}
		fmt.Fprintf(e.stdout, "nftknock %s\n", version)
		return exitOK
	}
	args = fs.Args()
	if len(args) == 0 {
		usage(e.stderr)
		return exitUsage
	}
	name, args := args[0], args[1:]
	if name == "help" {
		return help(e, args)
	}
	c := lookup(name)
	if c == nil {
		fmt.Fprintf(e.stderr, "nftknock: unknown command %q\n\n", name)
		usage(e.stderr)
		return exitUsage
	}
	return c.run(e, args)
}

// run parses the command's flags, which may come before or after its
// positional arguments, and runs it.
func (c *command) run(e *env, args []string) int {
	fs := flag.NewFlagSet("nftknock "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	do := c.flags(fs)
	pos, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		c.usage(e.stdout, fs)
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "nftknock %s: %v\n", c.name, err)
		c.usage(e.stderr, fs)
		return exitUsage
	}
	return do(e, pos)
}

// parseInterspersed parses flags anywhere among the arguments ("grant
// 192.0.2.7 -door ssh -for 1h" as well as "grant -door ssh -for 1h
// 192.0.2.7"); "--" ends the flags.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		// Parse stops at the first argument that is not a flag, or
		// right after "--".
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	return pos, nil
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: nftknock <command> [flags] [arguments]\n       nftknock -version\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "  %-8s %s\n", "help", "show a command's flags: nftknock help <command>")
	fmt.Fprintf(w, "\nExit status: 0 done, 1 failed, 2 usage error, 3 status: table not installed.\n")
}

func (c *command) usage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: nftknock %s %s\n\n%s\n", c.name, c.synopsis, c.help)
	fs.SetOutput(w)
	fmt.Fprintln(w, "\nFlags:")
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

func help(e *env, args []string) int {
	switch len(args) {
	case 0:
		usage(e.stdout)
		return exitOK
	case 1:
		c := lookup(args[0])
		if c == nil {
			fmt.Fprintf(e.stderr, "nftknock help: unknown command %q\n\n", args[0])
			usage(e.stderr)
			return exitUsage
		}
		fs := flag.NewFlagSet("nftknock "+c.name, flag.ContinueOnError)
		c.flags(fs)
		c.usage(e.stdout, fs)
		return exitOK
	}
	fmt.Fprintf(e.stderr, "nftknock help: one command at a time\n")
	return exitUsage
}

// tableFlags are -table and -config, which every command takes: the table
// is named directly, or read from the daemon's configuration.
type tableFlags struct {
	fs     *flag.FlagSet
	table  string
	config string
	// cfg is the configuration -config named, once name has read it.
	cfg *config.Config
}

func addTableFlags(fs *flag.FlagSet) *tableFlags {
	t := &tableFlags{fs: fs}
	fs.StringVar(&t.table, "table", config.DefaultTable, "`name` of the daemon's table (table inet NAME)")
	fs.StringVar(&t.config, "config", "", "read the table name (and attach) from the daemon's configuration `file` instead")
	return t
}

// name is the table to work on, and the admin's chain it is attached to
// (only a configuration says that).
func (t *tableFlags) name() (string, *nft.Attach, error) {
	tableSet := false
	t.fs.Visit(func(f *flag.Flag) { tableSet = tableSet || f.Name == "table" })
	if t.config == "" {
		if t.table == "" {
			return "", nil, usageError("-table: empty name")
		}
		return t.table, nil, nil
	}
	if tableSet {
		return "", nil, usageError("give -table or -config, not both")
	}
	cfg, err := config.Load(t.config)
	if err != nil {
		return "", nil, err
	}
	t.cfg = cfg
	if a := cfg.Attach; a != nil {
		return cfg.Table, &nft.Attach{Table: a.Table, Chain: a.Chain}, nil
	}
	return cfg.Table, nil, nil
}

// open opens the table named by the flags, or reports why not: a usage
// problem (exit 2) or a failure (exit 1).
func (t *tableFlags) open(e *env, cmd string) (*nft.Firewall, int) {
	name, attach, err := t.name()
	var uerr usageError
	switch {
	case errors.As(err, &uerr):
		return nil, usageErr(e, cmd, "%v", err)
	case err != nil:
		fail(e, cmd, err) // the config could not be read
		return nil, exitFail
	}
	fw, err := e.open(name, attach)
	if err != nil {
		fail(e, cmd, err)
		return nil, exitFail
	}
	return fw, exitOK
}

// usageError is a problem with the command line.
type usageError string

func (u usageError) Error() string { return string(u) }

// usageErr prints a problem with the command line and the command's usage
// line, and returns the exit status for it.
func usageErr(e *env, cmd, format string, a ...any) int {
	fmt.Fprintf(e.stderr, "nftknock %s: %s\n", cmd, fmt.Sprintf(format, a...))
	fmt.Fprintf(e.stderr, "Usage: nftknock %s %s\n", cmd, lookup(cmd).synopsis)
	return exitUsage
}

// fail prints err, with a hint when it is a missing privilege.
func fail(e *env, cmd string, err error) {
	fmt.Fprintf(e.stderr, "nftknock %s: %v\n", cmd, err)
	if errors.Is(err, os.ErrPermission) {
		fmt.Fprintf(e.stderr, "nftknock %s: nftables needs root (or CAP_NET_ADMIN)\n", cmd)
	}
}
