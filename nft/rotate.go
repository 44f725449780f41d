package nft

import (
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/config"
)

// A rotating door's knocks change every window, so its knock rules match
// two named sets of ports instead of fixed ports: <door>_first holds the
// first knocks valid now, <door>_next the later ones. Rotate replaces both
// in one atomic batch; the rules never change. Only knocks on ports in the
// sets reach the daemon: the rest of the range is dropped in the kernel.

// FirstSetName is the set of a rotating door's first knocks valid now.
func FirstSetName(door string) string { return door + "_first" }

// NextSetName is the set of a rotating door's later knocks valid now.
func NextSetName(door string) string { return door + "_next" }

// knocksNow are a rotating door's ports valid now, as its two sets hold them.
type knocksNow struct{ first, next []uint16 }

// splitKnocks puts each sequence's first port in first and its other ports
// in next. A port that is the first knock of one sequence and a later
// knock of another (the two windows' sequences are drawn independently)
// goes in first only, so that no packet is logged twice; the tracker,
// which follows both sequences, does not mind which set logged it.
func splitKnocks(seqs [][]config.Port) knocksNow {
	var k knocksNow
	for _, seq := range seqs {
		if len(seq) > 0 && !slices.Contains(k.first, seq[0].Num) {
			k.first = append(k.first, seq[0].Num)
		}
	}
	for _, seq := range seqs {
		for _, p := range seq[min(1, len(seq)):] {
			if !slices.Contains(k.first, p.Num) && !slices.Contains(k.next, p.Num) {
				k.next = append(k.next, p.Num)
			}
		}
	}
	slices.Sort(k.first)
	slices.Sort(k.next)
	return k
}

func portElements(ports []uint16) []nftables.SetElement {
	els := make([]nftables.SetElement, len(ports))
	for i, p := range ports {
		els[i] = nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(p)}
	}
	return els
}

// Rotate makes a rotating door accept the knocks of seqs (the sequences
// of the current and previous windows that are not used up yet). If the
// door is installed, both of its sets are replaced in one atomic batch;
// either way, a later Install (a reload, a heal) puts these ports in.
// On error the kernel's sets are as they were.
func (f *Firewall) Rotate(door string, seqs [][]config.Port) error {
	k := splitKnocks(seqs)
	f.rotation[door] = k
	if !f.rotating[door] {
		return nil
	}
	c, err := f.c()
	if err != nil {
		return fmt.Errorf("rotate door %s: %w", door, err)
	}
	for _, s := range []struct {
		name  string
		ports []uint16
	}{{FirstSetName(door), k.first}, {NextSetName(door), k.next}} {
		set := &nftables.Set{Table: f.table, Name: s.name, KeyType: nftables.TypeInetService}
		c.FlushSet(set)
		if len(s.ports) > 0 {
			if err := c.SetAddElements(set, portElements(s.ports)); err != nil {
				f.reset()
				return fmt.Errorf("rotate door %s: %w", door, err)
			}
		}
	}
	if err := f.flush(c); err != nil {
		return fmt.Errorf("rotate door %s: %w", door, err)
	}
	return nil
}

// rotationSets are a rotating door's two port sets.
func rotationSets(d *config.Door) []setSpec {
	return []setSpec{
		{name: FirstSetName(d.Name), door: d.Name, role: roleRotation, key: nftables.TypeInetService,
			comment: "door " + d.Name + ": first knocks valid now (this window's and the last one's)"},
		{name: NextSetName(d.Name), door: d.Name, role: roleRotation, key: nftables.TypeInetService,
			comment: "door " + d.Name + ": later knocks valid now"},
	}
}

