package plan

import (
	"net/netip"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/config"
)

// A target is one thing a door's gate decides about on a hook: the
// connections that rules match with target.match, each of which the gate
// accepts for the door's sources and drops for everyone else.
type target struct {
	kind targetKind
	port config.Port
	// addr, if valid, narrows the target to one destination address (and
	// so to its family).
	addr netip.Addr
}

type targetKind uint8

const (
	// targetPacket: the packet's own destination, "tcp dport 22" (with
	// addr, "ip daddr 192.168.1.10 tcp dport 22"): an input door's opened
	// ports, a forward door's on the input hook, its forward_to hosts.
	targetPacket targetKind = iota
	// targetDNAT: a connection that a prerouting rule DNAT'd, by the port
	// the client connected to: "meta l4proto tcp ct status dnat ct
	// original proto-dst 8443". What Docker publishes and a router
	// forwards, and nothing the host's containers or LAN connect out to.
	targetDNAT
	// targetOriginal: a connection the client addressed to addr and port,
	// DNAT'd or not: "ct original ip daddr 203.0.113.5 meta l4proto tcp
	// ct original proto-dst 8443" (a forward door's `to`).
	targetOriginal
)

// targetsOf lists what door d gates on hook, in config order, each once.
func targetsOf(d Door, hook Hook) []target {
	var ts []target
	add := func(t target) {
		for _, o := range ts {
			if o == t {
				return
			}
		}
		ts = append(ts, t)
	}
	forward := d.Hook == HookForward
	for _, p := range d.Open {
		switch {
		case !forward && hook == HookInput:
			add(target{kind: targetPacket, port: p})
		case forward && hook == HookInput && len(d.To) == 0:
			// The same ports on the input hook: a local proxy
			// (docker-proxy for IPv6) serves them there.
			add(target{kind: targetPacket, port: p})
		case forward && hook == HookInput:
			for _, a := range d.To {
				add(target{kind: targetPacket, port: p, addr: a})
			}
		case forward && len(d.To) == 0:
			add(target{kind: targetDNAT, port: p})
		case forward:
			for _, a := range d.To {
				add(target{kind: targetOriginal, port: p, addr: a})
			}
		}
	}
	if forward && hook == HookForward {
		for _, dst := range d.ForwardTo {
			add(target{kind: targetPacket, port: dst.Port, addr: dst.Addr})
		}
	}
	return ts
}

// families are the address families the target's connections may be of.
func (t target) families() []family {
	switch {
	case !t.addr.IsValid():
		return families
	case t.addr.Is6():
		return families[1:]
	}
	return families[:1]
}

// match is the target's match, as nft writes it (and so lists it back).
func (t target) match() []expr.Any {
	switch t.kind {
	case targetDNAT:
		return concat(l4proto(t.port.Proto), ctDNAT(), ctOriginalPort(t.port))
	case targetOriginal:
		return concat(CtOriginalDaddr(t.addr), l4proto(t.port.Proto), ctOriginalPort(t.port))
	}
	if !t.addr.IsValid() {
		return MatchPort(t.port)
	}
	return concat(matchDaddr(t.addr), MatchPort(t.port))
}

// saddr loads the source address after the target's match: nft pins the
// network protocol first, but not again after an "ip daddr" has.
func (t target) saddr(v6 bool) []expr.Any {
	s := saddr(v6)
	if t.kind == targetPacket && t.addr.IsValid() {
		return s[2:]
	}
	return s
}

// l4proto is "meta l4proto tcp".
func l4proto(p config.Proto) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(p)}},
	}
}

// ctDNAT is "ct status dnat": conntrack status bits are in host byte
// order; IPS_DST_NAT is bit 5.
func ctDNAT() []expr.Any {
	const ipsDstNAT = 1 << 5
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATUS, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// ctOriginalPort is "ct original proto-dst 8443" (or a range): the port
// the client connected to, whatever a DNAT made of it.
func ctOriginalPort(p config.Port) []expr.Any {
	m := []expr.Any{&expr.Ct{Key: expr.CtKeyPROTODST, Register: 1, Direction: 0}}
	if p.Last > p.Num {
		return append(m,
			&expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: binaryutil.BigEndian.PutUint16(p.Num)},
			&expr.Cmp{Op: expr.CmpOpLte, Register: 1, Data: binaryutil.BigEndian.PutUint16(p.Last)})
	}
	return append(m, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(p.Num)})
}

// Conntrack keys that google/nftables v0.3.0 names no constant for, and
// sends without their direction: package nft marshals them itself (see
// nft.marshalExpr).
const (
	CtKeyDSTIP  expr.CtKey = unix.NFT_CT_DST_IP
	CtKeyDSTIP6 expr.CtKey = unix.NFT_CT_DST_IP6
)

// CtOriginalDaddr is "ct original ip daddr 203.0.113.5" (ip6 for an IPv6
// address): the address the client connected to. nft loads it with the
// family's own key, which needs no "meta nfproto" before it (a connection
// of the other family does not match).
func CtOriginalDaddr(a netip.Addr) []expr.Any {
	key := CtKeyDSTIP
	if a.Is6() {
		key = CtKeyDSTIP6
	}
	return []expr.Any{
		&expr.Ct{Key: key, Register: 1, Direction: 0},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()},
	}
}

// matchDaddr is "ip daddr 192.168.1.10" / "ip6 daddr 2001:db8::10".
func matchDaddr(a netip.Addr) []expr.Any {
	proto, off := byte(unix.NFPROTO_IPV4), uint32(16)
	if a.Is6() {
		proto, off = unix.NFPROTO_IPV6, 24
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(len(a.AsSlice()))},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()},
	}
}

// MarshalExpr is e's netlink form (an NFTA_LIST_ELEM's content, as
// expr.Marshal gives it), with the conntrack keys that google/nftables
// v0.3.0 marshals without their direction (CtKeyDSTIP, CtKeyDSTIP6: the
// kernel refuses them so) marshalled here, as nft does.
func MarshalExpr(fam byte, e expr.Any) ([]byte, error) {
	ct, ok := e.(*expr.Ct)
	if !ok || (ct.Key != CtKeyDSTIP && ct.Key != CtKeyDSTIP6) || ct.SourceRegister {
		return expr.Marshal(fam, e)
	}
	data, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_CT_KEY, Data: binaryutil.BigEndian.PutUint32(uint32(ct.Key))},
		{Type: unix.NFTA_CT_DREG, Data: binaryutil.BigEndian.PutUint32(ct.Register)},
		{Type: unix.NFTA_CT_DIRECTION, Data: []byte{byte(ct.Direction)}},
	})
	if err != nil {
		return nil, err
	}
	return netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_EXPR_NAME, Data: []byte("ct\x00")},
		{Type: unix.NLA_F_NESTED | unix.NFTA_EXPR_DATA, Data: data},
	})
}
