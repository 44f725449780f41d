package nft

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/config"
)

// chainName is the one base chain of the table.
const chainName = "input"

// chainPriority is "filter - 10": the chain runs just before the usual
// filter chains at priority 0 (the host's own firewall, firewalld, ufw,
// Docker...). Knock packets must be logged even when that firewall drops
// them, and a base chain with a lower number sees the packet first; an
// accept here does not stop a later chain from dropping, so the host's
// firewall keeps the last word on everything nftknock does not gate.
const chainPriority = -10

// maxComment is the longest comment, in bytes, put on a rule or a set. It is
// nft's own limit (its parser refuses longer comments), so `nft list ruleset`
// output can always be loaded back with `nft -f`; the kernel would accept up
// to 256 bytes of userdata.
const maxComment = 128

// ScanPrefix is the NFLOG prefix of the scan rule. Door names are
// [a-z0-9_]+, so it can be no door's.
const ScanPrefix = "*"

// Per-source knock rate limit, applied in the kernel before a knock reaches
// NFLOG: a knock client sends one packet a step, so a source over this rate
// is flooding, and its excess never costs the daemon anything.
const (
	knockRate  = 10 // packets a second
	knockBurst = 20
	// rateSetSize bounds the kernel's per-source rate table, whatever a
	// flood of spoofed sources does; rateTimeout forgets idle sources.
	rateSetSize = 65536
	rateTimeout = time.Minute
	// knockingSetSize bounds the set of sources part-way through a knock.
	knockingSetSize = 65536
)

// Names of the table-wide sets.
const (
	firstV4    = "knock_first_v4"
	firstV6    = "knock_first_v6"
	knockingV4 = "knocking_v4"
	knockingV6 = "knocking_v6"
	rateV4     = "knock_rate_v4"
	rateV6     = "knock_rate_v6"
)

// ruleSpec is one rule of the chain before it is tied to a table.
type ruleSpec struct {
	exprs   []expr.Any
	comment string
}

// setRole says what a set is for, and so whether Install must keep it.
type setRole uint8

const (
	// roleGrant: a door's grants. Kept across restarts and reloads with
	// their live elements, so a restart neither revokes nor extends one.
	roleGrant setRole = iota + 1
	// roleAllow: a door's always_allow networks, rebuilt from the config.
	roleAllow
	// roleDynamic: filled by the kernel from the packet path (sources part-
	// way through a knock, per-source knock rate). Kept if it fits.
	roleDynamic
	// roleRotation: a rotating door's knocks valid now, filled by Install
	// and Rotate from what the daemon last said (rotate.go).
	roleRotation
)

// setSpec is one named set of the table.
type setSpec struct {
	name string
	door string // "" for table-wide sets
	role setRole
	v6   bool // an IPv6 address set
	key  nftables.SetDatatype
	// interval: elements are ranges (always_allow); dynamic: the packet
	// path adds elements; size bounds a dynamic set; timeout is the
	// default element timeout (0: each element carries its own).
	interval, dynamic bool
	size              uint32
	timeout           time.Duration
	// id names the set within a batch. The kernel resolves a lookup by set
	// name first and only falls back to the ID, but nft sends both, and an
	// explicit, deterministic ID keeps golden files stable (v0.3.0 would
	// otherwise draw one from a process-wide counter).
	id       uint32
	comment  string
	elements []nftables.SetElement
}

// SetName is the name of the kernel set that holds the sources a door lets
// in: "<door>_v4" or "<door>_v6".
func SetName(door string, v6 bool) string {
	if v6 {
		return door + "_v6"
	}
	return door + "_v4"
}

// AnyoneSetName is the set of an open_to = "anyone" door: while it holds
// ipv4 (ipv6), the door's ports are open to every IPv4 (IPv6) address.
func AnyoneSetName(door string) string { return door + "_anyone" }

func allowSetName(door string, v6 bool) string {
	if v6 {
		return door + "_allow_v6"
	}
	return door + "_allow_v4"
}

// family is IPv4 or IPv6, as the table's per-family sets and rules see it.
type family struct {
	v6   bool
	name string
	key  nftables.SetDatatype
}

var families = []family{{false, "IPv4", nftables.TypeIPAddr}, {true, "IPv6", nftables.TypeIP6Addr}}

