package nft

// Finding the rules that DNAT a gated port elsewhere. A connection that a
// prerouting rule DNATs to another host (a container, a VM, a machine
// behind a router) is routed: it goes through the forward hook and never
// reaches the input hook, where a door's gate sits. FindDNAT reads the
// whole ruleset — every table of every family, not only nftknock's — and
// names each rule that rewrites the destination of traffic addressed to
// one of a door's ports, so that the daemon can say that the door gates
// nothing there, and why.
//
// Such a rule comes in two forms. nft's own `tcp dport 8443 dnat to
// 172.17.0.2:8080` is a nat expression that takes the address and port
// from registers an immediate filled. iptables-nft (and so Docker) writes
// `-p tcp --dport 8443 -j DNAT --to-destination 172.17.0.2:8080` as a
// native port match followed by an xt target expression named DNAT, whose
// data is the kernel's struct nf_nat_range2 (or nf_nat_ipv4_multi_range_compat
// for revision 0); some iptables matches stay xt matches too (multiport,
// tcp with --tcp-option). Both are read here.
//
// The reading is conservative: a condition it does not understand (an
// interface, an address, a mark, a concatenation) is taken to match, so a
// rule is reported whenever it may DNAT a gated port. A warning too many is
// cheap; a gate that silently gates nothing is what this is for.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/config"
)

// DNAT is a rule that DNATs connections to a gated port.
type DNAT struct {
	Family  string // the table's family: "ip", "ip6" or "inet"
	Table   string
	Chain   string
	Handle  uint64
	Comment string // the rule's comment, if it has one
	// Port is the gated port, one of those given to FindDNAT, that the
	// rule's match covers.
	Port config.Port
	// Match is what the rule matches, as far as it decides which ports it
	// DNATs, in nft's words: "tcp dport 8443", "tcp dport { 8443, 9000-9010 }",
	// "udp dport != 53", "all tcp ports".
	Match string
	// To is where the rule sends what it matches.
	To NATTarget
	// XT is set for an iptables rule (an xt DNAT target, as iptables-nft
	// writes Docker's published ports), clear for nft's own `dnat to`.
	XT bool
}

// Rule names the rule as nft does: `table ip nat chain DOCKER handle 9`
// (`nft -a list chain ip nat DOCKER` shows the handle).
func (d DNAT) Rule() string {
	return fmt.Sprintf("table %s %s chain %s handle %d", d.Family, d.Table, d.Chain, d.Handle)
}

// String describes the rule for a warning: where it is, what it matches
// and where it sends it.
func (d DNAT) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s dnat to %s", d.Rule(), d.Match, d.To)
	if d.XT {
		b.WriteString(" (an iptables DNAT rule)")
	}
	if d.Comment != "" {
		fmt.Fprintf(&b, " comment %q", d.Comment)
	}
	return b.String()
}

// NATTarget is the new destination a DNAT rule gives a connection.
type NATTarget struct {
	// Addr is the address, AddrLast the last of a range (or invalid).
	// Addr is invalid when the rule keeps the address or it comes from a
	// map.
	Addr, AddrLast netip.Addr
	// Port is the port, PortLast the last of a range (or 0). Port 0: the
	// rule keeps the port.
	Port, PortLast uint16
	// Map names the map the destination is looked up in (`dnat to tcp
	// dport map { 8443 : 172.17.0.2 }`), if it is.
	Map string
}

func (t NATTarget) String() string {
	if t.Map != "" {
		return "the destination in map " + t.Map
	}
	var b strings.Builder
	bracket := t.Port != 0 && t.Addr.Is6()
	if bracket {
		b.WriteByte('[')
	}
	if t.Addr.IsValid() {
		b.WriteString(t.Addr.String())
		if t.AddrLast.IsValid() && t.AddrLast != t.Addr {
			b.WriteString("-" + t.AddrLast.String())
		}
	}
	if bracket {
		b.WriteByte(']')
	}
	if t.Port != 0 {
		b.WriteString(":" + strconv.Itoa(int(t.Port)))
		if t.PortLast > t.Port {
			b.WriteString("-" + strconv.Itoa(int(t.PortLast)))
		}
	}
	if b.Len() == 0 {
		return "an address it does not say"
	}
	return b.String()
}

