package nft

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/nft/plan"
)

// Rules go to the kernel and come back from it partly past google/nftables
// v0.3.0, which gets conntrack directions wrong both ways: it sends no
// NFTA_CT_DIRECTION for the family-specific address keys (`ct original ip
// daddr` as nft writes it: the kernel refuses the rule), and it reads the
// attribute as 4 bytes where the kernel dumps 1 (every rule with `ct
// original …` then fails to parse, and with it the whole chain). So rule
// messages are built here, each expression marshalled by
// plan.MarshalExpr, and rules are read through a connection that widens
// the attribute before the library parses it.

// ruleMessage is the NEWRULE message that appends r to chain, as the
// library's AddRule builds it but for the expressions' marshalling.
func (f *Firewall) ruleMessage(chain string, r plan.Rule, comment []byte) (netlink.Message, error) {
	fam := byte(f.table.Family)
	list := make([]netlink.Attribute, len(r.Exprs))
	for i, e := range r.Exprs {
		data, err := plan.MarshalExpr(fam, f.kernelExpr(e))
		if err != nil {
			return netlink.Message{}, fmt.Errorf("marshal %T of rule %q: %w", e, r.Comment, err)
		}
		list[i] = netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: data}
	}
	exprs, err := netlink.MarshalAttributes(list)
	if err != nil {
		return netlink.Message{}, err
	}
	attrs := []netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: []byte(f.table.Name + "\x00")},
		{Type: unix.NFTA_RULE_CHAIN, Data: []byte(chain + "\x00")},
		{Type: unix.NLA_F_NESTED | unix.NFTA_RULE_EXPRESSIONS, Data: exprs},
	}
	if comment != nil {
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_RULE_USERDATA, Data: comment})
	}
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return netlink.Message{}, err
	}
	return netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWRULE),
			Flags: netlink.Request | netlink.Acknowledge | netlink.Create | unix.NLM_F_APPEND,
		},
		Data: append([]byte{fam, unix.NFNETLINK_V0, 0, 0}, data...),
	}, nil
}

// kernelExpr is e as the kernel holds it: set references carry the
// kernel's name of the set (attach mode prefixes them).
func (f *Firewall) kernelExpr(e expr.Any) expr.Any {
	if f.prefix == "" {
		return e
	}
	switch x := e.(type) {
	case *expr.Lookup:
		c := *x
		c.SetName = f.prefix + c.SetName
		return &c
	case *expr.Dynset:
		c := *x
		c.SetName = f.prefix + c.SetName
		return &c
	}
	return e
}

// getRules reads the rules of chain in table t over nl, parsed by the
// library after widenCtDirection.
func getRules(nl *netlink.Conn, t *nftables.Table, chain string) ([]*nftables.Rule, error) {
	if nl == nil {
		return nil, errors.New("no netlink socket")
	}
	c, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		if len(req) != 1 {
			return nil, fmt.Errorf("rule reader: %d messages asked for", len(req))
		}
		q := req[0]
		// The socket numbers it anew; the kernel acks no dump.
		q.Header.Sequence, q.Header.PID = 0, 0
		replies, err := nl.Execute(q)
		if err != nil {
			return nil, err
		}
		out := make([]netlink.Message, 0, len(replies)+1)
		for _, m := range replies {
			if m.Header.Type == netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWRULE) && len(m.Data) >= 4 {
				m.Data = append(m.Data[:4:4], widenCtDirection(m.Data[4:])...)
			}
			out = append(out, m)
		}
		out = append(out, netlink.Message{Header: netlink.Header{Type: netlink.Done}, Data: make([]byte, 4)})
		for i := range out {
			out[i].Header.Sequence, out[i].Header.PID = req[0].Header.Sequence, nltest.PID
			out[i].Header.Flags |= netlink.Multi
		}
		return out, nil
	}))
	if err != nil {
		return nil, err
	}
	return c.GetRules(t, &nftables.Chain{Name: chain, Table: t})
}

// widenCtDirection rewrites a rule's attributes so that every ct
// expression's NFTA_CT_DIRECTION is the 4-byte big-endian value the
// library reads (the kernel dumps one byte).
func widenCtDirection(attrs []byte) []byte {
	return mapAttrs(attrs, func(typ uint16, data []byte) []byte {
		if typ&nlaTypeMask != unix.NFTA_RULE_EXPRESSIONS {
			return data
		}
		return mapAttrs(data, func(_ uint16, elem []byte) []byte {
			name := ""
			mapAttrs(elem, func(typ uint16, data []byte) []byte {
				if typ&nlaTypeMask == unix.NFTA_EXPR_NAME {
					name = string(trimNUL(data))
				}
				return data
			})
			if name != "ct" {
				return elem
			}
			return mapAttrs(elem, func(typ uint16, data []byte) []byte {
				if typ&nlaTypeMask != unix.NFTA_EXPR_DATA {
					return data
				}
				return mapAttrs(data, func(typ uint16, v []byte) []byte {
					if typ&nlaTypeMask == unix.NFTA_CT_DIRECTION && len(v) == 1 {
						return binaryutil.BigEndian.PutUint32(uint32(v[0]))
					}
					return v
				})
			})
		})
	})
}

// mapAttrs rebuilds a netlink attribute stream with each attribute's
// payload replaced by fn's result, keeping types and flags. What does not
// parse is left as it is.
func mapAttrs(b []byte, fn func(typ uint16, data []byte) []byte) []byte {
	var out []byte
	for len(b) >= 4 {
		n := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4])
		if n < 4 || n > len(b) {
			return append(out, b...)
		}
		data := fn(typ, b[4:n])
		var hdr [4]byte
		binary.NativeEndian.PutUint16(hdr[0:2], uint16(4+len(data)))
		binary.NativeEndian.PutUint16(hdr[2:4], typ)
		out = append(out, hdr[:]...)
		out = append(out, data...)
		for len(out)%4 != 0 {
			out = append(out, 0)
		}
		adv := (n + 3) &^ 3
		if adv > len(b) {
			adv = len(b)
		}
		b = b[adv:]
	}
	return append(out, b...)
}

func trimNUL(b []byte) []byte {
	for len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return b
}

// nlaTypeMask clears an attribute type's nested and byte-order flags.
const nlaTypeMask = ^uint16(unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