// anyone tells an open_to = "anyone" door's grant set.
func (s setSpec) anyone() bool {
	return s.role == roleGrant && s.key.GetNFTMagic() == nftables.TypeNFProto.GetNFTMagic()
}

// grantSetSpec is the spec of a source door's grant set.
func grantSetSpec(name, door string, v6 bool) setSpec {
	key := nftables.TypeIPAddr
	if v6 {
		key = nftables.TypeIP6Addr
	}
	return setSpec{name: name, door: door, role: roleGrant, v6: v6, key: key}
}

// planSets lists the sets of the table: per door its grant sets and
// always_allow sets, then the table-wide dynamic sets.
func planSets(cfg *config.Config) []setSpec {
	var sets []setSpec
	add := func(s setSpec) {
		s.id = uint32(len(sets) + 1)
		s.comment = clip(s.comment)
		sets = append(sets, s)
	}
	for _, d := range cfg.Doors {
		if d.OpenToAnyone {
			add(setSpec{name: AnyoneSetName(d.Name), door: d.Name, role: roleGrant, key: nftables.TypeNFProto,
				comment: "door " + d.Name + ": while it holds a family, the door is open to anyone of it"})
		} else {
			for _, f := range families {
				add(setSpec{name: SetName(d.Name, f.v6), door: d.Name, role: roleGrant, v6: f.v6, key: f.key,
					comment: "door " + d.Name + ": " + f.name + " sources let in by a knock"})
			}
		}
		if d.IsRotating() {
			for _, s := range rotationSets(&d) {
				add(s)
			}
		}
		for _, f := range families {
			if els := intervalElements(d.AlwaysAllow, f.v6); els != nil {
				add(setSpec{name: allowSetName(d.Name, f.v6), door: d.Name, role: roleAllow, v6: f.v6, key: f.key, interval: true,
					comment: "door " + d.Name + ": always_allow, no knock needed", elements: els})
			}
		}
	}
	if hasKnocks(cfg) {
		for _, f := range families {
			add(setSpec{name: pick(f.v6, firstV4, firstV6), role: roleDynamic, v6: f.v6, key: f.key, dynamic: true, size: knockingSetSize,
				comment: f.name + " sources after a first knock: their new connections elsewhere are logged"})
		}
		for _, f := range families {
			add(setSpec{name: pick(f.v6, knockingV4, knockingV6), role: roleDynamic, v6: f.v6, key: f.key, dynamic: true, size: knockingSetSize,
				comment: f.name + " sources past a first knock: their new connections elsewhere are logged"})
		}
	}
	if hasKnocks(cfg) || hasSPA(cfg) {
		for _, f := range families {
			add(setSpec{name: pick(f.v6, rateV4, rateV6), role: roleDynamic, v6: f.v6, key: f.key, dynamic: true, size: rateSetSize, timeout: rateTimeout,
				comment: f.name + " knock rate per source"})
		}
	}
	return sets
}

// hasSPA reports whether cfg has a single-packet authorization door.
func hasSPA(cfg *config.Config) bool {
	for i := range cfg.Doors {
		if cfg.Doors[i].IsSPA() {
			return true
		}
	}
	return false
}

func hasKnocks(cfg *config.Config) bool {
	for _, d := range cfg.Doors {
		if len(d.Sequence) > 0 || len(d.CloseSequence) > 0 || d.IsRotating() {
			return true
		}
	}
	return false
}

