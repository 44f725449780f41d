// Command nftknockd is the nftknock port-knocking daemon. It runs in the
// foreground, logs to stderr, reloads on SIGHUP and exits on SIGTERM or
// SIGINT, leaving its table in place: opened ports stay closed to everyone
// else and live grants run out in the kernel on their own.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock/daemon"
	"github.com/nftknock/nftknock/knock/engine"
	"github.com/nftknock/nftknock/nft"
)

const defaultConfig = "/etc/nftknock/nftknock.toml"

// version is stamped by the Makefile: -ldflags "-X main.version=…".
var version = "dev"

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nftknockd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		path        = fs.String("config", defaultConfig, "configuration `file`")
		check       = fs.Bool("check", false, "validate the configuration, print every error, and exit (1 if invalid); touches no firewall state")
		printConfig = fs.Bool("print-config", false, "print the built-in reference configuration and exit")
		remove      = fs.Bool("remove", false, "delete the daemon's nftables table (named in -config) and exit")
		showVersion = fs.Bool("version", false, "print the version and exit")
	)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: nftknockd [-config FILE] [-check | -print-config | -remove | -version]\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "nftknockd: unexpected argument %q\n", fs.Arg(0))
		return 2
	}

	switch {
	case *showVersion:
		fmt.Fprintf(stdout, "nftknockd %s\n", version)
		return 0
	case *printConfig:
		stdout.Write(config.ReferenceTOML())
		return 0
	case *check:
		cfg, err := config.Load(*path)
		if err == nil {
			err = engine.Check(cfg)
		}
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		// Reading the ruleset is all -check does with it.
		for _, w := range append(engine.Warnings(cfg, findDNAT), attachWarnings(cfg)...) {
			fmt.Fprintf(stderr, "warning: %s\n", w)
		}
		fmt.Fprintf(stdout, "%s: OK\n", *path)
		return 0
	case *remove:
		if err := removeTable(*path); err != nil {
			fmt.Fprintf(stderr, "nftknockd: %v\n", err)
			return 1
		}
		return 0
	}

	log := newLogger(os.Stderr)
	defer log.Sync()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reload := make(chan struct{}, 1)
	go func() {
		for range hup {
			select {
			case reload <- struct{}{}:
			default: // a reload is already pending
			}
		}
	}()

	notify, err := notifierFromEnv(log)
	if err != nil {
		log.Error("nftknockd failed", zap.Error(err))
		return 1
	}
	every, ping := notify.watchdogEvery()
	err = daemon.Run(ctx, daemon.Options{
		Log:    log,
		Load:   func() (*config.Config, error) { return load(log, *path) },
		Reload: reload,
		// Only once the table is installed and the NFLOG group bound.
		Ready:         notify.ready,
		Reloading:     notify.reloading,
		Stopping:      notify.stopping,
		Watchdog:      ping,
		WatchdogEvery: every,
	})
	if err != nil {
		log.Error("nftknockd failed", zap.Error(err))
		return 1
	}
	return 0
}

// load reads the config at path and warns about what it would do that
// a user would not want (see engine.Warnings): at start and at every
// reload, as -check does.
func load(log *zap.Logger, path string) (*config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	for _, w := range engine.Warnings(cfg, findDNAT) {
		log.Warn(w, zap.String("config", path))
	}
	return cfg, nil
}

// attachWarnings says, for -check, what in the admin's ruleset would leave
// an attached daemon's rules unrun (the daemon says it too, at start and
// in nftknock status; -check says it before anything is installed).
func attachWarnings(cfg *config.Config) []string {
	if cfg.Attach == nil {
		return nil
	}
	fw, err := daemon.OpenFirewall(cfg)
	var problems []string
	if err == nil {
		defer fw.Close()
		problems, err = fw.AttachProblems()
	}
	if err != nil {
		hint := ""
		if errors.Is(err, os.ErrPermission) {
			hint = " (reading the ruleset needs CAP_NET_ADMIN: run as root to look)"
		}
		return []string{fmt.Sprintf("%s: attach: could not look at your ruleset for the jump to the daemon's chain: %v%s", cfg.File, err, hint)}
	}
	for i, p := range problems {
		problems[i] = cfg.File + ": " + p
	}
	return problems
}

// findDNAT looks in the namespace the daemon runs in.
func findDNAT(ports []config.Port) ([]nft.DNAT, error) { return nft.FindDNAT(ports) }

func removeTable(path string) error {
	cfg, err := config.Load(path)
	if err != nil {
		return fmt.Errorf("%w (-remove reads the table name from the config)", err)
	}
	fw, err := daemon.OpenFirewall(cfg)
	if err != nil {
		return err
	}
	defer fw.Close()
	return fw.Remove()
}