// FindDNAT reads the ruleset over netlink and returns, for each of ports
// (TCP or UDP ports or ranges, as a door opens them), every rule that
// DNATs traffic addressed to it: in the order of the chains the kernel
// lists, one DNAT per rule and port. It reads the rules of nat chains on
// the prerouting hook and of every regular chain (any of them may be
// jumped to from one); nat chains on the output hook rewrite only the
// host's own connections and are left out. opts are passed to
// nftables.New (tests use nftables.WithNetNSFd or WithTestDial).
//
// A chain whose rules cannot be read does not stop the search: what was
// found is returned with an error that names the chains that were not
// read.
func FindDNAT(ports []config.Port, opts ...nftables.ConnOption) ([]DNAT, error) {
	// The rules are read over the connection's own socket, as Intact
	// reads them (getRules: the library alone fails on any rule with
	// `ct original …`, and with it the chain).
	var nl *netlink.Conn
	keep := func(c *netlink.Conn) error { nl = c; return nil }
	c, err := nftables.New(append(slices.Clone(opts), nftables.AsLasting(), nftables.WithSockOptions(keep))...)
	if err != nil {
		return nil, fmt.Errorf("open netlink for the DNAT search: %w", err)
	}
	defer c.CloseLasting()
	chains, err := c.ListChains()
	if err != nil {
		return nil, fmt.Errorf("list chains for the DNAT search: %w", err)
	}
	elements := setReader(c)
	var found []DNAT
	var errs []error
	for _, ch := range chains {
		family, ok := familyName(ch.Table.Family)
		if !ok || !mayDNAT(ch) {
			continue
		}
		rules, err := getRules(nl, ch.Table, ch.Name)
		if err != nil {
			errs = append(errs, fmt.Errorf("list rules of chain %s %s %s: %w", family, ch.Table.Name, ch.Name, err))
			continue
		}
		for _, r := range rules {
			m, ok := readDNATRule(ch.Table, r.Exprs, elements)
			if !ok {
				continue
			}
			match := ""
			for _, p := range ports {
				if !m.covers(p) {
					continue
				}
				if match == "" {
					match = m.describe()
				}
				found = append(found, DNAT{
					Family: family, Table: ch.Table.Name, Chain: ch.Name, Handle: r.Handle,
					Comment: ruleComment(r), Port: p, Match: match, To: m.to, XT: m.xt,
				})
			}
		}
	}
	return found, errors.Join(errs...)
}

// mayDNAT tells whether a chain can hold a DNAT rule for connections that
// arrive: a nat chain on prerouting, or a regular chain, which a nat chain
// may jump to (the kernel refuses nat expressions anywhere else).
func mayDNAT(ch *nftables.Chain) bool {
	if ch.Hooknum == nil {
		return true
	}
	return ch.Type == nftables.ChainTypeNAT && *ch.Hooknum == *nftables.ChainHookPrerouting
}

func familyName(f nftables.TableFamily) (string, bool) {
	switch f {
	case nftables.TableFamilyIPv4:
		return "ip", true
	case nftables.TableFamilyIPv6:
		return "ip6", true
	case nftables.TableFamilyINet:
		return "inet", true
	}
	return "", false // arp, bridge, netdev: no DNAT there
}

func ruleComment(r *nftables.Rule) string { return commentOf(r.UserData) }

// elementReader returns the elements of a set (named or anonymous) of a
// table; ok is false when they cannot be read.
type elementReader func(t *nftables.Table, set string) ([]nftables.SetElement, bool)