// intervalElements encodes networks as nft does for an interval set: a
// leading end marker at the zero address, then each merged range as its
// start and, unless it runs to the top of the address space, the address
// after its end marked as an interval end. nil when no network is of the
// family.
func intervalElements(nets []netip.Prefix, v6 bool) []nftables.SetElement {
	type span struct{ lo, hi netip.Addr }
	var spans []span
	for _, p := range nets {
		if p.Addr().Is6() != v6 {
			continue
		}
		spans = append(spans, span{p.Masked().Addr(), lastAddr(p)})
	}
	if len(spans) == 0 {
		return nil
	}
	slices.SortFunc(spans, func(a, b span) int { return a.lo.Compare(b.lo) })
	// The kernel refuses overlapping intervals; merge them, and adjacent
	// ones, as nft's auto-merge would.
	merged := spans[:1]
	for _, s := range spans[1:] {
		last := &merged[len(merged)-1]
		if next := last.hi.Next(); next.IsValid() && s.lo.Compare(next) > 0 {
			merged = append(merged, s)
		} else if s.hi.Compare(last.hi) > 0 {
			last.hi = s.hi
		}
	}
	zero := netip.IPv4Unspecified()
	if v6 {
		zero = netip.IPv6Unspecified()
	}
	els := []nftables.SetElement{{Key: zero.AsSlice(), IntervalEnd: true}}
	for _, s := range merged {
		els = append(els, nftables.SetElement{Key: s.lo.AsSlice()})
		if end := s.hi.Next(); end.IsValid() {
			els = append(els, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
	}
	if !merged[0].lo.IsUnspecified() {
		return els
	}
	// A range that starts at the zero address replaces the leading marker.
	return els[1:]
}

// lastAddr is the highest address in p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// planRules lists the rules of the chain, in order:
//
//  1. loopback accept;
//  2. per door and opened port, accept the door's always_allow networks;
//  3. per distinct opened port, accept connections conntrack already knows,
//     so a session outlives the grant that let it in;
//  4. per door and opened port, accept sources in the door's sets (or
//     everyone, while an open_to = "anyone" door's set holds the family);
//  5. per distinct opened port, drop everything else;
//  6. per distinct knock step (port, or ICMP echo size): drop a source
//     knocking faster than knockRate; log the packet with the door's name
//     as prefix, once per door that has the step (after matching the door's
//     interface and TCP flags; a door's first step also puts the source in
//     the knocking set); then drop it. Dropping (not rejecting) makes a
//     knock port look filtered, like any other firewalled port.
//  7. log new connections from sources in the knocking set: they reach no
//     knock port and no opened port (those rules ended before), so they
//     break off the knock — what stops a port scan that walks the knock
//     ports in order from opening a door.
//
// Ports keep the order in which the config first names them, so the same
// config always gives the same ruleset.
func planRules(cfg *config.Config, sets []setSpec) []ruleSpec {
	setID := make(map[string]uint32, len(sets))
	for _, s := range sets {
		setID[s.name] = s.id
	}
	lookup := func(name string, v6 bool) []expr.Any {
		return matchSaddrInSet(name, setID[name], v6)
	}

	rules := []ruleSpec{{
		exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname("lo")},
			&expr.Verdict{Kind: expr.VerdictAccept},
		},
		comment: "loopback is never gated",
	}}

	// Opened ports and the doors that open each.
	var opened []config.Port
	openers := map[config.Port][]string{}
	for _, d := range cfg.Doors {
		for _, p := range d.Open {
			if _, ok := openers[p]; !ok {
				opened = append(opened, p)
			}
			if !slices.Contains(openers[p], d.Name) {
				openers[p] = append(openers[p], d.Name)
			}
		}
	}

	for _, d := range cfg.Doors {
		for _, p := range distinct(d.Open) {
			for _, f := range families {
				if name := allowSetName(d.Name, f.v6); setID[name] != 0 {
					rules = append(rules, ruleSpec{
						exprs:   concat(matchPort(p), lookup(name, f.v6), counterVerdict(expr.VerdictAccept)),
						comment: "door " + d.Name + ": always_allow",
					})
				}
			}
		}
	}

	for _, p := range opened {
		who := "door " + openers[p][0]
		if len(openers[p]) > 1 {
			who = "doors " + strings.Join(openers[p], ", ")
		}
		rules = append(rules, ruleSpec{
			exprs:   concat(matchPort(p), ctEstablished(), counterVerdict(expr.VerdictAccept)),
			comment: who + ": connections already let in stay up",
		})
	}

	for _, d := range cfg.Doors {
		for _, p := range distinct(d.Open) {
			if d.OpenToAnyone {
				name := AnyoneSetName(d.Name)
				rules = append(rules, ruleSpec{
					exprs: concat(matchPort(p), []expr.Any{
						&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
						&expr.Lookup{SourceRegister: 1, SetName: name, SetID: setID[name]},
					}, counterVerdict(expr.VerdictAccept)),
					comment: "door " + d.Name + ": open to anyone after a knock",
				})
				continue
			}
			for _, f := range families {
				rules = append(rules, ruleSpec{
					exprs:   concat(matchPort(p), lookup(SetName(d.Name, f.v6), f.v6), counterVerdict(expr.VerdictAccept)),
					comment: "door " + d.Name + ": sources that knocked",
				})
			}
		}
	}

	for _, p := range opened {
		rules = append(rules, ruleSpec{
			exprs:   concat(matchPort(p), counterVerdict(expr.VerdictDrop)),
			comment: "closed to everyone else",
		})
	}

	for _, k := range planKnocks(cfg) {
		for _, f := range families {
			rules = append(rules, ruleSpec{
				exprs:   overRate(matchStep(k.step, f.v6), f.v6, setID),
				comment: fmt.Sprintf("knock %s: a source knocking over %d a second is not heard", k.step, knockRate),
			})
		}
		for _, u := range k.uses {
			rules = append(rules, knockRules(cfg, k.step, u, setID)...)
		}
		for _, f := range familiesOf(k.step) {
			rules = append(rules, ruleSpec{
				exprs:   concat(matchStep(k.step, f.v6), counterVerdict(expr.VerdictDrop)),
				comment: "knock " + k.step.String() + ": filtered, like any closed port",
			})
		}
	}

	for i := range cfg.Doors {
		if d := &cfg.Doors[i]; d.IsRotating() {
			rules = append(rules, rotatingRules(cfg, d, setID)...)
		}
	}

	// SPA doors: the same per-source rate limit, then the datagram is
	// logged whole (the NFLOG copy range covers it: see knock/spa.Size) and
	// dropped, so the port looks filtered and nothing ever answers.
	for _, d := range cfg.Doors {
		if !d.IsSPA() {
			continue
		}
		p := d.SPAPort
		for _, f := range families {
			rules = append(rules, ruleSpec{
				exprs:   overRate(matchPort(p), f.v6, setID),
				comment: fmt.Sprintf("door %s: SPA port %s: a source sending over %d a second is not heard", d.Name, p, knockRate),
			})
		}
		rules = append(rules, ruleSpec{
			exprs: concat(matchPort(p), doorMatch(&d, p.Proto), []expr.Any{
				&expr.Counter{},
				&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: cfg.NFLOGGroup, Data: []byte(d.Name)},
			}),
			comment: "door " + d.Name + ": single-packet authorization",
		}, ruleSpec{
			exprs:   concat(matchPort(p), counterVerdict(expr.VerdictDrop)),
			comment: "door " + d.Name + ": SPA port " + p.String() + ": filtered, nothing answers",
		})
	}

	if hasKnocks(cfg) {
		for _, sf := range []struct {
			v6   bool
			name string
		}{{false, firstV4}, {true, firstV6}, {false, knockingV4}, {true, knockingV6}} {
			rules = append(rules, ruleSpec{
				exprs: concat([]expr.Any{
					&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
					&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
						Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: make([]byte, 4)},
					&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
				}, lookup(sf.name, sf.v6), []expr.Any{
					&expr.Counter{},
					&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: cfg.NFLOGGroup, Data: []byte(ScanPrefix)},
				}),
				comment: "a knocking source tried another port: its knock is broken off",
			})
		}
	}
	for i := range cfg.Doors {
		if d := &cfg.Doors[i]; d.IsRotating() {
			rules = append(rules, rotatingRangeDrop(d))
		}
	}

	for i := range rules {
		rules[i].comment = clip(rules[i].comment)
	}
	return rules
}

