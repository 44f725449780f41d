package plan

import (
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/config"
)

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

// DoorMatch is what a door asks of a knock besides its port: that it came
// in on the door's interface, and for TCP that its flags match tcp_flags.
func DoorMatch(iface string, flags config.TCPFlags, proto config.Proto) []expr.Any {
	var when []expr.Any
	if iface != "" {
		when = append(when, &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(iface)})
	}
	if proto == config.TCP && flags.Mask != 0 {
		when = append(when, matchTCPFlags(flags)...)
	}
	return when
}

// MatchStep matches a knock step: "tcp dport 7000" whatever the family, or
// for ICMP the family's echo request of the step's payload size.
func MatchStep(p config.Port, v6 bool) []expr.Any {
	if p.Proto != config.ICMP {
		return MatchPort(p)
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

// The expression builders below emit exactly the bytecode nft emits for the
// same rule text (compare `nft --debug=netlink`), so that `nft list ruleset`
// can fold it back into "tcp dport 22 ip saddr @ssh_v4" instead of raw
// "meta l4proto 6 @th,16,16 ..." forms.

// MatchPort is "tcp dport 22" / "udp dport 53" / "udp dport 60000-61000":
// [ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x06 ]
// [ payload load 2b @ transport header + 2 => reg 1 ] [ cmp eq reg 1 port ]
// (a range: [ cmp gte reg 1 first ] [ cmp lte reg 1 last ]).
func MatchPort(p config.Port) []expr.Any {
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

// udpHeader is the size of a UDP header, which the UDP length counts.
const udpHeader = 8

// MatchPortAndLength is "udp dport 62203 udp length 699": the port and the
// UDP length (header and payload), loaded together as nft loads two
// adjacent fields: [ payload load 4b @ transport header + 2 => reg 1 ]
// [ cmp eq reg 1 port length ]. p is a single port.
func MatchPortAndLength(p config.Port, length uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(p.Proto)}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint32(uint32(p.Num)<<16 | uint32(length))},
	}
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

// MatchSaddrInSet is "ip saddr @set" / "ip6 saddr @set".
func MatchSaddrInSet(set string, id uint32, v6 bool) []expr.Any {
	return append(saddr(v6), &expr.Lookup{SourceRegister: 1, SetName: set, SetID: id})
}

// MatchSaddrPortInSet is "ip saddr . meta l4proto . th dport @set" /
// "ip6 saddr . meta l4proto . th dport @set": a per-port grant set's
// lookup. nft puts each field of the concatenation in the 32-bit
// registers after the one before (NFT_REG32_00 is 8): for IPv4 the address
// in reg 1 (= 8), the protocol in 9, the port in 10; for IPv6 the address
// fills reg 1 (8-11), the protocol goes to reg 2 (= 12), the port to 13.
func MatchSaddrPortInSet(set string, id uint32, v6 bool) []expr.Any {
	protoReg, portReg := uint32(9), uint32(10)
	if v6 {
		protoReg, portReg = 2, 13
	}
	return append(saddr(v6),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: protoReg},
		&expr.Payload{DestRegister: portReg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: set, SetID: id})
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

// matchPortInSet is "tcp dport @set".
func matchPortInSet(proto config.Proto, set string, id uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(proto)}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: set, SetID: id},
	}
}
