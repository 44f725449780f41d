package nft

import (
	"encoding/binary"
	"errors"
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
//
// Attached (OpenAttached), the same goes for the daemon's chains and sets
// in the admin's table, and for nothing else of it: the table is neither
// added nor deleted, the admin's chains and sets are not touched, and the
// daemon's chains are flushed and refilled rather than deleted (the
// admin's chain jumps to them). An admin's table that is not there is an
// error.
func (f *Firewall) Install(p *plan.Plan) (kept map[string]bool, err error) {
	kept, err = f.install(p)
	if err != nil {
		return nil, fmt.Errorf("install %s: %w", f.Where(), err)
	}
	return kept, nil
}

func (f *Firewall) install(p *plan.Plan) (map[string]bool, error) {
	if p.Table != f.name {
		return nil, fmt.Errorf("the plan is for table %q", p.Table)
	}
	if p.Attached != (f.attach != nil) {
		return nil, fmt.Errorf("the plan is laid out for %s mode", map[bool]string{true: "attach", false: "own-table"}[p.Attached])
	}
	c, err := f.c()
	if err != nil {
		return nil, err
	}
	found, flags, err := f.tableFlagsNow(c)
	var chains []*nftables.Chain
	var sets []*nftables.Set
	if err == nil && found {
		chains, sets, err = f.currentIn(c)
	}
	if err != nil {
		f.reset()
		return nil, err
	}
	if f.attach != nil && !found {
		return nil, errors.New(f.noAttachTable())
	}
	kept := map[string]bool{}
	for _, s := range sets {
		if i := slices.IndexFunc(p.Sets, func(ps plan.Set) bool { return f.setName(ps.Name) == s.Name }); i >= 0 && fits(s, &p.Sets[i]) {
			kept[p.Sets[i].Name] = true
		}
	}
	if f.attach == nil {
		switch {
		case f.own && found && flags&tableFlagPersist == 0:
			// Made by a daemon that did not own it: the kernel lets no
			// one claim a table made without the persist flag.
			return f.takeOver(p)
		case f.own && found && !f.claimed:
			// The kernel refuses (EINVAL, on 6.18) a batch that both
			// takes a table's ownership and changes what is in it:
			// claim first.
			if err := f.claim(); err != nil {
				return nil, ownedElsewhere(f, err)
			}
		}
		f.flags = f.flagsFor(found, flags)
	}
	batch, err := f.installBatch(p, chains, sets, kept)
	if err == nil {
		err = f.sendBatch(batch)
	}
	if err != nil {
		return nil, ownedElsewhere(f, err)
	}
	f.claimed = f.own
	return kept, nil
}

// BatchBytes is the size of the batch that installs p in an empty table:
// what -check holds against MaxBatch, so that a config that passes -check
// installs. It talks to no kernel.
func BatchBytes(p *plan.Plan) (int, error) {
	f := &Firewall{table: &nftables.Table{Name: p.Table, Family: nftables.TableFamilyINet}, name: p.Table}
	if p.Attached {
		// The admin's table's name is not known here; the daemon's is
		// as long as any.
		f.prefix, f.attach = p.Table+"_", &Attach{Table: p.Table, Chain: p.Table}
	}
	batch, err := f.installBatch(p, nil, nil, nil)
	if err != nil {
		return 0, err
	}
	return batchBytes(batch), nil
}

// installBatch builds the batch that turns the table holding chains and
// sets (the daemon's: all of its own table's, or those of its names in the
// admin's) into p, keeping the sets of p named in kept.
//
// In its own table it deletes every chain and adds p's anew. Attached, it
// never deletes a chain nor touches the table itself: the admin's base
// chain jumps to the daemon's chain, which the kernel then refuses to
// delete, and the admin's ruleset file declares it. So it flushes the
// daemon's chains that are there, adds those that are not, and fills
// them.
func (f *Firewall) installBatch(p *plan.Plan, chains []*nftables.Chain, sets []*nftables.Set, kept map[string]bool) ([]netlink.Message, error) {
	batch, err := f.build(func(c *nftables.Conn) error {
		if f.attach == nil {
			c.AddTable(f.table)
		}
		// Order matters within the batch: rules go first (they hold
		// references to sets and chains), then sets, then chains.
		for _, ch := range chains {
			c.FlushChain(ch)
		}
		for _, s := range sets {
			if !kept[f.planSet(s.Name)] {
				c.DelSet(s)
			}
		}
		if f.attach == nil {
			for _, ch := range chains {
				c.DelChain(ch)
			}
		}
		for i := range p.Sets {
			s := &p.Sets[i]
			if kept[s.Name] {
				continue
			}
			if err := c.AddSet(f.newSet(s), s.Elements); err != nil {
				return fmt.Errorf("add set %s: %w", s.Name, err)
			}
		}
		for _, pc := range p.Chains {
			name := f.chainName(pc.Name)
			if f.attach != nil && slices.ContainsFunc(chains, func(ch *nftables.Chain) bool { return ch.Name == name }) {
				continue // flushed above
			}
			c.AddChain(f.newChain(&pc))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var rules []netlink.Message
	for _, pc := range p.Chains {
		for _, r := range pc.Rules {
			m, err := f.ruleMessage(f.chainName(pc.Name), r, userdata.AppendString(nil, userdata.TypeComment, r.Comment))
			if err != nil {
				return nil, err
			}
			rules = append(rules, m)
		}
	}
	return f.withTableFlags(withBefore(batch, rules...))
}

// newChain is the kernel chain of pc: a base chain of the daemon's table,
// or attached, a regular chain.
func (f *Firewall) newChain(pc *plan.Chain) *nftables.Chain {
	if f.attach != nil {
		return &nftables.Chain{Name: f.chainName(pc.Name), Table: f.table}
	}
	accept := nftables.ChainPolicyAccept
	hook := nftables.ChainHookInput
	if pc.Hook == plan.HookForward {
		hook = nftables.ChainHookForward
	}
	return &nftables.Chain{
		Name:     pc.Name,
		Table:    f.table,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  hook,
		Priority: nftables.ChainPriorityRef(nftables.ChainPriority(pc.Priority)),
		Policy:   &accept,
	}
}

// tableExists tells whether the kernel table exists.
func (f *Firewall) tableExists(c *nftables.Conn) (bool, error) {
	found, _, err := f.tableFlagsNow(c)
	return found, err
}

// tableFlagsNow tells whether the table exists, and its flags.
func (f *Firewall) tableFlagsNow(c *nftables.Conn) (found bool, flags uint32, err error) {
	tables, err := c.ListTablesOfFamily(f.table.Family)
	if err != nil {
		return false, 0, fmt.Errorf("list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == f.table.Name {
			// google/nftables v0.3.0 reads the big-endian attribute in
			// the host's order.
			var b [4]byte
			binary.NativeEndian.PutUint32(b[:], t.Flags)
			return true, binary.BigEndian.Uint32(b[:]), nil
		}
	}
	return false, 0, nil
}

// current lists the daemon's chains and named sets in the table now; none
// if the table does not exist.
func (f *Firewall) current(c *nftables.Conn) ([]*nftables.Chain, []*nftables.Set, error) {
	ok, err := f.tableExists(c)
	if err != nil || !ok {
		return nil, nil, err
	}
	return f.currentIn(c)
}

// currentIn is current for a table known to exist.
func (f *Firewall) currentIn(c *nftables.Conn) ([]*nftables.Chain, []*nftables.Set, error) {
	all, err := c.ListChainsOfTableFamily(f.table.Family)
	if err != nil {
		return nil, nil, fmt.Errorf("list chains: %w", err)
	}
	var chains []*nftables.Chain
	for _, ch := range all {
		if ch.Table != nil && ch.Table.Name == f.table.Name && f.ours(ch.Name) {
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
		if !s.Anonymous && f.planSet(s.Name) != "" {
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
func (f *Firewall) newSet(s *plan.Set) *nftables.Set {
	return &nftables.Set{
		Table:      f.table,
		ID:         s.ID,
		Name:       f.setName(s.Name),
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
	want := (&Firewall{}).newSet(s)
	return (s.Role == plan.RoleGrant || s.Role == plan.RoleDynamic) &&
		k.KeyType.GetNFTMagic() == want.KeyType.GetNFTMagic() &&
		k.KeyType.Bytes == want.KeyType.Bytes &&
		k.HasTimeout && k.Dynamic == want.Dynamic && k.Timeout == want.Timeout && k.Size == want.Size &&
		!k.IsMap && !k.Interval && !k.Constant && !k.Concatenation
}

// Intact tells whether the table holds p still: the table, every set of p
// in p's shape, and every chain of p with exactly p's rules, expression by
// expression (counters aside) and comment by comment, and no other chain
// of the daemon's. It does not look at elements. It is false, with no
// error, when the table is gone.
func (f *Firewall) Intact(p *plan.Plan) (bool, error) {
	c, err := f.c()
	if err != nil {
		return false, err
	}
	chains, sets, err := f.current(c)
	if err != nil {
		f.reset()
		return false, fmt.Errorf("check %s: %w", f.Where(), err)
	}
	if chains == nil && sets == nil {
		return false, nil
	}
	for i := range p.Sets {
		s := &p.Sets[i]
		j := slices.IndexFunc(sets, func(k *nftables.Set) bool { return k.Name == f.setName(s.Name) })
		if j < 0 || (s.Role != plan.RolePorts && s.Role != plan.RoleAllow && !fits(sets[j], s)) {
			return false, nil
		}
	}
	if len(chains) != len(p.Chains) {
		return false, nil
	}
	for _, pc := range p.Chains {
		name := f.chainName(pc.Name)
		if !slices.ContainsFunc(chains, func(ch *nftables.Chain) bool { return ch.Name == name }) {
			return false, nil
		}
		rules, err := getRules(f.nl, f.table, name)
		if err != nil {
			f.reset()
			return false, fmt.Errorf("check %s: list rules of chain %s: %w", f.Where(), name, err)
		}
		same, err := f.sameRules(rules, pc.Rules)
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
func (f *Firewall) sameRules(got []*nftables.Rule, want []plan.Rule) (bool, error) {
	if len(got) != len(want) {
		return false, nil
	}
	for i, r := range want {
		if c, _ := userdata.GetString(got[i].UserData, userdata.TypeComment); c != r.Comment {
			return false, nil
		}
		exprs := make([]expr.Any, len(r.Exprs))
		for j, e := range r.Exprs {
			exprs[j] = f.kernelExpr(e)
		}
		w, err := roundTrip(exprs)
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
