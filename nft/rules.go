package nft

import (
	"fmt"
	"strings"

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

// ruleSpec is one rule of the chain before it is tied to a table.
type ruleSpec struct {
	exprs   []expr.Any
	comment string
}

// setSpec is one door set.
type setSpec struct {
	name string
	door string
	v6   bool
	// id names the set within a batch. The kernel resolves a lookup by set
	// name first and only falls back to the ID, but nft sends both, and an
	// explicit, deterministic ID keeps golden files stable (v0.3.0 would
	// otherwise draw one from a process-wide counter).
	id      uint32
	comment string
}

// SetName is the name of the kernel set that holds the sources a door lets
// in: "<door>_v4" or "<door>_v6".
func SetName(door string, v6 bool) string {
	if v6 {
		return door + "_v6"
	}
	return door + "_v4"
}

// planSets lists the two sets of each door, in config order.
func planSets(cfg *config.Config) []setSpec {
	sets := make([]setSpec, 0, 2*len(cfg.Doors))
	for _, d := range cfg.Doors {
		for _, v6 := range []bool{false, true} {
			family := "IPv4"
			if v6 {
				family = "IPv6"
			}
			sets = append(sets, setSpec{
				name:    SetName(d.Name, v6),
				door:    d.Name,
				v6:      v6,
				id:      uint32(len(sets) + 1),
				comment: clip("door " + d.Name + ": " + family + " sources let in by a knock"),
			})
		}
	}
	return sets
}

// planRules lists the rules of the chain, in order:
//
//  1. loopback accept;
//  2. per distinct opened port, accept connections conntrack already knows,
//     so a session outlives the grant that let it in;
//  3. per door and opened port, accept sources in the door's v4 and v6 sets;
//  4. per distinct opened port, drop everything else;
//  5. per distinct knock port, log the packet to the daemon over NFLOG and
//     drop it. Dropping (not rejecting) makes a knock port look filtered,
//     like any other firewalled port, rather than closed.
//
// Ports keep the order in which the config first names them, so the same
// config always gives the same ruleset.
func planRules(cfg *config.Config, sets []setSpec) []ruleSpec {
	setID := make(map[string]uint32, len(sets))
	for _, s := range sets {
		setID[s.name] = s.id
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
			if !contains(openers[p], d.Name) {
				openers[p] = append(openers[p], d.Name)
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
		seen := map[config.Port]bool{}
		for _, p := range d.Open {
			if seen[p] {
				continue
			}
			seen[p] = true
			for _, v6 := range []bool{false, true} {
				set := SetName(d.Name, v6)
				rules = append(rules, ruleSpec{
					exprs:   concat(matchPort(p), matchSaddrInSet(set, setID[set], v6), counterVerdict(expr.VerdictAccept)),
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
		rules = append(rules, ruleSpec{
			exprs: concat(matchPort(k.port), []expr.Any{
				&expr.Counter{},
				// Only the group is sent, as nft does: the kernel then
				// uses its defaults for snaplen and queue threshold.
				&expr.Log{Key: 1 << unix.NFTA_LOG_GROUP, Group: cfg.NFLOGGroup},
				&expr.Verdict{Kind: expr.VerdictDrop},
			}),
			comment: k.comment,
		})
	}

	for i := range rules {
		rules[i].comment = clip(rules[i].comment)
	}
	return rules
}

type knock struct {
	port    config.Port
	comment string
}

// planKnocks lists the distinct knock ports, each with a comment naming every
// door and step that uses it: "door ssh: knock 1 of 3; door vpn: knock 2 of 2".
func planKnocks(cfg *config.Config) []knock {
	type use struct {
		door  string
		steps []int
		of    int
	}
	var ports []config.Port
	uses := map[config.Port][]use{}
	for _, d := range cfg.Doors {
		for i, p := range d.Sequence {
			us, ok := uses[p]
			if !ok {
				ports = append(ports, p)
			}
			if n := len(us); n > 0 && us[n-1].door == d.Name {
				us[n-1].steps = append(us[n-1].steps, i+1)
			} else {
				us = append(us, use{door: d.Name, steps: []int{i + 1}, of: len(d.Sequence)})
			}
			uses[p] = us
		}
	}
	knocks := make([]knock, 0, len(ports))
	for _, p := range ports {
		parts := make([]string, 0, len(uses[p]))
		for _, u := range uses[p] {
			noun := "knock"
			if len(u.steps) > 1 {
				noun = "knocks"
			}
			parts = append(parts, fmt.Sprintf("door %s: %s %s of %d", u.door, noun, joinSteps(u.steps), u.of))
		}
		knocks = append(knocks, knock{port: p, comment: strings.Join(parts, "; ")})
	}
	return knocks
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

// The expression builders below emit exactly the bytecode nft emits for the
// same rule text (compare `nft --debug=netlink`), so that `nft list ruleset`
// can fold it back into "tcp dport 22 ip saddr @ssh_v4" instead of raw
// "meta l4proto 6 @th,16,16 ..." forms.

// matchPort is "tcp dport 22" / "udp dport 53":
// [ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x06 ]
// [ payload load 2b @ transport header + 2 => reg 1 ] [ cmp eq reg 1 port ].
func matchPort(p config.Port) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(p.Proto)}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(p.Num)},
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

// matchSaddrInSet is "ip saddr @set" / "ip6 saddr @set". In an inet chain
// nft first pins the network protocol (meta nfproto), then loads the source
// address (offset 12 in IPv4, 8 in IPv6) and looks it up.
func matchSaddrInSet(set string, id uint32, v6 bool) []expr.Any {
	proto, off, size := byte(unix.NFPROTO_IPV4), uint32(12), uint32(4)
	if v6 {
		proto, off, size = unix.NFPROTO_IPV6, 8, 16
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: size},
		&expr.Lookup{SourceRegister: 1, SetName: set, SetID: id},
	}
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

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// clip shortens s to maxComment bytes, marking the cut.
func clip(s string) string {
	if len(s) <= maxComment {
		return s
	}
	return s[:maxComment-3] + "..."
}