// knockUse is one door's use of a knock step.
type knockUse struct {
	door *config.Door
	// steps are the step numbers (1-based) in the door's open and close
	// sequences that are this knock.
	steps [2][]int
	first bool // the first step of one of the door's sequences
}

// last reports whether every use of the step ends its sequence.
func (u knockUse) last() bool {
	for i, of := range []int{len(u.door.Sequence), len(u.door.CloseSequence)} {
		for _, n := range u.steps[i] {
			if n != of {
				return false
			}
		}
	}
	return true
}

// label is "knock 1 of 3", "knocks 1, 3 and 5 of 5", "close knock 2 of 2".
func (u knockUse) label() string {
	var parts []string
	for i, what := range []string{"knock", "close knock"} {
		steps := u.steps[i]
		if len(steps) == 0 {
			continue
		}
		of := len(u.door.Sequence)
		if i == 1 {
			of = len(u.door.CloseSequence)
		}
		if len(steps) > 1 {
			what += "s"
		}
		parts = append(parts, fmt.Sprintf("%s %s of %d", what, joinSteps(steps), of))
	}
	return strings.Join(parts, ", ")
}

// joinSteps writes 1 / 1 and 3 / 1, 2 and 4.
func joinSteps(steps []int) string {
	s := make([]string, len(steps))
	for i, n := range steps {
		s[i] = fmt.Sprint(n)
	}
	if len(s) == 1 {
		return s[0]
	}
	return strings.Join(s[:len(s)-1], ", ") + " and " + s[len(s)-1]
}