// setReader reads set elements over c, once per set.
func setReader(c *nftables.Conn) elementReader {
	type key struct {
		family nftables.TableFamily
		table  string
		set    string
	}
	type result struct {
		elements []nftables.SetElement
		ok       bool
	}
	cache := map[key]result{}
	return func(t *nftables.Table, set string) ([]nftables.SetElement, bool) {
		k := key{t.Family, t.Name, set}
		if r, ok := cache[k]; ok {
			return r.elements, r.ok
		}
		// GetSetElements needs the set's table and name only; GetSets is
		// not used because it fails on a set whose key type the library
		// does not know (firewalld's ct_state sets, for one).
		els, err := c.GetSetElements(&nftables.Set{Table: t, Name: set})
		r := result{els, err == nil}
		cache[k] = r
		return r.elements, r.ok
	}
}

// dnatMatch is what one rule matches, as far as it decides which ports it
// DNATs, and where it DNATs them.
type dnatMatch struct {
	tcp, udp bool    // protocols the rule may match
	ports    portSet // destination ports the rule may match
	portsSet string  // the set a port lookup used, when its elements could not be read
	to       NATTarget
	xt       bool
}

func (m *dnatMatch) covers(p config.Port) bool {
	switch p.Proto {
	case config.TCP:
		if !m.tcp {
			return false
		}
	case config.UDP:
		if !m.udp {
			return false
		}
	default:
		return false
	}
	return m.ports.anyIn(p.Num, p.End())
}

// describe puts the match in nft's words.
func (m *dnatMatch) describe() string {
	proto := "th"
	switch {
	case m.tcp && !m.udp:
		proto = "tcp"
	case m.udp && !m.tcp:
		proto = "udp"
	}
	if m.portsSet != "" {
		return proto + " dport @" + m.portsSet
	}
	if m.ports.full() {
		if proto == "th" {
			return "all ports"
		}
		return "all " + proto + " ports"
	}
	in, out := m.ports.ranges(), m.ports.complement().ranges()
	if len(out) < len(in) {
		return proto + " dport != " + rangesText(out)
	}
	return proto + " dport " + rangesText(in)
}

// Register contents the reading follows. nf_tables has four 16-byte
// registers (1-4) and sixteen 4-byte ones (8-23) over the same memory.
type regKind uint8

const (
	regOther    regKind = iota // loaded from something that does not decide the port
	regL4Proto                 // the transport protocol (meta l4proto, ip protocol, ip6 nexthdr)
	regDport                   // the transport destination port (@th,16,16)
	regData                    // an immediate's data
	regMapValue                // the value a map lookup found
)

type regValue struct {
	kind regKind
	data []byte // regData
	set  string // regMapValue
}

type registers map[uint32]regValue

// regSpan is the part of register memory a write of n bytes into reg
// covers (n 0: the whole register).
func regSpan(reg, n uint32) (int, int, bool) {
	var start, size int
	switch {
	case reg >= unix.NFT_REG_1 && reg <= unix.NFT_REG_4:
		start, size = int(reg-unix.NFT_REG_1)*16, 16
	case reg >= unix.NFT_REG32_00 && reg <= unix.NFT_REG32_15:
		start, size = int(reg-unix.NFT_REG32_00)*4, 4
	default:
		return 0, 0, false
	}
	if n > 0 {
		size = int(min(n, 64))
	}
	return start, start + size, true
}

// set records that reg now holds v, and forgets every register the write
// overlaps.
func (rs registers) set(reg, n uint32, v regValue) {
	start, end, ok := regSpan(reg, n)
	if !ok {
		return
	}
	for r := range rs {
		if s, e, _ := regSpan(r, 0); s < end && start < e {
			delete(rs, r)
		}
	}
	rs[reg] = v
}

