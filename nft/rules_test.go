package nft

import (
	"bytes"
	"slices"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/nft/plan"
)

// forwardRuleAttrs is the attributes of a NEWRULE message with `ct
// original` expressions, as ruleMessage builds it (the kernel dumps the
// same attributes, with 1-byte directions).
func forwardRuleAttrs(t testing.TB) []byte {
	f := &Firewall{table: &nftables.Table{Name: "nftknock", Family: nftables.TableFamilyINet}, name: "nftknock"}
	p := forwardPlan("nftknock")
	r := p.Chains[1].Rules[slices.IndexFunc(p.Chains[1].Rules, func(r plan.Rule) bool { return r.Comment == "door lan: sources that knocked" })]
	m, err := f.ruleMessage("forward", r, userdata.AppendString(nil, userdata.TypeComment, r.Comment))
	if err != nil {
		t.Fatal(err)
	}
	return m.Data[4:]
}

// TestWidenCtDirection: the 1-byte directions of ct expressions become 4
// bytes; nothing else changes.
func TestWidenCtDirection(t *testing.T) {
	// The rule "ct original ip daddr 203.0.113.5 meta l4proto tcp ct
	// original proto-dst 2222 ip saddr @lan_v4 ...": its dst_ip direction
	// is 1 byte, as the kernel dumps it; the library's proto_dst one is 4.
	attrs := forwardRuleAttrs(t)
	if got := ctDirections(t, attrs); !slices.Equal(got, []int{1, 4}) {
		t.Fatalf("directions before: %v, want [1 4]", got)
	}
	if got := ctDirections(t, widenCtDirection(attrs)); !slices.Equal(got, []int{4, 4}) {
		t.Errorf("directions after: %v, want [4 4]", got)
	}
	// Without ct expressions the stream is rebuilt byte for byte.
	plain := plan.MatchPort(tcp(22))
	f := &Firewall{table: &nftables.Table{Name: "t", Family: nftables.TableFamilyINet}}
	m, err := f.ruleMessage("input", plan.Rule{Exprs: append(plain, &expr.Verdict{Kind: expr.VerdictAccept})}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := widenCtDirection(m.Data[4:]); !bytes.Equal(got, m.Data[4:]) {
		t.Errorf("a rule without ct changed:\n%x\n%x", m.Data[4:], got)
	}
}

// ctDirections lists the length of each ct expression's NFTA_CT_DIRECTION
// in a rule's attributes.
func ctDirections(t *testing.T, attrs []byte) []int {
	t.Helper()
	var lens []int
	rule, err := netlink.UnmarshalAttributes(attrs)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range rule {
		if a.Type&nlaTypeMask != unix.NFTA_RULE_EXPRESSIONS {
			continue
		}
		elems, err := netlink.UnmarshalAttributes(a.Data)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range elems {
			parts, err := netlink.UnmarshalAttributes(e.Data)
			if err != nil {
				t.Fatal(err)
			}
			if len(parts) != 2 || string(parts[0].Data) != "ct\x00" {
				continue
			}
			data, err := netlink.UnmarshalAttributes(parts[1].Data)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range data {
				if d.Type == unix.NFTA_CT_DIRECTION {
					lens = append(lens, len(d.Data))
				}
			}
		}
	}
	return lens
}

// FuzzWidenCtDirection: whatever the bytes, no panic, and attributes that
// hold no ct direction come back as they were.
func FuzzWidenCtDirection(f *testing.F) {
	f.Add(forwardRuleAttrs(f))
	f.Fuzz(func(t *testing.T, b []byte) {
		widenCtDirection(b)
		mapAttrs(b, func(_ uint16, d []byte) []byte { return d })
	})
}
