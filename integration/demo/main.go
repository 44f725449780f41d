// Command demo shows nftknock end to end without touching the host's
// firewall: it makes a throwaway server and client out of network
// namespaces, runs nftknockd in the server with the built-in default
// config, knocks with the stock knock client, shows `nft list ruleset`
// before and after, waits for the kernel to expire the grant, and cleans
// up. Run it as root: `sudo make demo`.
package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/integration/lab"
)

func main() {
	bin := flag.String("daemon", "bin/nftknockd", "nftknockd `binary` to run")
	flag.Parse()
	if err := demo(*bin); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func demo(bin string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root for network namespaces: run `sudo make demo`")
	}
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	cfg, err := config.Parse("default", config.DefaultTOML())
	if err != nil {
		return err
	}
	door := cfg.Doors[0]
	dir, err := os.MkdirTemp("", "nftknock-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "nftknock.toml")
	if err := os.WriteFile(path, config.DefaultTOML(), 0o600); err != nil {
		return err
	}

	step("Making a throwaway server (%s, %s) and client (%s, %s) out of network namespaces",
		lab.ServerV4, lab.ServerV6, lab.ClientV4, lab.ClientV6)
	l, err := lab.New()
	if err != nil {
		return err
	}
	defer func() {
		step("Cleaning up: deleting namespaces %s and %s", l.Server, l.Client)
		l.Close()
	}()
	stopEcho, err := l.Echo(22)
	if err != nil {
		return err
	}
	defer stopEcho()

	step("Starting nftknockd in the server with the built-in config (nftknockd -print-config)")
	fmt.Printf("%s\n", indent(string(config.DefaultTOML())))
	d, err := l.StartDaemon(bin, path)
	if err != nil {
		return err
	}
	defer func() {
		step("Stopping nftknockd (SIGTERM); its log:")
		if err := d.Stop(); err != nil {
			fmt.Println("  stop:", err)
		}
		fmt.Println(indent(d.Log()))
	}()

	ssh := netip.AddrPortFrom(lab.ServerV4, 22)
	to := l.Server
	if err := showRuleset("The server's ruleset before any knock", to); err != nil {
		return err
	}
	step("Connecting from the client to %s before knocking", ssh)
	if err := l.Filtered(lab.ClientV4, ssh, 500*time.Millisecond); err != nil {
		return err
	}
	fmt.Println("  no answer within 500ms: port 22 is filtered")

	knock := []string{"7000", "8000:udp", "9000"}
	step("Knocking with the stock client: knock %s %s", lab.ServerV4, strings.Join(knock, " "))
	sent := time.Now()
	if err := l.Knock(false, 0, knock...); err != nil {
		return err
	}
	opened, err := l.WaitOpen(lab.ClientV4, ssh, time.Second)
	if err != nil {
		return err
	}
	fmt.Printf("  connected to %s %s after the knock client returned\n", ssh, opened.Sub(sent).Round(time.Microsecond))
	if err := l.Filtered(lab.Client2V4, ssh, 500*time.Millisecond); err != nil {
		return err
	}
	fmt.Printf("  from the client's other address %s: still filtered (the grant is per source)\n", lab.Client2V4)

	if err := showRuleset("The server's ruleset after the knock: the source is in ssh_v4 with its time left, the counters moved", to); err != nil {
		return err
	}

	step("Waiting for the kernel to expire the grant (open_for = %s); nftknockd sets no timer of its own", door.OpenFor)
	deadline := time.Now().Add(door.OpenFor + time.Second)
	for time.Now().Before(deadline) {
		els, err := l.Elements(cfg.Table, "ssh_v4")
		if err != nil {
			return err
		}
		if len(els) == 0 {
			break
		}
		fmt.Printf("  %s expires in %s\n", els[0].Addr, els[0].Expires)
		time.Sleep(5 * time.Second)
	}
	out, err := lab.Run(l.Server, "nft", "list", "set", "inet", cfg.Table, "ssh_v4")
	if err != nil {
		return err
	}
	fmt.Println(indent(out))
	if err := l.Filtered(lab.ClientV4, ssh, 500*time.Millisecond); err != nil {
		return err
	}
	fmt.Println("  the set is empty and port 22 is filtered again")
	return nil
}

func showRuleset(title, ns string) error {
	step("%s: nft list ruleset", title)
	out, err := lab.Run(ns, "nft", "list", "ruleset")
	if err != nil {
		return err
	}
	fmt.Println(indent(out))
	return nil
}

func step(format string, args ...any) {
	fmt.Printf("\n==> "+format+"\n", args...)
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}
