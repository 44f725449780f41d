package nft

import (
	"fmt"
	"reflect"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"

	"github.com/nftknock/nftknock/nft/plan"
)

// Install makes the table hold exactly p, in one atomic batch: the kernel
// applies all of it or, if any part fails, none of it, and the previous
// ruleset stays as it was.
//
// On a fresh start it adds the table, the sets and the chains with their
// rules. If the table already exists (a restart, a reload with a changed
// config, a heal), the same batch also deletes every chain of the table and
// every set that is not in p, or is in p in another shape (someone edited
// it by hand), and adds the chains anew. The grant and dynamic sets that p
// has in the shape they have are left as they are, with their elements and
// exactly the time those have left: a restart neither revokes nor extends
// a grant. Kept reports which sets stayed; a grant set that did not is
// empty, and the caller puts back what it knows of its grants. The table
// is the daemon's alone; no other table is touched.
func (f *Firewall) Install(p *plan.Plan) (kept map[string]bool, err error) {
	kept, err = f.install(p)
	if err != nil {
		return nil, fmt.Errorf("install table %q: %w", f.table.Name, err)
	}
	return kept, nil
}

func (f *Firewall) install(p *plan.Plan) (map[string]bool, error) {
	if p.Table != f.table.Name {
		return nil, fmt.Errorf("the plan is for table %q", p.Table)
	}
	c, err := f.c()
	if err != nil {
		return nil, err
	}
	chains, sets, err := f.current(c)
	if err != nil {
		f.reset()
		return nil, err
	}
	kept := map[string]bool{}
	for _, s := range sets {
		if i := slices.IndexFunc(p.Sets, func(ps plan.Set) bool { return ps.Name == s.Name }); i >= 0 && fits(s, &p.Sets[i]) {
			kept[s.Name] = true
		}
	}
	batch, err := f.installBatch(p, chains, sets, kept)
	if err == nil {
		err = f.sendBatch(batch)
	}
	if err != nil {
		return nil, err
	}
	return kept, nil
}

// BatchBytes is the size of the batch that installs p in an empty table:
// what -check holds against MaxBatch, so that a config that passes -check
// installs. It talks to no kernel.
func BatchBytes(p *plan.Plan) (int, error) {
	f := &Firewall{table: &nftables.Table{Name: p.Table, Family: nftables.TableFamilyINet}}
	batch, err := f.installBatch(p, nil, nil, nil)
	if err != nil {
		return 0, err
	}
	return batchBytes(batch), nil
}

// installBatch builds the batch that turns the table holding chains and
// sets into p, keeping the sets in kept.
func (f *Firewall) installBatch(p *plan.Plan, chains []*nftables.Chain, sets []*nftables.Set, kept map[string]bool) ([]netlink.Message, error) {
	return f.build(func(c *nftables.Conn) error {
		c.AddTable(f.table)
		// Order matters within the batch: rules go first (they hold
		// references to sets and chains), then sets, then chains.
		for _, ch := range chains {
			c.FlushChain(ch)
		}
		for _, s := range sets {
			if !kept[s.Name] {
				c.DelSet(s)
			}
		}
		for _, ch := range chains {
			c.DelChain(ch)
		}
		for i := range p.Sets {
			s := &p.Sets[i]
			if kept[s.Name] {
				continue
			}
			if err := c.AddSet(newSet(f.table, s), s.Elements); err != nil {
				return fmt.Errorf("add set %s: %w", s.Name, err)
			}
		}
		for _, pc := range p.Chains {
			ch := c.AddChain(baseChain(f.table, &pc))
			for _, r := range pc.Rules {
				c.AddRule(&nftables.Rule{
					Table:    f.table,
					Chain:    ch,
					Exprs:    r.Exprs,
					UserData: userdata.AppendString(nil, userdata.TypeComment, r.Comment),
				})
			}
		}
		return nil
	})
}

func baseChain(t *nftables.Table, pc *plan.Chain) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	hook := nftables.ChainHookInput
	if pc.Hook == plan.HookForward {
		hook = nftables.ChainHookForward
	}
	return &nftables.Chain{
		Name:     pc.Name,
		Table:    t,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  hook,
		Priority: nftables.ChainPriorityRef(nftables.ChainPriority(pc.Priority)),
		Policy:   &accept,
	}
}

