// Package plan is the daemon's ruleset as data: the sets and chains of its
// table and the rules in them, before any of it meets netlink (package nft
// installs a Plan in one batch, and compares the kernel's rules with it).
//
// A Plan has two parts. Gate rules decide who reaches a door's opened
// ports: loopback, always_allow networks, connections already let in, the
// sources in the door's grant sets, and a drop for everyone else. Capture
// rules decide what reaches the daemon: knocks and datagrams are logged to
// NFLOG under their door's prefix (and dropped, so knock ports look
// filtered). Doors say what they capture through a Builder (Knock,
// RotatingKnocks, Datagram); the gate comes from the door's config. The
// Builder lays it all out in one fixed order, so the same config always
// gives the same ruleset, byte for byte.
package plan

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/config"
)

// Plan is the whole content of the daemon's table.
type Plan struct {
	Table  string
	Sets   []Set
	Chains []Chain
	// Doors are the doors whose grants the sets hold, in config order.
	Doors []Door
	// Attached: the chains are regular chains that an admin's base chains
	// jump to (attach mode), not base chains of a table of the daemon's
	// own. Package nft places them.
	Attached bool
}

// Role says what a set is for, and so what an install does with one that
// is already there.
type Role uint8

const (
	// RoleGrant: a door's grants. Kept across restarts and reloads with
	// their live elements while it keeps its shape.
	RoleGrant Role = iota + 1
	// RoleAllow: a door's always_allow networks, rebuilt from the config.
	RoleAllow
	// RoleDynamic: filled by the kernel from the packet path (sources part-
	// way through a knock, per-source knock rate). Kept if it fits.
	RoleDynamic
	// RolePorts: ports a door's knocks match now (a rotating door's),
	// rebuilt with Elements, then replaced as the daemon says.
	RolePorts
)

// Set is one named set of the table.
type Set struct {
	Name string
	Door string // "" for table-wide sets
	Role Role
	Key  nftables.SetDatatype
	// Interval: elements are ranges (always_allow); Dynamic: the packet
	// path adds elements; Size bounds the set; Timeout is the default
	// element timeout (0: each element carries its own).
	Interval, Dynamic bool
	Size              uint32
	Timeout           time.Duration
	// ID names the set within a batch, deterministically.
	ID       uint32
	Comment  string
	Elements []nftables.SetElement
}

// HasTimeout tells whether the set's elements expire: grants do, and the
// kernel's own dynamic sets.
func (s *Set) HasTimeout() bool { return s.Role == RoleGrant || s.Role == RoleDynamic }

// Hook is where a chain is attached.
type Hook uint8

// The hooks a chain may be on.
const (
	HookInput Hook = iota + 1
	HookForward
)

// Chain is a chain of the plan with its rules: a base chain on Hook at
// Priority, or, in an attached plan, a regular chain that the admin's
// chain on Hook jumps to.
type Chain struct {
	Name     string
	Hook     Hook
	Priority int32
	Rules    []Rule
}

// Rule is one rule: what the kernel runs and the comment `nft list` shows.
type Rule struct {
	Exprs   []expr.Any
	Comment string
}

// Door is a door's gate: what it opens, to whom, and the sets that hold
// its grants.
type Door struct {
	Name string
	// Open are the ports a grant opens.
	Open []config.Port
	// Anyone: a grant opens them to every address of its family.
	Anyone bool
	// AlwaysAllow reach Open without a grant.
	AlwaysAllow []netip.Prefix
	// MaxGrants is the size of each grant set.
	MaxGrants int
	// PerPort: a grant is an address, a protocol and a port, and opens
	// that one port (of Open) alone; the door's sets are `ipv4_addr .
	// inet_proto . inet_service` (and ipv6_addr), so that `nft list`
	// shows what each source got. Anyone takes precedence (the config
	// refuses the two together).
	PerPort bool
	// Hook is HookForward for a door that gates routed connections (its
	// Open as the client addressed them, on the forward hook and on the
	// input hook, and its ForwardTo); anything else is an input door.
	Hook Hook
	// To narrows a forward door's Open to these destination addresses.
	To []netip.Addr
	// ForwardTo are hosts and ports behind the router a forward door
	// gates by their own address.
	ForwardTo []config.Dest
}

