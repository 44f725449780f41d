package neighbours

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// AdminRuleset is an admin's own /etc/nftables.conf as Debian ships it and
// most guides extend it: `flush ruleset`, then `table inet filter` whose
// input chain has `policy drop` and lets in what the admin chose — here
// established connections, loopback, ICMP (IPv6 needs it for neighbour
// discovery) and a web server on 80. Not port 22.
const AdminRuleset = `#!/usr/sbin/nft -f

flush ruleset

table inet filter {
	chain input {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		ct state invalid drop
		iif "lo" accept
		meta l4proto { icmp, ipv6-icmp } accept
		tcp dport 80 accept
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
	}
	chain output {
		type filter hook output priority filter; policy accept;
	}
}
`

// AttachedAdminRuleset is AdminRuleset written for nftknock's attach mode
// (attach = "inet filter input"): `jump nftknock` first in the input chain,
// and the empty `chain nftknock {}` that nft needs declared before it
// loads a file that jumps to it. Port 22 is still not allowed: only a
// knock lets a source in.
const AttachedAdminRuleset = `#!/usr/sbin/nft -f

flush ruleset

table inet filter {
	chain nftknock {
	}
	chain input {
		type filter hook input priority filter; policy drop;
		jump nftknock
		ct state established,related accept
		ct state invalid drop
		iif "lo" accept
		meta l4proto { icmp, ipv6-icmp } accept
		tcp dport 80 accept
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
	}
	chain output {
		type filter hook output priority filter; policy accept;
	}
}
`

// LoadRuleset loads ruleset with `nft -f -` in network namespace netns, as
// `systemctl start nftables` loads /etc/nftables.conf. A ruleset that
// begins with `flush ruleset` (AdminRuleset does) deletes every table in
// the namespace first but those a running process owns (an owning
// nftknockd's).
func LoadRuleset(netns, ruleset string) error {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", netns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft -f in %s: %w: %s", netns, err, out)
	}
	return nil
}