type knockStep struct {
	step config.Port
	uses []knockUse
}

// planKnocks lists the distinct knock steps in config order, each with the
// doors that use it.
func planKnocks(cfg *config.Config) []knockStep {
	var steps []knockStep
	index := map[config.Port]int{}
	for di := range cfg.Doors {
		d := &cfg.Doors[di]
		for kind, seq := range [][]config.Port{d.Sequence, d.CloseSequence} {
			for i, p := range seq {
				ki, ok := index[p]
				if !ok {
					ki = len(steps)
					index[p] = ki
					steps = append(steps, knockStep{step: p})
				}
				k := &steps[ki]
				if n := len(k.uses); n == 0 || k.uses[n-1].door != d {
					k.uses = append(k.uses, knockUse{door: d})
				}
				u := &k.uses[len(k.uses)-1]
				u.steps[kind] = append(u.steps[kind], i+1)
				u.first = u.first || i == 0
			}
		}
	}
	return steps
}

// knockRules are a door's rules for one knock step: the kernel matches
// what the door asks of a knock (interface, TCP flags, ICMP size) and logs
// the packet with the door's name as NFLOG prefix; on a first step it also
// puts the source in the knocking set for the door's seq_timeout.
//
// The set update is a rule of its own, after the log rule: when a flood
// of spoofed sources has filled the knocking set, an update fails and
// ends its rule, and that must cost scan detection for new sources, never
// the knock itself.
func knockRules(cfg *config.Config, step config.Port, u knockUse, setID map[string]uint32) []ruleSpec {
	d := u.door
	when := doorMatch(d, step.Proto)
	var rules []ruleSpec
	for _, f := range familiesOf(step) {
		rules = append(rules, ruleSpec{
			exprs: concat(matchStep(step, f.v6), when, []expr.Any{
				&expr.Counter{},
				&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: cfg.NFLOGGroup, Data: []byte(d.Name)},
			}),
			comment: "door " + d.Name + ": " + u.label(),
		})
	}
	// A first knock goes in knock_first, later ones in knocking: a flood of
	// spoofed sources on a door's first port can fill knock_first (each
	// sends one packet), but not knocking, which only a source that got a
	// second step right reaches, so an ordered scan after or during such a
	// flood is still broken off by its connections after the second step.
	sets := [2]string{knockingV4, knockingV6}
	switch {
	case u.first:
		sets = [2]string{firstV4, firstV6}
	case u.last():
		return rules // nothing left to watch for
	}
	for _, f := range families {
		name := sets[0]
		if f.v6 {
			name = sets[1]
		}
		rules = append(rules, ruleSpec{
			exprs: concat(matchStep(step, f.v6), when, saddr(f.v6), []expr.Any{&expr.Dynset{
				SrcRegKey: 1, SetName: name, SetID: setID[name], Operation: uint32(unix.NFT_DYNSET_OP_UPDATE), Timeout: d.SeqTimeout,
			}}),
			comment: fmt.Sprintf("door %s: the source is knocking: its other new connections are watched for %s", d.Name, d.SeqTimeout),
		})
	}
	return rules
}

// overRate is "<match> add @knock_rate_v4 { ip saddr limit rate over
// 10/second burst 20 packets } counter drop": the per-source knock rate
// limit, for one family, on the packets match selects.
func overRate(match []expr.Any, v6 bool, setID map[string]uint32) []expr.Any {
	name := pick(v6, rateV4, rateV6)
	return concat(match, saddr(v6), []expr.Any{
		&expr.Dynset{
			SrcRegKey: 1, SetName: name, SetID: setID[name], Operation: uint32(unix.NFT_DYNSET_OP_ADD),
			Exprs: []expr.Any{&expr.Limit{Type: expr.LimitTypePkts, Rate: knockRate, Over: true, Unit: expr.LimitTimeSecond, Burst: knockBurst}},
		},
	}, counterVerdict(expr.VerdictDrop))
}