// GrantSet names the set that holds door's grant to addr, and the
// element's key in it: the address itself; for a door open to anyone the
// address's family (meta nfproto), one element standing for all of it;
// for a door that grants per port, the address, proto and port
// concatenated as the kernel lays out `ipv4_addr . inet_proto .
// inet_service` (each field padded to 4 bytes). proto and port are those
// of a per-port grant, ignored for other doors.
func (d Door) GrantSet(addr netip.Addr, proto config.Proto, port uint16) (set string, key []byte) {
	switch {
	case d.Anyone:
		return AnyoneSetName(d.Name), FamilyKey(addr)
	case d.PerPort:
		key = append(addr.AsSlice(), byte(proto), 0, 0, 0, byte(port>>8), byte(port), 0, 0)
		return SetName(d.Name, addr.Is6()), key
	}
	return SetName(d.Name, addr.Is6()), addr.AsSlice()
}

// Grantee undoes GrantSet: what an element key of one of the door's grant
// sets lets in (proto and port zero but for a per-port door's). ok is
// false for a key of no shape the door's sets hold.
func (d Door) Grantee(key []byte) (addr netip.Addr, proto config.Proto, port uint16, ok bool) {
	switch {
	case d.Anyone:
		switch {
		case len(key) == 1 && key[0] == unix.NFPROTO_IPV4:
			return netip.IPv4Unspecified(), 0, 0, true
		case len(key) == 1 && key[0] == unix.NFPROTO_IPV6:
			return netip.IPv6Unspecified(), 0, 0, true
		}
		return netip.Addr{}, 0, 0, false
	case d.PerPort:
		n := len(key) - 8
		if n != 4 && n != 16 {
			return netip.Addr{}, 0, 0, false
		}
		addr, _ = netip.AddrFromSlice(key[:n])
		return addr, config.Proto(key[n]), uint16(key[n+4])<<8 | uint16(key[n+5]), true
	}
	addr, ok = netip.AddrFromSlice(key)
	return addr, 0, 0, ok
}

// Per-port grant sets' keys: `ipv4_addr . inet_proto . inet_service` and
// `ipv6_addr . inet_proto . inet_service`.
var (
	portKeyV4 = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	portKeyV6 = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService)
)

// PortKey is the key type of a per-port door's grant set of a family.
func PortKey(v6 bool) nftables.SetDatatype { return pick(v6, portKeyV4, portKeyV6) }