// readDNATRule reads a rule's expressions; ok is true when the rule DNATs.
func readDNATRule(t *nftables.Table, exprs []expr.Any, elements elementReader) (dnatMatch, bool) {
	m := dnatMatch{tcp: true, udp: true, ports: fullPortSet()}
	regs := registers{}
	dnat := false
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Meta:
			if e.SourceRegister {
				continue // meta set: reads a register, writes none
			}
			kind := regOther
			if e.Key == expr.MetaKeyL4PROTO {
				kind = regL4Proto
			}
			regs.set(e.Register, 0, regValue{kind: kind})
		case *expr.Payload:
			if e.OperationType != expr.PayloadLoad {
				continue
			}
			regs.set(e.DestRegister, e.Len, regValue{kind: payloadKind(t.Family, e)})
		case *expr.Immediate:
			if e.Register != unix.NFT_REG_VERDICT {
				regs.set(e.Register, uint32(len(e.Data)), regValue{kind: regData, data: e.Data})
			}
		case *expr.Cmp:
			m.cmp(regs[e.Register].kind, e.Op, e.Data)
		case *expr.Range:
			if regs[e.Register].kind == regDport && len(e.FromData) >= 2 && len(e.ToData) >= 2 {
				r := portSetRange(be16(e.FromData), be16(e.ToData))
				switch e.Op {
				case expr.CmpOpEq:
					m.ports = m.ports.and(r)
				case expr.CmpOpNeq:
					m.ports = m.ports.and(r.complement())
				}
			}
		case *expr.Lookup:
			m.lookup(t, regs[e.SourceRegister].kind, e, elements)
			if e.IsDestRegSet {
				regs.set(e.DestRegister, 0, regValue{kind: regMapValue, set: e.SetName})
			}
		case *expr.Match:
			m.xtMatch(e)
		case *expr.NAT:
			if e.Type == expr.NATTypeDestNAT {
				m.to, dnat = natTarget(e, regs), true
			}
		case *expr.Target:
			if e.Name == "DNAT" {
				m.to, m.xt, dnat = xtTarget(e.Info), true, true
			}
		case *expr.Bitwise:
			regs.set(e.DestRegister, e.Len, regValue{kind: regOther})
		case *expr.Ct:
			if !e.SourceRegister {
				regs.set(e.Register, 0, regValue{kind: regOther})
			}
		case *expr.Counter, *expr.Log, *expr.Limit, *expr.Quota, *expr.Verdict,
			*expr.Objref, *expr.Connlimit, *expr.Dynset, *expr.Reject, *expr.Masq,
			*expr.Redir, *expr.Queue, *expr.Notrack, *expr.FlowOffload:
			// These write no register.
		default:
			// An expression that may write a register the reading does not
			// follow: forget them all, so that no later comparison is read
			// as a port match (conservative: the rule matches more).
			clear(regs)
		}
	}
	return m, dnat
}

func payloadKind(f nftables.TableFamily, p *expr.Payload) regKind {
	switch {
	case p.Base == expr.PayloadBaseTransportHeader && p.Offset == 2 && p.Len == 2:
		return regDport
	case p.Base == expr.PayloadBaseNetworkHeader && p.Len == 1 &&
		(f == nftables.TableFamilyIPv4 && p.Offset == 9 || f == nftables.TableFamilyIPv6 && p.Offset == 6):
		return regL4Proto // ip protocol, ip6 nexthdr
	}
	return regOther
}