// doorMatch is what a door asks of a knock besides its port: that it came
// in on the door's interface, and for TCP that its flags match tcp_flags.
func doorMatch(d *config.Door, proto config.Proto) []expr.Any {
	var when []expr.Any
	if d.Interface != "" {
		when = append(when, &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(d.Interface)})
	}
	if proto == config.TCP && d.TCPFlags.Mask != 0 {
		when = append(when, matchTCPFlags(d.TCPFlags)...)
	}
	return when
}

// familiesOf lists the families a step needs rules for: a TCP or UDP
// port match serves both in an inet chain, an ICMP echo match does not.
func familiesOf(p config.Port) []family {
	if p.Proto == config.ICMP {
		return families
	}
	return families[:1]
}

// matchStep matches a knock step: "tcp dport 7000" whatever the family, or
// for ICMP the family's echo request of the step's payload size.
func matchStep(p config.Port, v6 bool) []expr.Any {
	if p.Proto != config.ICMP {
		return matchPort(p)
	}
	// An echo request whose payload is p.Num bytes: "icmp type
	// echo-request ip length 20+8+N" (ping sends no IP options) and
	// "icmpv6 type echo-request ip6 length 8+N".
	if v6 {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMPV6}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{128}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 4, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(8 + p.Num)},
		}
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{8}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(20 + 8 + p.Num)},
	}
}

func distinct(ports []config.Port) []config.Port {
	var out []config.Port
	for _, p := range ports {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

func pick(v6 bool, v4name, v6name string) string {
	if v6 {
		return v6name
	}
	return v4name
}

// The expression builders below emit exactly the bytecode nft emits for the
// same rule text (compare `nft --debug=netlink`), so that `nft list ruleset`
// can fold it back into "tcp dport 22 ip saddr @ssh_v4" instead of raw
// "meta l4proto 6 @th,16,16 ..." forms.

// matchPort is "tcp dport 22" / "udp dport 53" / "udp dport 60000-61000":
// [ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x06 ]
// [ payload load 2b @ transport header + 2 => reg 1 ] [ cmp eq reg 1 port ]
// (a range: [ cmp gte reg 1 first ] [ cmp lte reg 1 last ]).
func matchPort(p config.Port) []expr.Any {
	m := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(p.Proto)}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
	if p.Last > p.Num {
		return append(m,
			&expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: binaryutil.BigEndian.PutUint16(p.Num)},
			&expr.Cmp{Op: expr.CmpOpLte, Register: 1, Data: binaryutil.BigEndian.PutUint16(p.Last)})
	}
	return append(m, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(p.Num)})
}

// matchTCPFlags is "tcp flags syn / syn,ack" (flags & mask == want).
func matchTCPFlags(f config.TCPFlags) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{f.Mask}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.Want}},
	}
}

// ctEstablished is "ct state established,related": conntrack state bits are
// in host byte order.
func ctEstablished() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{
			SourceRegister: 1,
			DestRegister:   1,
			Len:            4,
			Mask:           binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:            make([]byte, 4),
		},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// saddr loads the source address into register 1: "ip saddr" / "ip6
// saddr". In an inet chain nft first pins the network protocol (meta
// nfproto), then loads the address (offset 12 in IPv4, 8 in IPv6).
func saddr(v6 bool) []expr.Any {
	proto, off, size := byte(unix.NFPROTO_IPV4), uint32(12), uint32(4)
	if v6 {
		proto, off, size = unix.NFPROTO_IPV6, 8, 16
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: size},
	}
}

// matchSaddrInSet is "ip saddr @set" / "ip6 saddr @set".
func matchSaddrInSet(set string, id uint32, v6 bool) []expr.Any {
	return append(saddr(v6), &expr.Lookup{SourceRegister: 1, SetName: set, SetID: id})
}

// counterVerdict is "counter accept" / "counter drop".
func counterVerdict(v expr.VerdictKind) []expr.Any {
	return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: v}}
}

// ifname pads an interface name to IFNAMSIZ as nft does for an exact match.
func ifname(s string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, s)
	return b
}

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// clip shortens s to maxComment bytes, marking the cut.
func clip(s string) string {
	if len(s) <= maxComment {
		return s
	}
	return s[:maxComment-3] + "..."
}