// FamilyKey is the element of an anyone set that stands for addr's family.
func FamilyKey(addr netip.Addr) []byte {
	if addr.Is6() {
		return []byte{unix.NFPROTO_IPV6}
	}
	return []byte{unix.NFPROTO_IPV4}
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

// ChainName is the input chain of the table; ForwardChainName the forward
// chain, which a plan has when a door is on the forward hook.
const (
	ChainName        = "input"
	ForwardChainName = "forward"
)

// ChainPriority is "filter - 10", for both chains: they run just before
// the usual filter chains at priority 0 (the host's own firewall, ufw's,
// Docker's FORWARD and DOCKER-USER) and firewalld's at filter + 10.
// Knock packets must be logged even when that firewall drops them, and
// the gate's drop must come first: a base chain with a lower number sees
// the packet first, and a drop is final whatever a later chain accepts
// (firewalld's forward chain accepts `ct status dnat`). An accept here
// does not stop a later chain from dropping, so the host's firewall keeps
// the last word on everything nftknock does not gate.
const ChainPriority = -10

// ScanPrefix is the NFLOG prefix of the scan rule. Door names are
// [a-z0-9_]+, so it can be no door's.
const ScanPrefix = "*"

// maxComment is the longest comment, in bytes, put on a rule or a set. It is
// nft's own limit (its parser refuses longer comments), so `nft list ruleset`
// output can always be loaded back with `nft -f`.
const maxComment = 128

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
	// knockingSetSize bounds the sets of sources part-way through a knock.
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

// family is IPv4 or IPv6, as the table's per-family sets and rules see it.
type family struct {
	v6   bool
	name string
	key  nftables.SetDatatype
}

var families = []family{{false, "IPv4", nftables.TypeIPAddr}, {true, "IPv6", nftables.TypeIP6Addr}}

// Watch says which knocking set a knock puts its source in: a first knock
// in knock_first, a later one in knocking; a last one in none.
type Watch uint8

// The knocking sets.
const (
	WatchNone Watch = iota
	WatchFirst
	WatchNext
)

// Knock is one step a door's sequence has: the kernel logs a packet that
// matches Step and When under the door's prefix.
type Knock struct {
	Step config.Port
	// When is what the door asks of the packet besides its port
	// (DoorMatch: interface, TCP flags).
	When []expr.Any
	// Label says which steps these are: "knock 1 of 3".
	Label string
	// Watch puts the source in a knocking set for SeqTimeout.
	Watch      Watch
	SeqTimeout time.Duration
}

// RotatingKnocks are a rotating door's knocks: those on ports in its two
// sets (first knocks, later knocks), within Range.
type RotatingKnocks struct {
	Range      config.Port
	When       []expr.Any
	SeqTimeout time.Duration
	// First and Next are the ports of the two sets now.
	First, Next []uint16
}

// FirstSetName is the set of a rotating door's first knocks valid now.
func FirstSetName(door string) string { return door + "_first" }

// NextSetName is the set of a rotating door's later knocks valid now.
func NextSetName(door string) string { return door + "_next" }

// Builder lays out a Plan from what each door says.
type Builder struct {
	table string
	group uint16
	// prefix gives the NFLOG prefix of a door's capture rules.
	prefix func(door string) string

	doors []*doorPlan
	// attached: the plan's chains are jumped to from an admin's chains.
	attached bool
	// steps are the knock steps in the order doors first name them, each
	// with the doors that use it.
	steps []*stepPlan
}

type doorPlan struct {
	Door
	rotating  *RotatingKnocks
	datagrams []datagram
}

type datagram struct {
	port config.Port
	when []expr.Any
	// size, if not zero, is the only UDP payload size logged.
	size uint16
	// shared: the port is SharedDatagram's; doors are those that share
	// it, the first one (whose prefix the rule logs under) first.
	shared bool
	doors  []string
}

type stepPlan struct {
	step config.Port
	uses []stepUse
}

type stepUse struct {
	door string
	Knock
}

// NewBuilder starts a plan for `table inet <table>`, logging to group;
// prefix names the NFLOG prefix of each door's rules (the door's name with
// a tag of its capture rules' version, so that a packet logged under an
// older version of a door is told apart).
func NewBuilder(table string, group uint16, prefix func(door string) string) *Builder {
	return &Builder{table: table, group: group, prefix: prefix}
}

// Attach lays the plan out for attach mode: its chains are jumped to from
// an admin's base chains, so an accept in them is an accept in the
// admin's chain. Loopback then returns to the admin's rules instead of
// being accepted.
func (b *Builder) Attach() { b.attached = true }

// Door adds a door, with its gate. Call it in config order, before the
// door's capture calls.
func (b *Builder) Door(d Door) {
	b.doors = append(b.doors, &doorPlan{Door: d})
}

func (b *Builder) door(name string) *doorPlan {
	for _, d := range b.doors {
		if d.Name == name {
			return d
		}
	}
	panic(fmt.Sprintf("plan: capture for door %q, which was not added", name))
}

// Knock has the kernel log knocks on k.Step for door.
func (b *Builder) Knock(door string, k Knock) {
	b.door(door)
	i := slices.IndexFunc(b.steps, func(s *stepPlan) bool { return s.step == k.Step })
	if i < 0 {
		i = len(b.steps)
		b.steps = append(b.steps, &stepPlan{step: k.Step})
	}
	b.steps[i].uses = append(b.steps[i].uses, stepUse{door, k})
}

// RotatingKnocks has the kernel log door's knocks on the ports of its two
// sets, and drop the rest of its range.
func (b *Builder) RotatingKnocks(door string, r RotatingKnocks) {
	b.door(door).rotating = &r
}

// Datagram has the kernel log datagrams to port for door (an SPA port), and
// drop them: nothing answers.
func (b *Builder) Datagram(door string, port config.Port, when []expr.Any) {
	d := b.door(door)
	d.datagrams = append(d.datagrams, datagram{port: port, when: when, doors: []string{door}})
}

// SharedDatagram is Datagram for a port that several doors share (fwknop
// doors: fwknopd's stanzas all take one port, and a packet belongs to the
// door whose key made it). The kernel logs a datagram to port once, under
// the prefix of the first door that asked for it, and that door must hand
// the others theirs: the engine routes a prefix to one door. The doors
// sharing a port must ask the same of its packets (when: the interface);
// a door that asks otherwise is a bug of its kind, which must refuse such
// a config.
func (b *Builder) SharedDatagram(door string, port config.Port, when []expr.Any) {
	b.door(door)
	for _, d := range b.doors {
		for i := range d.datagrams {
			g := &d.datagrams[i]
			if !g.shared || g.port != port {
				continue
			}
			if !slices.EqualFunc(g.when, when, func(a, b expr.Any) bool { return reflect.DeepEqual(a, b) }) {
				panic(fmt.Sprintf("plan: door %q shares datagram port %s with door %q but matches its packets otherwise", door, port, g.doors[0]))
			}
			g.doors = append(g.doors, door)
			return
		}
	}
	d := b.door(door)
	d.datagrams = append(d.datagrams, datagram{port: port, when: when, shared: true, doors: []string{door}})
}

// SizedDatagram is Datagram for a format whose every datagram has size
// bytes (a public-key SPA datagram): the kernel logs only those, "udp
// dport 62203 udp length 699", and drops any other unseen, so that
// nothing of another size costs the daemon anything.
func (b *Builder) SizedDatagram(door string, port config.Port, size uint16, when []expr.Any) {
	d := b.door(door)
	d.datagrams = append(d.datagrams, datagram{port: port, when: when, size: size, doors: []string{door}})
}

// Build lays the plan out.
func (b *Builder) Build() *Plan {
	p := &Plan{Table: b.table, Attached: b.attached}
	for _, d := range b.doors {
		p.Doors = append(p.Doors, d.Door)
	}
	p.Sets = b.sets()
	setID := map[string]uint32{}
	for _, s := range p.Sets {
		setID[s.Name] = s.ID
	}
	input := append(b.gate(setID, HookInput), b.capture(setID)...)
	p.Chains = []Chain{{Name: ChainName, Hook: HookInput, Priority: ChainPriority, Rules: input}}
	if slices.ContainsFunc(b.doors, func(d *doorPlan) bool { return d.Hook == HookForward }) {
		p.Chains = append(p.Chains, Chain{Name: ForwardChainName, Hook: HookForward, Priority: ChainPriority, Rules: b.gate(setID, HookForward)})
	}
	for _, c := range p.Chains {
		for i := range c.Rules {
			c.Rules[i].Comment = clip(c.Rules[i].Comment)
		}
	}
	return p
}

// knocks tells whether any door has knocks (and so the table the knocking
// and scan machinery); datagrams whether any has a datagram port.
func (b *Builder) knocks() bool {
	return len(b.steps) > 0 || slices.ContainsFunc(b.doors, func(d *doorPlan) bool { return d.rotating != nil })
}

func (b *Builder) datagrams() bool {
	return slices.ContainsFunc(b.doors, func(d *doorPlan) bool { return len(d.datagrams) > 0 })
}

// sets lists the sets of the table: per door its grant sets, its port sets
// and its always_allow sets, then the table-wide dynamic sets.
func (b *Builder) sets() []Set {
	var sets []Set
	add := func(s Set) {
		s.ID = uint32(len(sets) + 1)
		s.Comment = clip(s.Comment)
		sets = append(sets, s)
	}
	for _, d := range b.doors {
		size := uint32(d.MaxGrants)
		if d.Anyone {
			add(Set{Name: AnyoneSetName(d.Name), Door: d.Name, Role: RoleGrant, Key: nftables.TypeNFProto, Size: size,
				Comment: "door " + d.Name + ": while it holds a family, the door is open to anyone of it"})
		} else {
			for _, f := range families {
				key, what := f.key, " sources let in by a knock"
				if d.PerPort {
					key, what = PortKey(f.v6), " sources let in, each to the port it asked for"
				}
				add(Set{Name: SetName(d.Name, f.v6), Door: d.Name, Role: RoleGrant, Key: key, Size: size,
					Comment: "door " + d.Name + ": " + f.name + what})
			}
		}
		if r := d.rotating; r != nil {
			add(Set{Name: FirstSetName(d.Name), Door: d.Name, Role: RolePorts, Key: nftables.TypeInetService, Elements: PortElements(r.First),
				Comment: "door " + d.Name + ": first knocks valid now (this window's and the last one's)"})
			add(Set{Name: NextSetName(d.Name), Door: d.Name, Role: RolePorts, Key: nftables.TypeInetService, Elements: PortElements(r.Next),
				Comment: "door " + d.Name + ": later knocks valid now"})
		}
		for _, f := range families {
			if els := intervalElements(d.AlwaysAllow, f.v6); els != nil {
				add(Set{Name: allowSetName(d.Name, f.v6), Door: d.Name, Role: RoleAllow, Key: f.key, Interval: true,
					Comment: "door " + d.Name + ": always_allow, no knock needed", Elements: els})
			}
		}
	}
	if b.knocks() {
		for _, f := range families {
			add(Set{Name: pick(f.v6, firstV4, firstV6), Role: RoleDynamic, Key: f.key, Dynamic: true, Size: knockingSetSize,
				Comment: f.name + " sources after a first knock: their new connections elsewhere are logged"})
		}
		for _, f := range families {
			add(Set{Name: pick(f.v6, knockingV4, knockingV6), Role: RoleDynamic, Key: f.key, Dynamic: true, Size: knockingSetSize,
				Comment: f.name + " sources past a first knock: their new connections elsewhere are logged"})
		}
	}
	if b.knocks() || b.datagrams() {
		for _, f := range families {
			add(Set{Name: pick(f.v6, rateV4, rateV6), Role: RoleDynamic, Key: f.key, Dynamic: true, Size: rateSetSize, Timeout: rateTimeout,
				Comment: f.name + " knock rate per source"})
		}
	}
	return sets
}

// PortElements are ports as a port set's elements.
func PortElements(ports []uint16) []nftables.SetElement {
	els := make([]nftables.SetElement, len(ports))
	for i, p := range ports {
		els[i] = nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(p)}
	}
	return els
}