// current lists the chains and named sets the table holds now; none if the
// table does not exist.
func (f *Firewall) current(c *nftables.Conn) ([]*nftables.Chain, []*nftables.Set, error) {
	tables, err := c.ListTablesOfFamily(f.table.Family)
	if err != nil {
		return nil, nil, fmt.Errorf("list tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == f.table.Name }) {
		return nil, nil, nil
	}
	all, err := c.ListChainsOfTableFamily(f.table.Family)
	if err != nil {
		return nil, nil, fmt.Errorf("list chains: %w", err)
	}
	var chains []*nftables.Chain
	for _, ch := range all {
		if ch.Table != nil && ch.Table.Name == f.table.Name {
			chains = append(chains, &nftables.Chain{Table: f.table, Name: ch.Name})
		}
	}
	found, err := c.GetSets(f.table)
	if err != nil {
		return nil, nil, fmt.Errorf("list sets: %w", err)
	}
	var sets []*nftables.Set
	for _, s := range found {
		// Anonymous sets belong to rules and go away with them.
		if !s.Anonymous {
			sets = append(sets, s)
		}
	}
	return chains, sets, nil
}

// newSet is the kernel set of s. A grant set is "type ipv4_addr; size N;
// flags timeout;" (or ipv6_addr, nf_proto for an open_to = "anyone" door,
// "ipv4_addr . inet_proto . inet_service" for a door that grants per
// port: a hash set, without the concatenation flag, as nft makes it),
// with no default timeout, as each grant carries its own.
func newSet(t *nftables.Table, s *plan.Set) *nftables.Set {
	return &nftables.Set{
		Table:      t,
		ID:         s.ID,
		Name:       s.Name,
		HasTimeout: s.HasTimeout(),
		Timeout:    s.Timeout,
		Interval:   s.Interval,
		Dynamic:    s.Dynamic,
		Size:       s.Size,
		KeyType:    s.Key,
		// Addresses are big endian; nft records this in the set's
		// userdata, and so do we, to read back the same.
		KeyByteOrder: binaryutil.BigEndian,
		Comment:      s.Comment,
	}
}

// fits tells whether an existing set can stay as the set s. A set of the
// right name but the wrong shape (someone edited the table by hand, or the
// config changed its size) is replaced rather than left to break the rules
// or grants. Sets whose elements come from the plan never stay.
func fits(k *nftables.Set, s *plan.Set) bool {
	want := newSet(nil, s)
	return (s.Role == plan.RoleGrant || s.Role == plan.RoleDynamic) &&
		k.KeyType.GetNFTMagic() == want.KeyType.GetNFTMagic() &&
		k.KeyType.Bytes == want.KeyType.Bytes &&
		k.HasTimeout && k.Dynamic == want.Dynamic && k.Timeout == want.Timeout && k.Size == want.Size &&
		!k.IsMap && !k.Interval && !k.Constant && !k.Concatenation
}

// Intact tells whether the table holds p still: the table, every set of p
// in p's shape, and every chain of p with exactly p's rules, expression by
// expression (counters aside) and comment by comment. It does not look at
// elements. It is false, with no error, when the table is gone.
func (f *Firewall) Intact(p *plan.Plan) (bool, error) {
	c, err := f.c()
	if err != nil {
		return false, err
	}
	chains, sets, err := f.current(c)
	if err != nil {
		f.reset()
		return false, fmt.Errorf("check table %q: %w", f.table.Name, err)
	}
	if chains == nil && sets == nil {
		return false, nil
	}
	for i := range p.Sets {
		s := &p.Sets[i]
		j := slices.IndexFunc(sets, func(k *nftables.Set) bool { return k.Name == s.Name })
		if j < 0 || (s.Role != plan.RolePorts && s.Role != plan.RoleAllow && !fits(sets[j], s)) {
			return false, nil
		}
	}
	if len(chains) != len(p.Chains) {
		return false, nil
	}
	for _, pc := range p.Chains {
		if !slices.ContainsFunc(chains, func(ch *nftables.Chain) bool { return ch.Name == pc.Name }) {
			return false, nil
		}
		rules, err := c.GetRules(f.table, &nftables.Chain{Name: pc.Name, Table: f.table})
		if err != nil {
			f.reset()
			return false, fmt.Errorf("check table %q: list rules of chain %s: %w", f.table.Name, pc.Name, err)
		}
		same, err := sameRules(rules, pc.Rules)
		if err != nil || !same {
			return false, err
		}
	}
	return true, nil
}

// sameRules compares the kernel's rules with the plan's. Both are compared
// as the library reads them: the plan's expressions go through the same
// marshal and unmarshal as the kernel's, so that defaults the kernel fills
// in compare equal; counters and set IDs are not compared (the kernel
// counts, and names sets by name).
func sameRules(got []*nftables.Rule, want []plan.Rule) (bool, error) {
	if len(got) != len(want) {
		return false, nil
	}
	for i, r := range want {
		if c, _ := userdata.GetString(got[i].UserData, userdata.TypeComment); c != r.Comment {
			return false, nil
		}
		w, err := roundTrip(r.Exprs)
		if err != nil {
			return false, err
		}
		if !reflect.DeepEqual(normalize(got[i].Exprs), normalize(w)) {
			return false, nil
		}
	}
	return true, nil
}

// roundTrip is exprs as the library reads them back from their netlink
// form.
func roundTrip(exprs []expr.Any) ([]expr.Any, error) {
	out := make([]expr.Any, len(exprs))
	fam := byte(nftables.TableFamilyINet)
	for i, e := range exprs {
		data, err := expr.MarshalExprData(fam, e)
		if err != nil {
			return nil, fmt.Errorf("marshal planned %T: %w", e, err)
		}
		back := reflect.New(reflect.TypeOf(e).Elem()).Interface().(expr.Any)
		if err := expr.Unmarshal(fam, data, back); err != nil {
			return nil, fmt.Errorf("read back planned %T: %w", e, err)
		}
		out[i] = back
	}
	return out, nil
}

// normalize clears what the kernel sets and the plan does not: counter
// values, set IDs.
func normalize(exprs []expr.Any) []expr.Any {
	out := make([]expr.Any, len(exprs))
	for i, e := range exprs {
		switch x := e.(type) {
		case *expr.Counter:
			out[i] = &expr.Counter{}
		case *expr.Lookup:
			c := *x
			c.SetID = 0
			out[i] = &c
		case *expr.Dynset:
			c := *x
			c.SetID = 0
			c.Exprs = normalize(c.Exprs)
			out[i] = &c
		default:
			out[i] = e
		}
	}
	return out
}
