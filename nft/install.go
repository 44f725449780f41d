package nft

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/userdata"

	"github.com/nftknock/nftknock/config"
)

// Install makes the table hold exactly the ruleset of cfg, in one atomic
// batch: the kernel applies all of it or, if any part fails, none of it, and
// the previous ruleset stays as it was.
//
// On a fresh start it adds the table, two sets per door and the input chain
// with its rules. If the table already exists (a daemon restart, or a reload
// with a changed config), the same batch also deletes every chain of the
// table and every set that is not the set of a configured door, and
// re-adds the chain; the sets of doors that are still configured are left
// untouched, so their elements keep exactly the time they had left: a
// restart neither revokes nor extends a grant. The table is the daemon's
// alone; no other table is touched. (Named objects or flowtables someone
// added to the table by hand are left alone: nothing here uses them.)
func (f *Firewall) Install(cfg *config.Config) error {
	if err := f.install(cfg); err != nil {
		return fmt.Errorf("install table %q: %w", f.table.Name, err)
	}
	return nil
}

func (f *Firewall) install(cfg *config.Config) error {
	if cfg.Table != "" && cfg.Table != f.table.Name {
		return fmt.Errorf("config names table %q", cfg.Table)
	}
	c, err := f.c()
	if err != nil {
		return err
	}
	chains, sets, err := f.current(c)
	if err != nil {
		f.reset()
		return err
	}

	wantSets := planSets(cfg)
	for i, spec := range wantSets {
		if spec.role == roleRotation {
			k := f.rotation[spec.door]
			ports := k.first
			if spec.name == NextSetName(spec.door) {
				ports = k.next
			}
			wantSets[i].elements = portElements(ports)
		}
	}
	rules := planRules(cfg, wantSets)
	want := make(map[string]setSpec, len(wantSets))
	for _, s := range wantSets {
		want[s.name] = s
	}
	keep := map[string]bool{}
	for _, s := range sets {
		if spec, ok := want[s.Name]; ok && fits(s, spec) {
			keep[s.Name] = true
		}
	}

	// Seed the mirror from the sets that stay. Nothing else writes to
	// them between this read and the batch: the table is ours alone.
	seeds := map[grantKey]time.Time{}
	seedTimeouts := map[grantKey]time.Duration{}
	for _, spec := range wantSets {
		if !keep[spec.name] || spec.role != roleGrant {
			continue
		}
		elems, err := f.elements(spec.name)
		if err != nil {
			return fmt.Errorf("read set %s: %w", spec.name, err)
		}
		// The clock is read after the kernel reported the time left,
		// so the mirror's expiry is not earlier than the kernel's.
		now := f.now()
		for _, e := range elems {
			addr, ok := netip.AddrFromSlice(e.Key)
			if spec.anyone() {
				addr, ok = anyoneAddr(e.Key)
			}
			if !ok {
				continue
			}
			var exp time.Time // zero: an element without timeout
			if e.Timeout != 0 {
				exp = now.Add(e.Expires)
			}
			seeds[grantKey{spec.door, addr}] = exp
			seedTimeouts[grantKey{spec.door, addr}] = e.Timeout
		}
	}

	// Grants the mirror knows in sets this batch creates anew (someone
	// deleted the table or a set): they go back in, in this same batch,
	// with the time they had left. v0.3.0 cannot send that time, so the
	// batch is then built on a capturing Conn and sent by commit (heal.go).
	restore := f.restorable(wantSets, keep)
	var capt *capture
	if len(restore) > 0 {
		capt = newCapture()
		c = capt.conn
	}

	// Build the batch; c queues messages until flush.
	c.AddTable(f.table)
	// Order matters within the batch: rules go first (they hold
	// references to sets and chains), then sets (a verdict map may hold
	// jumps to chains), then chains.
	for _, ch := range chains {
		c.FlushChain(ch)
	}
	for _, s := range sets {
		if !keep[s.Name] {
			c.DelSet(s)
		}
	}
	for _, ch := range chains {
		c.DelChain(ch)
	}
	for _, spec := range wantSets {
		if keep[spec.name] {
			continue
		}
		if err := c.AddSet(newSet(f.table, spec), spec.elements); err != nil {
			f.reset()
			return fmt.Errorf("add set %s: %w", spec.name, err)
		}
	}
	accept := nftables.ChainPolicyAccept
	chain := c.AddChain(&nftables.Chain{
		Name:     chainName,
		Table:    f.table,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookInput,
		Priority: nftables.ChainPriorityRef(chainPriority),
		Policy:   &accept,
	})
	for _, r := range rules {
		c.AddRule(&nftables.Rule{
			Table:    f.table,
			Chain:    chain,
			Exprs:    r.exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, r.comment),
		})
	}
	if err := f.commit(c, capt, restore); err != nil {
		return err
	}

	f.doors = f.doors[:0]
	f.anyone = map[string]bool{}
	f.rotating = map[string]bool{}
	for _, d := range cfg.Doors {
		f.anyone[d.Name] = d.OpenToAnyone
		f.rotating[d.Name] = d.IsRotating()
		f.doors = append(f.doors, d.Name)
	}
	f.mirror = seeds
	f.timeouts = seedTimeouts
	f.nrules = len(rules)
	f.sets = f.sets[:0]
	for _, s := range wantSets {
		f.sets = append(f.sets, s.name)
	}
	f.restoredInto(restore)
	return nil
}

// current lists the chains and named sets the table holds now; none if the
// table does not exist.
func (f *Firewall) current(c *nftables.Conn) ([]*nftables.Chain, []*nftables.Set, error) {
	tables, err := c.ListTablesOfFamily(f.table.Family)
	if err != nil {
		return nil, nil, fmt.Errorf("list tables: %w", err)
	}
	exists := false
	for _, t := range tables {
		exists = exists || t.Name == f.table.Name
	}
	if !exists {
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

// newSet is the kernel set of spec. A grant set is "type ipv4_addr;
// flags timeout;" (or ipv6_addr, or nf_proto for an open_to = "anyone"
// door), with no default timeout, as each grant carries its own.
func newSet(t *nftables.Table, spec setSpec) *nftables.Set {
	return &nftables.Set{
		Table:      t,
		ID:         spec.id,
		Name:       spec.name,
		HasTimeout: spec.role != roleAllow && spec.role != roleRotation,
		Timeout:    spec.timeout,
		Interval:   spec.interval,
		Dynamic:    spec.dynamic,
		Size:       spec.size,
		KeyType:    spec.key,
		// Addresses are big endian; nft records this in the set's
		// userdata, and so do we, to read back the same.
		KeyByteOrder: binaryutil.BigEndian,
		Comment:      spec.comment,
	}
}

// fits tells whether an existing set can stay as the set of spec. A set of
// the right name but the wrong shape (someone edited the table by hand) is
// replaced, losing its elements, rather than left to break the rules or
// grants. An always_allow set never stays: its elements come from the
// config.
func fits(s *nftables.Set, spec setSpec) bool {
	want := newSet(nil, spec)
	return spec.role != roleAllow && spec.role != roleRotation &&
		s.KeyType.GetNFTMagic() == want.KeyType.GetNFTMagic() &&
		s.KeyType.Bytes == want.KeyType.Bytes &&
		s.HasTimeout && s.Dynamic == want.Dynamic && s.Timeout == want.Timeout &&
		!s.IsMap && !s.Interval && !s.Constant && !s.Concatenation
}