// gate lays out the gate rules of the chain on hook, in order:
//
//  1. on the input hook, loopback accept (return, when the chain is jumped
//     to from an admin's chain: the admin's rules decide about loopback);
//  2. per door and target, accept the door's always_allow networks;
//  3. per distinct target, accept connections conntrack already knows,
//     so a session outlives the grant that let it in;
//  4. per door and target, accept sources in the door's sets (or
//     everyone, while an open_to = "anyone" door's set holds the family);
//     a door that grants per port has one rule a family instead, on the
//     input hook only, whose set's elements name the address, protocol
//     and port;
//  5. per distinct target, drop everything else.
//
// A target is what a door gates on the hook (see targetsOf): on the input
// hook its opened ports; on the forward hook a forward door's opened ports
// as the client addressed them, and its forward_to hosts. Targets keep the
// order in which the config first names them.
func (b *Builder) gate(setID map[string]uint32, hook Hook) []Rule {
	var rules []Rule
	if hook == HookInput {
		lo := expr.VerdictAccept
		if b.attached {
			lo = expr.VerdictReturn
		}
		rules = append(rules, Rule{
			Exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname("lo")},
				&expr.Verdict{Kind: lo},
			},
			Comment: "loopback is never gated",
		})
	}

	// Targets and the doors that gate each.
	var targets []target
	openers := map[target][]string{}
	for _, d := range b.doors {
		for _, t := range targetsOf(d.Door, hook) {
			if _, ok := openers[t]; !ok {
				targets = append(targets, t)
			}
			if !slices.Contains(openers[t], d.Name) {
				openers[t] = append(openers[t], d.Name)
			}
		}
	}
	lookup := func(t target, name string, v6 bool) []expr.Any {
		return append(t.saddr(v6), &expr.Lookup{SourceRegister: 1, SetName: name, SetID: setID[name]})
	}

	for _, d := range b.doors {
		for _, t := range targetsOf(d.Door, hook) {
			for _, f := range t.families() {
				if name := allowSetName(d.Name, f.v6); setID[name] != 0 {
					rules = append(rules, Rule{
						Exprs:   concat(t.match(), lookup(t, name, f.v6), counterVerdict(expr.VerdictAccept)),
						Comment: "door " + d.Name + ": always_allow",
					})
				}
			}
		}
	}

	for _, t := range targets {
		who := "door " + openers[t][0]
		if len(openers[t]) > 1 {
			who = "doors " + strings.Join(openers[t], ", ")
		}
		rules = append(rules, Rule{
			Exprs:   concat(t.match(), ctEstablished(), counterVerdict(expr.VerdictAccept)),
			Comment: who + ": connections already let in stay up",
		})
	}

	for _, d := range b.doors {
		if d.PerPort && !d.Anyone {
			// One rule a family: the element names the port. The config
			// refuses a per-port door on the forward hook.
			if hook != HookInput {
				continue
			}
			for _, f := range families {
				name := SetName(d.Name, f.v6)
				rules = append(rules, Rule{
					Exprs:   concat(MatchSaddrPortInSet(name, setID[name], f.v6), counterVerdict(expr.VerdictAccept)),
					Comment: "door " + d.Name + ": each source to the ports it was granted",
				})
			}
			continue
		}
		for _, t := range targetsOf(d.Door, hook) {
			if d.Anyone {
				name := AnyoneSetName(d.Name)
				rules = append(rules, Rule{
					Exprs: concat(t.match(), []expr.Any{
						&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
						&expr.Lookup{SourceRegister: 1, SetName: name, SetID: setID[name]},
					}, counterVerdict(expr.VerdictAccept)),
					Comment: "door " + d.Name + ": open to anyone after a knock",
				})
				continue
			}
			for _, f := range t.families() {
				rules = append(rules, Rule{
					Exprs:   concat(t.match(), lookup(t, SetName(d.Name, f.v6), f.v6), counterVerdict(expr.VerdictAccept)),
					Comment: "door " + d.Name + ": sources that knocked",
				})
			}
		}
	}

	for _, t := range targets {
		rules = append(rules, Rule{
			Exprs:   concat(t.match(), counterVerdict(expr.VerdictDrop)),
			Comment: "closed to everyone else",
		})
	}
	return rules
}

