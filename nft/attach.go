package nft

import (
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/nftknock/nftknock/nft/plan"
)

// Jump is one jump an attached daemon needs in the admin's ruleset: to its
// chain Chain from the admin's chain From (for the forward chain: from any
// base chain of the table on the forward hook, From naming them).
type Jump struct {
	Chain, From string
	// Present: a rule of From jumps (or goes) to Chain. Position is that
	// rule's place in From, from 1; Rules the number of rules there.
	Present         bool
	Position, Rules int
}

func (j Jump) String() string {
	if !j.Present {
		return fmt.Sprintf("no `jump %s` in chain %s", j.Chain, j.From)
	}
	return fmt.Sprintf("`jump %s` is rule %d of %d in chain %s", j.Chain, j.Position, j.Rules, j.From)
}

// Jumps reports, for each of the daemon's chains in the admin's table,
// whether the admin's ruleset jumps to it: the input chain from the chain
// attach names, the forward chain from a base chain on the forward hook.
// Without them the daemon's rules are never run. It reads the ruleset and
// changes nothing; it returns nothing for a Firewall that is not
// attached, or when the daemon's chains are not there.
func (f *Firewall) Jumps() ([]Jump, error) {
	if f.attach == nil {
		return nil, nil
	}
	c, err := f.c()
	if err != nil {
		return nil, err
	}
	all, err := c.ListChainsOfTableFamily(f.table.Family)
	if err != nil {
		f.reset()
		return nil, fmt.Errorf("list chains: %w", err)
	}
	var tableChains []*nftables.Chain
	for _, ch := range all {
		if ch.Table != nil && ch.Table.Name == f.table.Name {
			tableChains = append(tableChains, ch)
		}
	}
	has := func(name string) bool {
		return slices.ContainsFunc(tableChains, func(ch *nftables.Chain) bool { return ch.Name == name })
	}
	var jumps []Jump
	for _, want := range []struct {
		chain string
		from  func(ch *nftables.Chain) bool
		what  string
	}{
		{f.chainName(plan.ChainName), func(ch *nftables.Chain) bool { return ch.Name == f.attach.Chain }, f.attach.Chain},
		{f.chainName(plan.ForwardChainName), func(ch *nftables.Chain) bool {
			return ch.Hooknum != nil && *ch.Hooknum == *nftables.ChainHookForward
		}, "(a base chain on the forward hook)"},
	} {
		if !has(want.chain) {
			continue
		}
		j := Jump{Chain: want.chain, From: want.what}
		for _, ch := range tableChains {
			if !want.from(ch) {
				continue
			}
			rules, err := getRules(f.nl, f.table, ch.Name)
			if err != nil {
				f.reset()
				return nil, fmt.Errorf("list rules of chain %s: %w", ch.Name, err)
			}
			for i, r := range rules {
				if jumpsTo(r.Exprs, want.chain) {
					j = Jump{Chain: want.chain, From: ch.Name, Present: true, Position: i + 1, Rules: len(rules)}
					break
				}
			}
			if j.Present {
				break
			}
		}
		jumps = append(jumps, j)
	}
	return jumps, nil
}

func jumpsTo(exprs []expr.Any, chain string) bool {
	for _, e := range exprs {
		if v, ok := e.(*expr.Verdict); ok && (v.Kind == expr.VerdictJump || v.Kind == expr.VerdictGoto) && v.Chain == chain {
			return true
		}
	}
	return false
}

// AttachProblems says, before the daemon has installed anything (for
// -check), what would leave an attached daemon's rules unrun or its start
// refused: the admin's table missing, their chain missing, or no `jump` to
// the daemon's chain in it (a ruleset that jumps must also declare `chain
// <name> {}`, so a chain of that name that nothing jumps to is a jump
// forgotten). Nil when attached is not the mode.
func (f *Firewall) AttachProblems() ([]string, error) {
	if f.attach == nil {
		return nil, nil
	}
	c, err := f.c()
	if err != nil {
		return nil, err
	}
	found, _, err := f.tableFlagsNow(c)
	if err != nil {
		f.reset()
		return nil, err
	}
	if !found {
		return []string{fmt.Sprintf("attach: table inet %s does not exist, so the daemon would not start: load your ruleset first, with `chain %s {}` and `jump %s` first in chain %s", f.table.Name, f.name, f.name, f.attach.Chain)}, nil
	}
	chains, err := c.ListChainsOfTableFamily(f.table.Family)
	if err != nil {
		f.reset()
		return nil, fmt.Errorf("list chains: %w", err)
	}
	has := func(name string) bool {
		return slices.ContainsFunc(chains, func(ch *nftables.Chain) bool {
			return ch.Table != nil && ch.Table.Name == f.table.Name && ch.Name == name
		})
	}
	if !has(f.attach.Chain) {
		return []string{fmt.Sprintf("attach: table inet %s has no chain %s to jump from: name the base chain the gate belongs in", f.table.Name, f.attach.Chain)}, nil
	}
	if !has(f.name) {
		return []string{fmt.Sprintf("attach: your ruleset has no `jump %s` in chain %s (nor the `chain %s {}` it needs): the daemon's rules would never run, so nothing is gated and no knock is heard; add both", f.name, f.attach.Chain, f.name)}, nil
	}
	jumps, err := f.Jumps()
	if err != nil {
		return nil, err
	}
	var problems []string
	for _, j := range jumps {
		if !j.Present {
			problems = append(problems, fmt.Sprintf("attach: %s: the daemon's rules in chain %s would never run, so nothing is gated and no knock is heard; add `jump %s` as the first rule there", j, j.Chain, j.Chain))
		}
	}
	return problems, nil
}
