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

// Fix says what a missing jump means and what to do, for the log, -check
// and nftknock status alike.
func (j Jump) Fix() string {
	return fmt.Sprintf("the daemon's rules in chain %s never run, so nothing is gated and no knock is heard; add `jump %s` as the first rule of chain %s (and `chain %s {}` to your ruleset file)", j.Chain, j.Chain, j.From, j.Chain)
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
	chains, err := f.tableChains(c)
	if err != nil {
		return nil, err
	}
	return f.jumps(chains)
}

// tableChains lists the chains of the admin's table.
func (f *Firewall) tableChains(c *nftables.Conn) ([]*nftables.Chain, error) {
	all, err := c.ListChainsOfTableFamily(f.table.Family)
	if err != nil {
		f.reset()
		return nil, fmt.Errorf("list chains: %w", err)
	}
	var chains []*nftables.Chain
	for _, ch := range all {
		if ch.Table != nil && ch.Table.Name == f.table.Name {
			chains = append(chains, ch)
		}
	}
	return chains, nil
}

func hasChain(chains []*nftables.Chain, name string) bool {
	return slices.ContainsFunc(chains, func(ch *nftables.Chain) bool { return ch.Name == name })
}

// jumps is Jumps over tableChains, the chains of the admin's table.
func (f *Firewall) jumps(tableChains []*nftables.Chain) ([]Jump, error) {
	has := func(name string) bool { return hasChain(tableChains, name) }
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
		return []string{f.noAttachTable() + ", so the daemon would not start"}, nil
	}
	chains, err := f.tableChains(c)
	if err != nil {
		return nil, err
	}
	if !hasChain(chains, f.attach.Chain) {
		return []string{fmt.Sprintf("attach: table inet %s has no chain %s to jump from: name the base chain the gate belongs in", f.table.Name, f.attach.Chain)}, nil
	}
	if !hasChain(chains, f.name) {
		// A ruleset that jumps must declare the chain: without it, there is no jump either.
		return []string{"attach: " + Jump{Chain: f.name, From: f.attach.Chain}.String() + " (nor the `chain " + f.name + " {}` it needs): " + Jump{Chain: f.name, From: f.attach.Chain}.Fix()}, nil
	}
	jumps, err := f.jumps(chains)
	if err != nil {
		return nil, err
	}
	var problems []string
	for _, j := range jumps {
		if !j.Present {
			problems = append(problems, "attach: "+j.String()+": "+j.Fix())
		}
	}
	return problems, nil
}

// noAttachTable is the error of an attached start without the admin's
// table.
func (f *Firewall) noAttachTable() string {
	return fmt.Sprintf("attach: table inet %s does not exist: load your ruleset first (nftknockd.service starts after nftables.service), with `chain %s {}` and `jump %s` first in chain %s", f.table.Name, f.name, f.name, f.attach.Chain)
}