// rotatingRules are a rotating door's knock rules, in the place of the
// per-step rules of a door with a fixed sequence: a per-source rate limit
// over the whole range; a log rule per set; the knocking-set updates (as
// knockRules explains); then a drop of the knocks. The rest of the range is
// dropped by rotatingRangeDrop, after the scan rules, so that a knocking
// source's connection to another port of the range breaks its knock off.
func rotatingRules(cfg *config.Config, d *config.Door, setID map[string]uint32) []ruleSpec {
	r := d.SequencePorts
	var rules []ruleSpec
	for _, f := range families {
		rules = append(rules, ruleSpec{
			exprs:   overRate(matchPort(r), f.v6, setID),
			comment: fmt.Sprintf("door %s: a source knocking over %d a second on the rotating range is not heard", d.Name, knockRate),
		})
	}
	when := doorMatch(d, r.Proto)
	for _, s := range []struct{ set, what string }{
		{FirstSetName(d.Name), "a first knock valid now"},
		{NextSetName(d.Name), "a later knock valid now"},
	} {
		rules = append(rules, ruleSpec{
			exprs: concat(matchPortInSet(r.Proto, s.set, setID[s.set]), when, []expr.Any{
				&expr.Counter{},
				&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: cfg.NFLOGGroup, Data: []byte(d.Name)},
			}),
			comment: "door " + d.Name + ": " + s.what,
		})
	}
	for _, s := range []struct{ ports, v4, v6 string }{
		{FirstSetName(d.Name), firstV4, firstV6},
		{NextSetName(d.Name), knockingV4, knockingV6},
	} {
		for _, f := range families {
			name := pick(f.v6, s.v4, s.v6)
			rules = append(rules, ruleSpec{
				exprs: concat(matchPortInSet(r.Proto, s.ports, setID[s.ports]), when, saddr(f.v6), []expr.Any{&expr.Dynset{
					SrcRegKey: 1, SetName: name, SetID: setID[name], Operation: uint32(unix.NFT_DYNSET_OP_UPDATE), Timeout: d.SeqTimeout,
				}}),
				comment: fmt.Sprintf("door %s: the source is knocking: its other new connections are watched for %s", d.Name, d.SeqTimeout),
			})
		}
	}
	for _, set := range []string{FirstSetName(d.Name), NextSetName(d.Name)} {
		rules = append(rules, ruleSpec{
			exprs:   concat(matchPortInSet(r.Proto, set, setID[set]), counterVerdict(expr.VerdictDrop)),
			comment: "door " + d.Name + ": knocks valid now: filtered, like any closed port",
		})
	}
	return rules
}

// rotatingRangeDrop drops the rest of a rotating door's range: the ports
// valid now look no different from the others.
func rotatingRangeDrop(d *config.Door) ruleSpec {
	return ruleSpec{
		exprs:   concat(matchPort(d.SequencePorts), counterVerdict(expr.VerdictDrop)),
		comment: "door " + d.Name + ": the rest of the rotating range " + d.SequencePorts.String() + ": filtered, like the knocks",
	}
}

// matchPortInSet is "tcp dport @set".
func matchPortInSet(proto config.Proto, set string, id uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(proto)}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: set, SetID: id},
	}
}

// StillValid reports, for each of seqs, whether the rotating door's sets
// in the kernel hold it whole: its first knock in <door>_first, its others
// in either set. The sets are the only record of which sequences a door
// has used up that outlives the daemon (Rotate takes a used sequence out),
// so a restarted daemon reads them before its Install rebuilds them. Sets
// that do not exist (a fresh start) hold nothing: every sequence reads as
// used, and the door opens from the next window on.
func (f *Firewall) StillValid(door string, seqs [][]config.Port) ([]bool, error) {
	valid := make([]bool, len(seqs))
	names := []string{FirstSetName(door), NextSetName(door)}
	// v0.3.0 flattens netlink errors to text, so a missing set is found
	// by listing, not by its ENOENT.
	sets, ok, err := f.tableSets()
	if err != nil || !ok {
		return valid, err
	}
	for _, name := range names {
		if !slices.ContainsFunc(sets, func(s *nftables.Set) bool { return s.Name == name }) {
			return valid, nil
		}
	}
	held := [2]map[uint16]bool{}
	for i, name := range names {
		els, err := f.elements(name)
		if err != nil {
			return valid, fmt.Errorf("read set %s: %w", name, err)
		}
		held[i] = map[uint16]bool{}
		for _, e := range els {
			if len(e.Key) == 2 {
				held[i][binaryutil.BigEndian.Uint16(e.Key)] = true
			}
		}
	}
	for i, seq := range seqs {
		valid[i] = len(seq) > 0 && held[0][seq[0].Num]
		for _, p := range seq[min(1, len(seq)):] {
			valid[i] = valid[i] && (held[0][p.Num] || held[1][p.Num])
		}
	}
	return valid, nil
}