// cmp narrows the match by a comparison of a register.
func (m *dnatMatch) cmp(kind regKind, op expr.CmpOp, data []byte) {
	switch kind {
	case regL4Proto:
		if len(data) < 1 {
			return
		}
		tcp, udp := data[0] == unix.IPPROTO_TCP, data[0] == unix.IPPROTO_UDP
		switch op {
		case expr.CmpOpEq:
			m.tcp, m.udp = m.tcp && tcp, m.udp && udp
		case expr.CmpOpNeq:
			m.tcp, m.udp = m.tcp && !tcp, m.udp && !udp
		}
	case regDport:
		if len(data) < 2 {
			return
		}
		p := be16(data)
		var r portSet
		switch op {
		case expr.CmpOpEq:
			r = portSetRange(p, p)
		case expr.CmpOpNeq:
			r = portSetRange(p, p).complement()
		case expr.CmpOpLt:
			if p == 0 {
				r = portSet{}
			} else {
				r = portSetRange(0, p-1)
			}
		case expr.CmpOpLte:
			r = portSetRange(0, p)
		case expr.CmpOpGt:
			if p == 65535 {
				r = portSet{}
			} else {
				r = portSetRange(p+1, 65535)
			}
		case expr.CmpOpGte:
			r = portSetRange(p, 65535)
		default:
			return
		}
		m.ports = m.ports.and(r)
	}
}

// lookup narrows the match by a set lookup (`tcp dport { 80, 443 }`,
// `meta l4proto { tcp, udp }`) or a map's keys.
func (m *dnatMatch) lookup(t *nftables.Table, kind regKind, l *expr.Lookup, elements elementReader) {
	if kind != regDport && kind != regL4Proto {
		return
	}
	els, ok := elements(t, l.SetName)
	if !ok {
		if kind == regDport {
			m.portsSet = l.SetName // cannot say which ports: all of them may match
		}
		return
	}
	var in portSet
	if kind == regDport {
		in = setPorts(els)
	} else {
		for _, el := range els {
			if len(el.Key) >= 1 && !el.IntervalEnd {
				in.add(uint16(el.Key[0]), uint16(el.Key[0])) // protocol numbers fit a port set
			}
		}
	}
	if l.Invert {
		in = in.complement()
	}
	if kind == regDport {
		m.ports = m.ports.and(in)
		return
	}
	m.tcp = m.tcp && in.anyIn(unix.IPPROTO_TCP, unix.IPPROTO_TCP)
	m.udp = m.udp && in.anyIn(unix.IPPROTO_UDP, unix.IPPROTO_UDP)
}

// setPorts reads the elements of a port set. An interval set holds each
// range as its first port and, flagged as an interval end, the port after
// its last (none when the range runs to 65535); the kernel lists them in
// any order.
func setPorts(els []nftables.SetElement) portSet {
	type bound struct {
		port uint32
		end  bool
	}
	var bounds []bound
	interval := false
	for _, el := range els {
		if len(el.Key) < 2 {
			continue
		}
		bounds = append(bounds, bound{uint32(be16(el.Key)), el.IntervalEnd})
		interval = interval || el.IntervalEnd
	}
	var s portSet
	if !interval {
		for _, b := range bounds {
			s.add(uint16(b.port), uint16(b.port))
		}
		return s
	}
	slices.SortFunc(bounds, func(a, b bound) int {
		if a.port != b.port {
			return int(a.port) - int(b.port)
		}
		if a.end != b.end { // an end and a start at the same port: the end first
			if a.end {
				return -1
			}
			return 1
		}
		return 0
	})
	open, from := false, uint32(0)
	for _, b := range bounds {
		switch {
		case !b.end && !open:
			open, from = true, b.port
		case b.end && open:
			if b.port > from {
				s.add(uint16(from), uint16(b.port-1))
			}
			open = false
		}
	}
	if open {
		s.add(uint16(from), 65535)
	}
	return s
}

// xtMatch narrows the match by an iptables match that iptables-nft kept
// as an xt expression: tcp and udp (with options nft has no native form
// for) and multiport.
func (m *dnatMatch) xtMatch(e *expr.Match) {
	switch info := e.Info.(type) {
	case *xt.Tcp:
		m.udp = false
		m.ports = m.ports.and(xtPorts(info.DstPorts, info.InvFlags&xt.TcpInvDestPorts != 0))
	case *xt.Udp:
		m.tcp = false
		m.ports = m.ports.and(xtPorts(info.DstPorts, info.InvFlags&xt.UdpInvDestPorts != 0))
	case *xt.Unknown:
		if e.Name == "multiport" {
			if s, ok := multiportDports(e.Rev, *info); ok {
				m.ports = m.ports.and(s)
			}
		}
	}
}

