package nft

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
)

// adminRuleset is an admin's /etc/nftables.conf for attach mode: policy
// drop, `jump nftknock` first, and the empty chains the jumps need, or nft
// refuses the file; a set of the admin's own.
const adminRuleset = `flush ruleset
table inet filter {
	set blocked { type ipv4_addr; elements = { 198.51.100.66 } }
	chain nftknock {}
	chain nftknock_forward {}
	chain input {
		type filter hook input priority filter; policy drop;
		jump nftknock
		ct state established,related accept
		ip saddr @blocked drop
		iif "lo" accept
		tcp dport 80 accept
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		jump nftknock_forward
	}
}
`

func openAttached(t *testing.T, ns *netns) *Firewall {
	t.Helper()
	f, err := OpenAttached(Attach{Table: "filter", Chain: "input"}, "nftknock", nftables.WithNetNSFd(ns.FD))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// adminPart is the admin's own part of the table's listing: every line
// but those of the daemon's sets and chains, and elements.
func adminPart(listing string) string {
	var out []string
	skip := false
	for _, l := range strings.Split(listing, "\n") {
		trim := strings.TrimSpace(l)
		if strings.HasPrefix(trim, "set nftknock_") || strings.HasPrefix(trim, "chain nftknock") {
			skip = true
		}
		if !skip && trim != "" {
			out = append(out, l)
		}
		if skip && trim == "}" {
			skip = false
		}
	}
	return strings.Join(out, "\n")
}

// TestKernelAttached: attached, the daemon's chains and sets go in the
// admin's table under its names; the admin's chains, rules and sets stay
// as they were; the tool finds the doors; the jumps are found; `nft -f`
// of the admin's file (flush ruleset) leaves a plan that is not intact
// and installs again, and `nft flush table` keeps the grant sets.
func TestKernelAttached(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	ns.nftInput(t, adminRuleset)
	before := adminPart(ns.nft(t, "list", "table", "inet", "filter"))
	f := openAttached(t, ns)
	p := attachedPlan("nftknock")
	install(t, f, p)
	listing := ns.nft(t, "list", "table", "inet", "filter")
	if got := adminPart(listing); got != before {
		t.Errorf("the admin's part of the table changed:\n%s\nwant\n%s", got, before)
	}
	for _, want := range []string{"set nftknock_ssh_v4 {", "set nftknock_knock_rate_v4 {", "chain nftknock {", "chain nftknock_forward {",
		"ip saddr @nftknock_ssh_v4", `iifname "lo" return`, "ct status dnat ct original proto-dst 8443"} {
		if !strings.Contains(listing, want) {
			t.Errorf("the listing lacks %q:\n%s", want, listing)
		}
	}
	if strings.Contains(listing, "hook input priority filter - 10") {
		t.Errorf("attached, the daemon's chains are regular chains:\n%s", listing)
	}
	if ok, err := f.Intact(p); !ok || err != nil {
		t.Fatalf("Intact = %v, %v", ok, err)
	}
	jumps, err := f.Jumps()
	if err != nil {
		t.Fatal(err)
	}
	if len(jumps) != 2 || !jumps[0].Present || jumps[0].From != "input" || jumps[0].Position != 1 ||
		!jumps[1].Present || jumps[1].From != "forward" {
		t.Errorf("Jumps() = %+v", jumps)
	}
	doors, err := f.Doors()
	if err != nil || strings.Join(doors, ",") != "ssh,panel,lan,pub" {
		t.Errorf("Doors() = %v, %v", doors, err)
	}
	grant(t, f, "ssh", "192.0.2.7", time.Hour)
	if g := mustGrantOf(t, f, "ssh", "192.0.2.7"); g.Timeout != time.Hour {
		t.Errorf("grant %+v", g)
	}

	// nft flush table: rules go, sets and elements stay.
	ns.nft(t, "flush", "table", "inet", "filter")
	if ok, err := f.Intact(p); ok || err != nil {
		t.Fatalf("after flush table: Intact = %v, %v", ok, err)
	}
	if kept := install(t, f, p); !kept["ssh_v4"] {
		t.Errorf("after flush table, the grant set was not kept: %v", kept)
	}
	mustGrantOf(t, f, "ssh", "192.0.2.7")

	// nft -f of the admin's file: everything of the daemon's is gone but
	// the empty chains the file declares.
	ns.nftInput(t, adminRuleset)
	if ok, err := f.Intact(p); ok || err != nil {
		t.Fatalf("after nft -f: Intact = %v, %v", ok, err)
	}
	if kept := install(t, f, p); len(kept) != 0 {
		t.Errorf("after nft -f, kept %v", kept)
	}
	if got := trimLines(ns.nft(t, "list", "table", "inet", "filter")); got != trimLines(listing) {
		t.Errorf("after nft -f and a new install:\n%s\nwant\n%s", got, listing)
	}

	// A missing jump is reported.
	ns.nft(t, "flush", "chain", "inet", "filter", "forward")
	if jumps, err := f.Jumps(); err != nil || len(jumps) != 2 || jumps[1].Present || !jumps[0].Present {
		t.Errorf("forward jump removed: Jumps() = %+v, %v", jumps, err)
	}

	// Remove takes the sets and the chain nothing jumps to, and says why
	// it left the other.
	err = f.Remove()
	if !errors.Is(err, ErrStillJumpedTo) || !strings.Contains(err.Error(), "chain nftknock of table inet filter") {
		t.Errorf("Remove: %v", err)
	}
	after := ns.nft(t, "list", "table", "inet", "filter")
	if strings.Contains(after, "set nftknock_") || strings.Contains(after, "chain nftknock_forward") || !strings.Contains(after, "set blocked") {
		t.Errorf("after Remove:\n%s", after)
	}
}

// TestKernelAttachedNeedsTable: attached to a table that does not exist,
// Install fails and names the fix, creating nothing.
func TestKernelAttachedNeedsTable(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := openAttached(t, ns)
	_, err := f.Install(attachedPlan("nftknock"))
	if err == nil || !strings.Contains(err.Error(), "table inet filter does not exist") {
		t.Errorf("Install: %v", err)
	}
	if out := ns.nft(t, "list", "ruleset"); strings.TrimSpace(out) != "" {
		t.Errorf("the ruleset is not empty:\n%s", out)
	}
	if _, err := f.Install(forwardPlan("nftknock")); err == nil || !strings.Contains(err.Error(), "own-table mode") {
		t.Errorf("Install of an own-table plan: %v", err)
	}
}

// TestKernelAttachProblems: what -check says of an admin's ruleset before
// an attached daemon installs anything, for each way it can be wrong, and
// nothing once it jumps.
func TestKernelAttachProblems(t *testing.T) {
	t.Parallel()
	const base = "\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n%s\t}\n"
	for _, c := range []struct {
		name, ruleset, want string
	}{
		{"no table", "", "table inet filter does not exist"},
		{"no such chain", "table inet filter {\n\tchain inbound {\n\t\ttype filter hook input priority filter; policy drop;\n\t}\n}\n", "has no chain input"},
		{"no chain, no jump", "table inet filter {\n" + fmt.Sprintf(base, "") + "}\n", "no `jump nftknock` in chain input (nor the `chain nftknock {}`"},
		{"chain, no jump", "table inet filter {\n\tchain nftknock {\n\t}\n" + fmt.Sprintf(base, "\t\ttcp dport 80 accept\n") + "}\n", "no `jump nftknock` in chain input: the daemon's rules"},
		{"jumps", "table inet filter {\n\tchain nftknock {\n\t}\n" + fmt.Sprintf(base, "\t\tjump nftknock\n") + "}\n", ""},
	} {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			ns := newNetns(t)
			if c.ruleset != "" {
				ns.nftInput(t, c.ruleset)
			}
			got, err := openAttached(t, ns).AttachProblems()
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case c.want == "" && len(got) != 0:
				t.Errorf("problems %q, want none", got)
			case c.want != "" && (len(got) != 1 || !strings.Contains(got[0], c.want)):
				t.Errorf("problems %q, want one with %q", got, c.want)
			}
		})
	}
}
