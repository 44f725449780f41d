package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nftknock/nftknock/nft"
)

// run runs nftknock with args against an opener that records the table it
// was asked for and fails, so nothing touches the kernel.
func run(t *testing.T, args ...string) (code int, stdout, stderr string, opened []string) {
	t.Helper()
	var out, errOut strings.Builder
	e := &env{stdout: &out, stderr: &errOut, now: time.Now,
		open: func(table string, _ *nft.Attach) (*nft.Firewall, error) {
			opened = append(opened, table)
			return nil, errors.New("no kernel in unit tests")
		}}
	code = realMain(e, args)
	return code, out.String(), errOut.String(), opened
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		name       string
		args       []string
		code       int
		stdout     string // substring; "" means empty
		stderr     string
		emptyOther bool
	}{
		{"nothing", nil, 2, "", "Usage: nftknock <command>", true},
		{"unknown command", []string{"frob"}, 2, "", `unknown command "frob"`, true},
		{"unknown global flag", []string{"-frob"}, 2, "", "flag provided but not defined: -frob", true},
		{"help", []string{"help"}, 0, "status   whether the daemon's table is installed", "", true},
		{"-h", []string{"-h"}, 0, "Commands:", "", true},
		{"help grant", []string{"help", "grant"}, 0, "Usage: nftknock grant -door DOOR -for DURATION", "", true},
		{"help status lists the JSON", []string{"help", "status"}, 0, `"left_ms"`, "", true},
		{"help unknown", []string{"help", "frob"}, 2, "", `unknown command "frob"`, true},
		{"help two", []string{"help", "grant", "revoke"}, 2, "", "one command at a time", true},
		{"grant -h", []string{"grant", "-h"}, 0, "-for duration", "", true},
		{"version", []string{"-version"}, 0, "nftknock dev\n", "", true},
		{"version with a command", []string{"-version", "status"}, 2, "", "-version takes no command", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr, opened := run(t, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stderr: %s", code, tc.code, stderr)
			}
			if tc.stdout != "" && !strings.Contains(stdout, tc.stdout) {
				t.Errorf("stdout lacks %q:\n%s", tc.stdout, stdout)
			}
			if tc.stderr != "" && !strings.Contains(stderr, tc.stderr) {
				t.Errorf("stderr lacks %q:\n%s", tc.stderr, stderr)
			}
			if tc.emptyOther && tc.stdout == "" && stdout != "" {
				t.Errorf("stdout not empty: %s", stdout)
			}
			if tc.emptyOther && tc.stderr == "" && stderr != "" {
				t.Errorf("stderr not empty: %s", stderr)
			}
			if len(opened) != 0 {
				t.Errorf("opened the firewall (%v) for a usage matter", opened)
			}
		})
	}
}