func xtPorts(r [2]uint16, invert bool) portSet {
	s := portSetRange(min(r[0], r[1]), max(r[0], r[1]))
	if invert {
		return s.complement()
	}
	return s
}

// Layout of the kernel's struct xt_multiport (revision 0) and
// xt_multiport_v1 (revision 1), in host byte order as xt data is:
// flags u8, count u8, ports [15]u16; then, in revision 1, pflags [15]u8
// (ports[i] starts a range that ends at ports[i+1]) and invert u8.
const (
	xtMultiPorts         = 15
	xtMultiportSize      = 2 + 2*xtMultiPorts
	xtMultiportV1Size    = xtMultiportSize + xtMultiPorts + 1
	xtMultiportSource    = 0
	xtMultiportDest      = 1
	xtMultiportEitherDir = 2
)

// multiportDports reads the destination ports a multiport match accepts;
// ok is false when it does not decide them (source ports, either
// direction, data it does not recognise).
func multiportDports(rev uint32, data []byte) (portSet, bool) {
	size := xtMultiportSize
	if rev == 1 {
		size = xtMultiportV1Size
	} else if rev != 0 {
		return portSet{}, false
	}
	if len(data) < size || data[0] != xtMultiportDest {
		return portSet{}, false
	}
	count := int(data[1])
	if count > xtMultiPorts {
		return portSet{}, false
	}
	port := func(i int) uint16 { return binary.NativeEndian.Uint16(data[2+2*i:]) }
	var s portSet
	for i := 0; i < count; i++ {
		if rev == 1 && data[xtMultiportSize+i] != 0 && i+1 < count {
			s.add(min(port(i), port(i+1)), max(port(i), port(i+1)))
			i++
			continue
		}
		s.add(port(i), port(i))
	}
	if rev == 1 && data[xtMultiportV1Size-1] != 0 {
		s = s.complement()
	}
	return s, true
}

// natTarget reads where nft's `dnat to` sends a connection, from the
// registers the nat expression names.
func natTarget(e *expr.NAT, regs registers) NATTarget {
	var t NATTarget
	addr := func(reg uint32) (netip.Addr, string) {
		v, ok := regs[reg]
		switch {
		case !ok || reg == 0:
			return netip.Addr{}, ""
		case v.kind == regMapValue:
			return netip.Addr{}, v.set
		case v.kind != regData:
			return netip.Addr{}, ""
		}
		n := 4
		if e.Family == unix.NFPROTO_IPV6 {
			n = 16
		}
		if len(v.data) < n {
			return netip.Addr{}, ""
		}
		a, _ := netip.AddrFromSlice(v.data[:n])
		return a, ""
	}
	port := func(reg uint32) (uint16, string) {
		v, ok := regs[reg]
		switch {
		case !ok || reg == 0:
			return 0, ""
		case v.kind == regMapValue:
			return 0, v.set
		case v.kind != regData || len(v.data) < 2:
			return 0, ""
		}
		return be16(v.data), ""
	}
	var maps [4]string
	t.Addr, maps[0] = addr(e.RegAddrMin)
	t.AddrLast, maps[1] = addr(e.RegAddrMax)
	t.Port, maps[2] = port(e.RegProtoMin)
	t.PortLast, maps[3] = port(e.RegProtoMax)
	for _, m := range maps {
		if m != "" {
			return NATTarget{Map: m}
		}
	}
	return t.normal()
}

// normal drops a range's last address or port when it is the first.
func (t NATTarget) normal() NATTarget {
	if t.AddrLast == t.Addr {
		t.AddrLast = netip.Addr{}
	}
	if t.PortLast <= t.Port {
		t.PortLast = 0
	}
	return t
}