// capture lays out the capture rules, in order:
//
//  1. per distinct knock step (port, or ICMP echo size): drop a source
//     knocking faster than knockRate; log the packet under the door's
//     prefix, once per door that has the step (after matching what the door
//     asks of it); put the source in the knocking set the door says; then
//     drop it. Dropping (not rejecting) makes a knock port look filtered,
//     like any other firewalled port;
//  2. per rotating door, the same for knocks on ports in its sets;
//  3. per datagram port, the rate limit, the log, and a drop;
//  4. log new connections from sources in the knocking sets: they reach no
//     knock port and no opened port (those rules ended before), so they
//     break off the knock — what stops a port scan that walks the knock
//     ports in order from opening a door;
//  5. per rotating door, a drop of the rest of its range.
func (b *Builder) capture(setID map[string]uint32) []Rule {
	var rules []Rule
	for _, s := range b.steps {
		for _, f := range families {
			rules = append(rules, Rule{
				Exprs:   overRate(MatchStep(s.step, f.v6), f.v6, setID),
				Comment: fmt.Sprintf("knock %s: a source knocking over %d a second is not heard", s.step, knockRate),
			})
		}
		for _, u := range s.uses {
			rules = append(rules, b.knockRules(s.step, u, setID)...)
		}
		for _, f := range familiesOf(s.step) {
			rules = append(rules, Rule{
				Exprs:   concat(MatchStep(s.step, f.v6), counterVerdict(expr.VerdictDrop)),
				Comment: "knock " + s.step.String() + ": filtered, like any closed port",
			})
		}
	}
	for _, d := range b.doors {
		if d.rotating != nil {
			rules = append(rules, b.rotatingRules(d.Name, d.rotating, setID)...)
		}
	}
	for _, d := range b.doors {
		for _, g := range d.datagrams {
			p := g.port
			who := "door " + d.Name
			if len(g.doors) > 1 {
				who = "doors " + strings.Join(g.doors, ", ")
			}
			for _, f := range families {
				rules = append(rules, Rule{
					Exprs:   overRate(MatchPort(p), f.v6, setID),
					Comment: fmt.Sprintf("%s: SPA port %s: a source sending over %d a second is not heard", who, p, knockRate),
				})
			}
			match, what := MatchPort(p), who+": single-packet authorization"
			if g.size != 0 {
				match = MatchPortAndLength(p, udpHeader+g.size)
				what += fmt.Sprintf(" (%d-byte datagrams only)", g.size)
			}
			rules = append(rules, Rule{
				Exprs:   concat(match, g.when, b.log(d.Name)),
				Comment: what,
			}, Rule{
				Exprs:   concat(MatchPort(p), counterVerdict(expr.VerdictDrop)),
				Comment: who + ": SPA port " + p.String() + ": filtered, nothing answers",
			})
		}
	}
	if b.knocks() {
		for _, sf := range []struct {
			v6   bool
			name string
		}{{false, firstV4}, {true, firstV6}, {false, knockingV4}, {true, knockingV6}} {
			rules = append(rules, Rule{
				Exprs: concat([]expr.Any{
					&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
					&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
						Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: make([]byte, 4)},
					&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
				}, MatchSaddrInSet(sf.name, setID[sf.name], sf.v6), []expr.Any{
					&expr.Counter{},
					&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: b.group, Data: logPrefix(ScanPrefix)},
				}),
				Comment: "a knocking source tried another port: its knock is broken off",
			})
		}
	}
	for _, d := range b.doors {
		if r := d.rotating; r != nil {
			rules = append(rules, Rule{
				Exprs:   concat(MatchPort(r.Range), counterVerdict(expr.VerdictDrop)),
				Comment: "door " + d.Name + ": the rest of the rotating range " + r.Range.String() + ": filtered, like the knocks",
			})
		}
	}
	return rules
}

