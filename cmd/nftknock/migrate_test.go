package main

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nftknock/nftknock/config"
)

var update = flag.Bool("update", false, "rewrite testdata/migrate/*.toml from the current output")

// TestMigrateGolden converts every testdata/migrate/*.conf and compares the
// output with the .toml beside it; every output must pass config.Parse.
func TestMigrateGolden(t *testing.T) {
	confs, err := filepath.Glob("testdata/migrate/*.conf")
	if err != nil || len(confs) == 0 {
		t.Fatalf("no testdata: %v", err)
	}
	for _, conf := range confs {
		name := strings.TrimSuffix(filepath.Base(conf), ".conf")
		t.Run(name, func(t *testing.T) {
			code, out, stderr, _ := run(t, "migrate", conf)
			wantCode := exitOK
			if name == "unsupported" {
				wantCode = exitFail
			}
			if code != wantCode {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, wantCode, stderr)
			}
			golden := strings.TrimSuffix(conf, ".conf") + ".toml"
			if *update {
				if err := os.WriteFile(golden, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if out != string(want) {
				t.Errorf("output differs from %s (go test -update rewrites it):\n%s", golden, out)
			}
			data := []byte(out)
			// A one_time_sequences path is kept as it is; point it at a
			// real file for Parse, which reads it.
			if strings.Contains(out, "one_time_sequences = ") {
				ot := filepath.Join(t.TempDir(), "ssh_sequences")
				if err := os.WriteFile(ot, []byte("7000,8000:udp,9000\n7001,8001,9001\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				data = []byte(strings.ReplaceAll(out, `"/etc/knockd/ssh_sequences"`, `"`+ot+`"`))
			}
			if _, err := config.Parse(golden, data); err != nil {
				t.Errorf("output does not pass config.Parse: %v\n%s", err, data)
			}
		})
	}
}

func TestMigrateReportsOnStderr(t *testing.T) {
	for _, tc := range []struct {
		conf string
		want []string
	}{
		{"debian", []string{"UseSyslog: not carried over"}},
		{"guide_startstop", []string{"LogFile = /var/log/knockd.log: not carried over", "PidFile = /var/run/knockd.pid: not carried over"}},
		{"unsupported", []string{
			`[mail]: cannot read what the command opens: "/usr/local/bin/open-mail-for %IP%" is not an iptables`,
			"[vpn]: ignored words in the command: -i eth0",
		}},
	} {
		_, out, stderr, _ := run(t, "migrate", "testdata/migrate/"+tc.conf+".conf")
		for _, w := range tc.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("%s: stderr lacks %q:\n%s", tc.conf, w, stderr)
			}
		}
		if tc.conf == "guide_startstop" && !strings.Contains(out, `interface = "eth0"`) {
			t.Errorf("Interface not carried over:\n%s", out)
		}
	}
}

func TestMigrateCommands(t *testing.T) {
	for _, tc := range []struct {
		cmd       string
		ports     string
		perSource bool
		del       bool
		err       string
	}{
		{"/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT", "[22:tcp]", true, false, ""},
		{"/sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT", "[22:tcp]", true, true, ""},
		{"iptables -I INPUT 1 -p udp --dport 1194 -j ACCEPT", "[1194:udp]", false, false, ""},
		{"iptables -A INPUT -s %IP% -p tcp -m multiport --dports 80,443 -j ACCEPT", "[80:tcp 443:tcp]", true, false, ""},
		{"iptables -A INPUT -s %IP% -p udp --dport 60000:61000 -j ACCEPT", "[60000-61000:udp]", true, false, ""},
		{"nft add rule inet filter input ip saddr %IP% tcp dport 22 accept", "[22:tcp]", true, false, ""},
		{"/usr/sbin/nft 'add rule inet filter input ip saddr %IP% tcp dport 22 accept'", "[22:tcp]", true, false, ""},
		{"ufw allow from %IP% to any port 22", "[22:tcp]", true, false, ""},
		{"ufw allow 8080/udp", "[8080:udp]", false, false, ""},
		{"/usr/local/sbin/knock_add -i -c INPUT -p tcp -d 443 -f %IP%", "[443:tcp]", true, false, ""},
		{"/usr/local/bin/open-door %IP%", "", false, false, "is not an iptables, nft, ufw or knock_add command"},
		{"iptables -A INPUT -s 10.0.0.1 -p tcp --dport 22 -j ACCEPT", "", false, false, "is not the knocking address"},
		{"iptables -A INPUT -s %IP% -p tcp --dport 22 -j DROP", "", false, false, "jumps to DROP, not ACCEPT"},
		{"iptables -A INPUT -s %IP% -j ACCEPT", "", false, false, "names no destination port"},
		{"iptables -t nat -A PREROUTING -p tcp --dport 22 -j ACCEPT", "", false, false, `table "nat"`},
		{"iptables -L", "", false, false, "neither adds nor deletes"},
		{"iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT; logger opened", "", false, false, `"logger opened" is not`},
	} {
		rules, _, err := parseCommands(tc.cmd)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want one containing %q", tc.cmd, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.cmd, err)
			continue
		}
		var ports []string
		for _, r := range rules {
			ports = append(ports, r.ports...)
			if r.perSource != tc.perSource || r.del != tc.del {
				t.Errorf("%q: %+v, want perSource=%v del=%v", tc.cmd, r, tc.perSource, tc.del)
			}
		}
		if got := "[" + strings.Join(ports, " ") + "]"; got != tc.ports {
			t.Errorf("%q: ports %s, want %s", tc.cmd, got, tc.ports)
		}
	}
}

// TestMigrateUnparsableCommand: a door whose command cannot be read is
// left out, named in a comment and on stderr, and the exit status is 1;
// the other doors are still printed and still valid.
func TestMigrateUnparsableCommand(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "knockd.conf")
	os.WriteFile(conf, []byte(`
[openSSH]
	sequence = 7000,8000,9000
	command  = /usr/local/bin/let-in %IP% && echo done
[web]
	sequence = 7100,7200
	command  = iptables -A INPUT -s %IP% -p tcp --dport 443 -j ACCEPT
`), 0o600)
	code, out, stderr, _ := run(t, "migrate", conf)
	if code != exitFail {
		t.Errorf("exit %d, want 1", code)
	}
	if !strings.Contains(stderr, "[openSSH]: cannot read what the command opens") {
		t.Errorf("stderr does not name the door:\n%s", stderr)
	}
	if !strings.Contains(out, "# NOT CONVERTED") || !strings.Contains(out, "#   /usr/local/bin/let-in %IP% && echo done") {
		t.Errorf("output does not name the command:\n%s", out)
	}
	cfg, err := config.Parse("out.toml", []byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Doors) != 1 || cfg.Doors[0].Name != "web" {
		t.Errorf("doors %+v, want web alone", cfg.Doors)
	}

	// Nothing convertible at all.
	os.WriteFile(conf, []byte("[x]\n sequence = 1,2\n command = /bin/true\n"), 0o600)
	if code, _, stderr, _ := run(t, "migrate", conf); code != exitFail || !strings.Contains(stderr, "no door could be converted") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
	if code, _, _, _ := run(t, "migrate"); code != exitUsage {
		t.Errorf("no argument: exit %d, want 2", code)
	}
	if code, _, _, _ := run(t, "migrate", filepath.Join(t.TempDir(), "missing")); code != exitFail {
		t.Errorf("missing file: exit %d, want 1", code)
	}
}