// xtTarget reads where an xt DNAT target sends a connection: the library
// decodes nf_nat_range (revision 1), nf_nat_range2 (2) and
// nf_nat_ipv4_multi_range_compat (0) into these types.
func xtTarget(info xt.InfoAny) NATTarget {
	var flags uint
	var minIP, maxIP net.IP
	var minPort, maxPort uint16
	switch r := info.(type) {
	case *xt.NatRange2:
		flags, minIP, maxIP, minPort, maxPort = r.Flags, r.MinIP, r.MaxIP, r.MinPort, r.MaxPort
	case *xt.NatRange:
		flags, minIP, maxIP, minPort, maxPort = r.Flags, r.MinIP, r.MaxIP, r.MinPort, r.MaxPort
	case *xt.NatIPv4MultiRangeCompat:
		if len(*r) != 1 {
			return NATTarget{}
		}
		x := (*r)[0]
		flags, minIP, maxIP, minPort, maxPort = x.Flags, x.MinIP, x.MaxIP, x.MinPort, x.MaxPort
	default:
		return NATTarget{}
	}
	var t NATTarget
	if flags&uint(xt.NatRangeMapIPs) != 0 {
		t.Addr = ipAddr(minIP)
		t.AddrLast = ipAddr(maxIP)
	}
	if flags&uint(xt.NatRangeProtoSpecified) != 0 {
		t.Port, t.PortLast = minPort, maxPort
	}
	return t.normal()
}

func ipAddr(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}
	}
	return a.Unmap()
}

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }

// portSet is a set of ports, one bit each: small enough (8 KiB) to make
// every narrowing a plain AND.
type portSet [65536 / 64]uint64

func fullPortSet() portSet { return portSetRange(0, 65535) }

func portSetRange(lo, hi uint16) portSet {
	var s portSet
	s.add(lo, hi)
	return s
}

func (s *portSet) add(lo, hi uint16) {
	for p := uint32(lo); p <= uint32(hi); {
		if p%64 == 0 && uint32(hi)-p >= 63 {
			s[p/64] = ^uint64(0)
			p += 64
			continue
		}
		s[p/64] |= 1 << (p % 64)
		p++
	}
}

// next is the first port from from on that is in the set (in true) or
// not (in false); 65536 if there is none.
func (s *portSet) next(from uint32, in bool) uint32 {
	for from < 65536 {
		w := s[from/64]
		if !in {
			w = ^w
		}
		if w &= ^uint64(0) << (from % 64); w != 0 {
			return from/64*64 + uint32(bits.TrailingZeros64(w))
		}
		from = (from/64 + 1) * 64
	}
	return 65536
}

func (s portSet) and(o portSet) portSet {
	for i := range s {
		s[i] &= o[i]
	}
	return s
}

func (s portSet) complement() portSet {
	for i := range s {
		s[i] = ^s[i]
	}
	return s
}

func (s portSet) full() bool { return s.next(0, false) == 65536 }

func (s portSet) anyIn(lo, hi uint16) bool { return s.next(uint32(lo), true) <= uint32(hi) }

// ranges lists the set as runs of consecutive ports.
func (s portSet) ranges() [][2]uint16 {
	var out [][2]uint16
	for p := s.next(0, true); p < 65536; {
		end := s.next(p, false)
		out = append(out, [2]uint16{uint16(p), uint16(end - 1)})
		p = s.next(end, true)
	}
	return out
}

// rangesText writes ranges as nft does: "8443", "5000-5010", "{ 8443, 9000-9010 }".
func rangesText(rs [][2]uint16) string {
	if len(rs) == 0 {
		return "{ }"
	}
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = strconv.Itoa(int(r[0]))
		if r[1] != r[0] {
			parts[i] += "-" + strconv.Itoa(int(r[1]))
		}
	}
	if len(parts) == 1 {
		return parts[0]
	}
	return "{ " + strings.Join(parts, ", ") + " }"
}