// log is "counter log prefix <door's prefix> group N".
func (b *Builder) log(door string) []expr.Any {
	return []expr.Any{
		&expr.Counter{},
		&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: b.group, Data: logPrefix(b.prefix(door))},
	}
}

// logPrefix is a log expression's prefix, with no spare capacity:
// google/nftables v0.3.0 marshals it as append(Data, 0), which would
// write into spare capacity of the plan's own slice, a data race when two
// goroutines marshal one plan.
func logPrefix(s string) []byte {
	b := []byte(s)
	return b[:len(b):len(b)]
}

// knockRules are a door's rules for one knock step: the kernel matches
// what the door asks of a knock and logs the packet under the door's
// prefix; then it puts the source in the knocking set the door says for
// the door's seq_timeout.
//
// The set update is a rule of its own, after the log rule: when a flood
// of spoofed sources has filled the knocking set, an update fails and
// ends its rule, and that must cost scan detection for new sources, never
// the knock itself. A first knock goes in knock_first, later ones in
// knocking: a flood of spoofed sources on a door's first port can fill
// knock_first (each sends one packet), but not knocking, which only a
// source that got a second step right reaches, so an ordered scan after
// or during such a flood is still broken off after its second step.
func (b *Builder) knockRules(step config.Port, u stepUse, setID map[string]uint32) []Rule {
	var rules []Rule
	for _, f := range familiesOf(step) {
		rules = append(rules, Rule{
			Exprs:   concat(MatchStep(step, f.v6), u.When, b.log(u.door)),
			Comment: "door " + u.door + ": " + u.Label,
		})
	}
	var sets [2]string
	switch u.Watch {
	case WatchFirst:
		sets = [2]string{firstV4, firstV6}
	case WatchNext:
		sets = [2]string{knockingV4, knockingV6}
	default:
		return rules // nothing left to watch for
	}
	for _, f := range families {
		name := pick(f.v6, sets[0], sets[1])
		rules = append(rules, Rule{
			Exprs: concat(MatchStep(step, f.v6), u.When, saddr(f.v6), []expr.Any{&expr.Dynset{
				SrcRegKey: 1, SetName: name, SetID: setID[name], Operation: uint32(unix.NFT_DYNSET_OP_UPDATE), Timeout: u.SeqTimeout,
			}}),
			Comment: fmt.Sprintf("door %s: the source is knocking: its other new connections are watched for %s", u.door, u.SeqTimeout),
		})
	}
	return rules
}