// TestArguments: what each command refuses before touching the kernel
// (exit 2, nothing opened), and what it accepts (the opener is called with
// the right table; it fails, so exit 1).
func TestArguments(t *testing.T) {
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "nftknock.toml")
	if err := os.WriteFile(cfgFile, []byte(`table = "custom"
[[door]]
name = "ssh"
sequence = ["7000", "8000"]
seq_timeout = "5s"
open = ["22"]
open_for = "30s"
`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args   []string
		code   int
		stderr string
		table  string // the table opened, for code 1
	}{
		// Accepted.
		{[]string{"status"}, 1, "no kernel in unit tests", "nftknock"},
		{[]string{"status", "-json", "-table", "other"}, 1, "", "other"},
		{[]string{"status", "-config", cfgFile}, 1, "", "custom"},
		{[]string{"grant", "-door", "ssh", "-for", "1h", "192.0.2.7"}, 1, "", "nftknock"},
		{[]string{"grant", "192.0.2.7", "-door", "ssh", "-for", "90s"}, 1, "", "nftknock"},
		{[]string{"grant", "-door", "ssh", "-for", "1h", "2001:db8::7"}, 1, "", "nftknock"},
		{[]string{"grant", "-door", "ssh", "-for", "1h", "::ffff:192.0.2.7"}, 1, "", "nftknock"},
		{[]string{"grant", "-door", "ssh", "-for", "720h", "-table", "t2", "192.0.2.7"}, 1, "", "t2"},
		{[]string{"revoke", "-door", "ssh", "192.0.2.7"}, 1, "", "nftknock"},
		{[]string{"revoke", "-door", "ssh", "--", "192.0.2.7"}, 1, "", "nftknock"},
		{[]string{"revoke", "-config", cfgFile, "-door", "ssh", "192.0.2.7"}, 1, "", "custom"},
		// Refused.
		{[]string{"status", "extra"}, 2, `unexpected argument "extra"`, ""},
		{[]string{"status", "-frob"}, 2, "flag provided but not defined: -frob", ""},
		{[]string{"status", "-table", "x", "-config", cfgFile}, 2, "give -table or -config, not both", ""},
		{[]string{"status", "-table", ""}, 2, "-table: empty name", ""},
		{[]string{"status", "-config", filepath.Join(dir, "missing.toml")}, 1, "missing.toml", ""},
		{[]string{"grant", "-for", "1h", "192.0.2.7"}, 2, "-door is required", ""},
		{[]string{"grant", "-door", "ssh", "192.0.2.7"}, 2, "-for is required", ""},
		{[]string{"grant", "-door", "ssh", "-for", "1h"}, 2, "an ADDRESS is required", ""},
		{[]string{"grant", "-door", "ssh", "-for", "1h", "192.0.2.7", "192.0.2.8"}, 2, "one ADDRESS at a time", ""},
		{[]string{"grant", "-door", "ssh", "-for", "1h", "192.0.2.300"}, 2, `"192.0.2.300" is not an IPv4 or IPv6 address`, ""},
		{[]string{"grant", "-door", "ssh", "-for", "1h", "192.0.2.0/24"}, 2, "not networks", ""},
		{[]string{"grant", "-door", "ssh", "-for", "1h", "fe80::1%eth0"}, 2, "leave out %eth0", ""},
		{[]string{"grant", "-door", "ssh", "-for", "0s", "192.0.2.7"}, 2, "at least 1ms", ""},
		{[]string{"grant", "-door", "ssh", "-for", "-1h", "192.0.2.7"}, 2, "at least 1ms", ""},
		{[]string{"grant", "-door", "ssh", "-for", "721h", "192.0.2.7"}, 2, "at most 720h", ""},
		{[]string{"grant", "-door", "ssh", "-for", "1500us", "192.0.2.7"}, 2, "whole milliseconds", ""},
		{[]string{"grant", "-door", "ssh", "-for", "soon", "192.0.2.7"}, 2, `invalid value "soon" for flag -for`, ""},
		{[]string{"revoke", "192.0.2.7"}, 2, "-door is required", ""},
		{[]string{"revoke", "-door", "ssh", "-for", "1h", "192.0.2.7"}, 2, "flag provided but not defined: -for", ""},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, stdout, stderr, opened := run(t, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stderr: %s", code, tc.code, stderr)
			}
			if !strings.Contains(stderr, tc.stderr) {
				t.Errorf("stderr lacks %q:\n%s", tc.stderr, stderr)
			}
			if stdout != "" {
				t.Errorf("stdout: %s", stdout)
			}
			switch {
			case tc.table == "" && len(opened) != 0:
				t.Errorf("opened %v although the arguments are refused", opened)
			case tc.table != "" && (len(opened) != 1 || opened[0] != tc.table):
				t.Errorf("opened %v, want [%s]", opened, tc.table)
			}
			if tc.code == 2 && !strings.Contains(stderr, "Usage: nftknock") {
				t.Errorf("a usage error without the usage line:\n%s", stderr)
			}
		})
	}
}

func TestFmtDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Hour:                    "1h",
		90 * time.Minute:             "1h30m",
		time.Hour + time.Second:      "1h0m1s",
		30 * time.Second:             "30s",
		time.Minute:                  "1m",
		1500 * time.Millisecond:      "1.5s",
		720 * time.Hour:              "720h",
		5 * time.Millisecond:         "5ms",
		10*time.Minute + time.Second: "10m1s",
	} {
		if got := fmtDuration(d); got != want {
			t.Errorf("fmtDuration(%v) = %q, want %q", d, got, want)
		}
	}
	for d, want := range map[time.Duration]string{
		29492 * time.Millisecond:                               "29.4s",
		59*time.Minute + 59*time.Second + 900*time.Millisecond: "59m59s",
		2*time.Hour + 59*time.Minute + 59*time.Second:          "2h59m",
		3 * time.Hour:         "3h",
		40 * time.Millisecond: "0s",
	} {
		if got := fmtLeft(d); got != want {
			t.Errorf("fmtLeft(%v) = %q, want %q", d, got, want)
		}
	}
}