// rotatingRules are a rotating door's knock rules, in the place of the
// per-step rules of a door with a fixed sequence: a per-source rate limit
// over the whole range; a log rule per set; the knocking-set updates (as
// knockRules explains); then a drop of the knocks. The rest of the range is
// dropped after the scan rules, so that a knocking source's connection to
// another port of the range breaks its knock off.
func (b *Builder) rotatingRules(door string, r *RotatingKnocks, setID map[string]uint32) []Rule {
	var rules []Rule
	for _, f := range families {
		rules = append(rules, Rule{
			Exprs:   overRate(MatchPort(r.Range), f.v6, setID),
			Comment: fmt.Sprintf("door %s: a source knocking over %d a second on the rotating range is not heard", door, knockRate),
		})
	}
	proto := r.Range.Proto
	for _, s := range []struct{ set, what string }{
		{FirstSetName(door), "a first knock valid now"},
		{NextSetName(door), "a later knock valid now"},
	} {
		rules = append(rules, Rule{
			Exprs:   concat(matchPortInSet(proto, s.set, setID[s.set]), r.When, b.log(door)),
			Comment: "door " + door + ": " + s.what,
		})
	}
	for _, s := range []struct{ ports, v4, v6 string }{
		{FirstSetName(door), firstV4, firstV6},
		{NextSetName(door), knockingV4, knockingV6},
	} {
		for _, f := range families {
			name := pick(f.v6, s.v4, s.v6)
			rules = append(rules, Rule{
				Exprs: concat(matchPortInSet(proto, s.ports, setID[s.ports]), r.When, saddr(f.v6), []expr.Any{&expr.Dynset{
					SrcRegKey: 1, SetName: name, SetID: setID[name], Operation: uint32(unix.NFT_DYNSET_OP_UPDATE), Timeout: r.SeqTimeout,
				}}),
				Comment: fmt.Sprintf("door %s: the source is knocking: its other new connections are watched for %s", door, r.SeqTimeout),
			})
		}
	}
	for _, set := range []string{FirstSetName(door), NextSetName(door)} {
		rules = append(rules, Rule{
			Exprs:   concat(matchPortInSet(proto, set, setID[set]), counterVerdict(expr.VerdictDrop)),
			Comment: "door " + door + ": knocks valid now: filtered, like any closed port",
		})
	}
	return rules
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

// familiesOf lists the families a step needs rules for: a TCP or UDP
// port match serves both in an inet chain, an ICMP echo match does not.
func familiesOf(p config.Port) []family {
	if p.Proto == config.ICMP {
		return families
	}
	return families[:1]
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

func pick[T any](v6 bool, v4, v6v T) T {
	if v6 {
		return v6v
	}
	return v4
}

// clip shortens s to maxComment bytes, marking the cut.
func clip(s string) string {
	if len(s) <= maxComment {
		return s
	}
	return s[:maxComment-3] + "..."
}
