package nft

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/config"
)

// FindDNAT on rulesets recorded from the kernel (see dnat_kernel_test.go),
// replayed through the library without root.

func findDNATReplayed(t *testing.T, path string, ports []config.Port) []DNAT {
	t.Helper()
	capt := readCapture(t, path)
	found, err := FindDNAT(ports, nftables.WithTestDial(capt.replayer()))
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// TestFindDNATInDockerRuleset: Docker's rules for -p 8443:8080 and -p
// 5353:8080/udp, as dockerd 20.10 wrote them through iptables-nft (an xt
// DNAT target after a native port match), name the container's address
// and port; the container's own port and an untouched one are not
// reported.
func TestFindDNATInDockerRuleset(t *testing.T) {
	found := findDNATReplayed(t, "testdata/dnat_docker.netlink", dockerDNATPorts)
	checkDNAT(t, found, wantDockerDNAT("172.17.0.2"))
	for _, d := range found {
		if !d.XT || d.Family != "ip" || d.Table != "nat" || d.Chain != "DOCKER" || d.Handle == 0 {
			t.Errorf("%+v: want an xt rule of table ip nat, chain DOCKER, with a handle", d)
		}
		if want := netip.MustParseAddr("172.17.0.2"); d.To.Addr != want || d.To.Port != 8080 {
			t.Errorf("%s: To = %+v, want %s port 8080", d, d.To, want)
		}
	}
}

// TestFindDNATInNativeRuleset: nft's own forms (a port, a range, an
// anonymous and a named interval set, !=, no port at all, a map, a regular
// chain, inet tables with `dnat ip`/`dnat ip6`) and iptables-nft's
// (multiport, tcp with --tcp-option, a port range, ! multiport, IPv6), but
// not nat chains on output, redirects, or filter rules.
func TestFindDNATInNativeRuleset(t *testing.T) {
	checkDNAT(t, findDNATReplayed(t, "testdata/dnat_native.netlink", nativeDNATPorts), wantNativeDNAT)
}

// TestFindDNATNothingAsked: no ports, no findings (and no error).
func TestFindDNATNothingAsked(t *testing.T) {
	if found := findDNATReplayed(t, "testdata/dnat_docker.netlink", nil); len(found) != 0 {
		t.Errorf("found %v for no ports", found)
	}
}

func TestMultiportDports(t *testing.T) {
	v1 := func(flags byte, invert bool, ports []uint16, pflags ...int) []byte {
		b := make([]byte, xtMultiportV1Size)
		b[0], b[1] = flags, byte(len(ports))
		for i, p := range ports {
			binary.NativeEndian.PutUint16(b[2+2*i:], p)
		}
		for _, i := range pflags {
			b[xtMultiportSize+i] = 1
		}
		if invert {
			b[xtMultiportV1Size-1] = 1
		}
		return b
	}
	for _, tc := range []struct {
		name string
		rev  uint32
		data []byte
		ok   bool
		want string // the ports, in rangesText's words
	}{
		{"ports and a range", 1, v1(xtMultiportDest, false, []uint16{8443, 9000, 9010}, 1), true, "{ 8443, 9000-9010 }"},
		{"inverted", 1, v1(xtMultiportDest, true, []uint16{53, 67}), true, "{ 0-52, 54-66, 68-65535 }"},
		{"source ports decide no destination port", 1, v1(xtMultiportSource, false, []uint16{22}), false, ""},
		{"either direction", 1, v1(xtMultiportEitherDir, false, []uint16{22}), false, ""},
		{"revision 0", 0, v1(xtMultiportDest, false, []uint16{80, 443})[:xtMultiportSize], true, "{ 80, 443 }"},
		{"a range flag on the last port", 1, v1(xtMultiportDest, false, []uint16{80}, 0), true, "80"},
		{"too short", 1, v1(xtMultiportDest, false, []uint16{80})[:20], false, ""},
		{"count over 15", 1, append([]byte{xtMultiportDest, 16}, make([]byte, 46)...), false, ""},
		{"unknown revision", 2, v1(xtMultiportDest, false, []uint16{80}), false, ""},
	} {
		s, ok := multiportDports(tc.rev, tc.data)
		if ok != tc.ok || ok && rangesText(s.ranges()) != tc.want {
			t.Errorf("%s: got %q, %v; want %q, %v", tc.name, rangesText(s.ranges()), ok, tc.want, tc.ok)
		}
	}
}

func TestSetPorts(t *testing.T) {
	key := func(p uint16) []byte { return binary.BigEndian.AppendUint16(nil, p) }
	for _, tc := range []struct {
		name string
		els  []nftables.SetElement
		want string
	}{
		{"plain set", []nftables.SetElement{{Key: key(443)}, {Key: key(80)}}, "{ 80, 443 }"},
		// As the kernel lists `{ 2222, 3000-3010 }`: each range's start,
		// and the port after its end flagged, last first.
		{"interval set", []nftables.SetElement{
			{Key: key(3011), IntervalEnd: true}, {Key: key(3000)},
			{Key: key(2223), IntervalEnd: true}, {Key: key(2222)},
			{Key: key(0), IntervalEnd: true},
		}, "{ 2222, 3000-3010 }"},
		{"a range up to 65535 has no end", []nftables.SetElement{{Key: key(60000)}, {Key: key(0), IntervalEnd: true}}, "60000-65535"},
		{"short keys are skipped", []nftables.SetElement{{Key: []byte{1}}, {Key: key(22)}}, "22"},
	} {
		if got := rangesText(setPorts(tc.els).ranges()); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestNATTargetString(t *testing.T) {
	a := netip.MustParseAddr
	for _, tc := range []struct {
		to   NATTarget
		want string
	}{
		{NATTarget{Addr: a("172.17.0.2"), Port: 8080}, "172.17.0.2:8080"},
		{NATTarget{Addr: a("10.0.0.1"), AddrLast: a("10.0.0.9"), Port: 80, PortLast: 89}, "10.0.0.1-10.0.0.9:80-89"},
		{NATTarget{Addr: a("2001:db8::9"), Port: 8080}, "[2001:db8::9]:8080"},
		{NATTarget{Addr: a("2001:db8::9")}, "2001:db8::9"},
		{NATTarget{Port: 8080}, ":8080"},
		{NATTarget{Map: "panels"}, "the destination in map panels"},
		{NATTarget{}, "an address it does not say"},
	} {
		if got := tc.to.String(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.to, got, tc.want)
		}
	}
}

func TestRuleComment(t *testing.T) {
	for _, tc := range []struct {
		ud   []byte
		want string
	}{
		{[]byte{0, 6, 'p', 'a', 'n', 'e', 'l', 0}, "panel"},
		{[]byte{1, 1, 9, 0, 3, 'a', 'b', 0}, "ab"}, // after another TLV
		{[]byte{0, 200, 'x'}, ""},                  // a length past the end
		{[]byte{0}, ""},
		{nil, ""},
	} {
		if got := ruleComment(&nftables.Rule{UserData: tc.ud}); got != tc.want {
			t.Errorf("%v: %q, want %q", tc.ud, got, tc.want)
		}
	}
}

// TestReadDNATRuleRegisters: the reading follows what each register holds,
// so that a comparison is read as a port match only when the register
// holds the destination port.
func TestReadDNATRuleRegisters(t *testing.T) {
	ip := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: "nat"}
	noSets := func(*nftables.Table, string) ([]nftables.SetElement, bool) { return nil, false }
	l4 := &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}
	tcpProto := &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}}
	dport := &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
	is := func(p uint16) *expr.Cmp {
		return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, p)}
	}
	dnat := &expr.Target{Name: "DNAT", Rev: 2, Info: &xt.NatRange2{NatRange: xt.NatRange{
		Flags: uint(xt.NatRangeMapIPs | xt.NatRangeProtoSpecified), MinIP: []byte{10, 0, 0, 1}, MaxIP: []byte{10, 0, 0, 1}, MinPort: 80, MaxPort: 80}}}
	for _, tc := range []struct {
		name  string
		exprs []expr.Any
		ok    bool
		match string
		to    string
	}{
		{"docker's form", []expr.Any{l4, tcpProto, dport, is(8443), &expr.Counter{}, dnat}, true, "tcp dport 8443", "10.0.0.1:80"},
		{"no DNAT", []expr.Any{l4, tcpProto, dport, is(8443), &expr.Verdict{Kind: expr.VerdictAccept}}, false, "", ""},
		// The register is loaded again with the source port: 8443 is
		// then no destination port.
		{"reloaded register", []expr.Any{dport, &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2}, is(8443), dnat},
			true, "all ports", "10.0.0.1:80"},
		// A 4-byte register over the same memory as register 1.
		{"overlapping register", []expr.Any{dport, &expr.Meta{Key: expr.MetaKeyMARK, Register: unix.NFT_REG32_00}, is(8443), dnat},
			true, "all ports", "10.0.0.1:80"},
		{"an expression it does not follow", []expr.Any{dport, &expr.Hash{DestRegister: 1}, is(8443), dnat}, true, "all ports", "10.0.0.1:80"},
		{"short data", []expr.Any{l4, &expr.Cmp{Register: 1}, dport, &expr.Cmp{Register: 1, Data: []byte{1}}, &expr.Range{Register: 1}, dnat},
			true, "all ports", "10.0.0.1:80"},
		{"nat from registers", []expr.Any{l4, tcpProto, dport, &expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: []byte{0, 80}, ToData: []byte{0, 90}},
			&expr.Immediate{Register: 1, Data: []byte{192, 0, 2, 9}}, &expr.Immediate{Register: 2, Data: []byte{0x1f, 0x90}},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2}},
			true, "tcp dport 80-90", "192.0.2.9:8080"},
		{"nat from a register never loaded", []expr.Any{&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV6, RegAddrMin: 3}},
			true, "all ports", "an address it does not say"},
		{"snat is not dnat", []expr.Any{&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4}}, false, "", ""},
		{"xt DNAT it cannot decode", []expr.Any{&expr.Target{Name: "DNAT", Info: &xt.Unknown{1, 2}}}, true, "all ports", "an address it does not say"},
		{"lt and gte", []expr.Any{dport, &expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: []byte{0, 10}}, &expr.Cmp{Op: expr.CmpOpLt, Register: 1, Data: []byte{0, 20}}, dnat},
			true, "th dport 10-19", "10.0.0.1:80"},
		{"impossible", []expr.Any{dport, &expr.Cmp{Op: expr.CmpOpGt, Register: 1, Data: []byte{0xff, 0xff}}, dnat}, true, "th dport { }", "10.0.0.1:80"},
	} {
		m, ok := readDNATRule(ip, tc.exprs, noSets)
		if ok != tc.ok || ok && (m.describe() != tc.match || m.to.String() != tc.to) {
			t.Errorf("%s: %v %q → %q; want %v %q → %q", tc.name, ok, m.describe(), m.to, tc.ok, tc.match, tc.to)
		}
	}
}

// FuzzReadDNATRule builds a rule's expressions from the bytes (a small
// program: an opcode, a register, data) and reads it: whatever registers
// and data hold, reading must neither panic nor loop.
func FuzzReadDNATRule(f *testing.F) {
	f.Add([]byte{0, 1, 6, 1, 1, 2, 2, 1, 0x20, 0xfb, 9})
	f.Add([]byte{3, 1, 0, 80, 0, 90, 4, 1, 10, 0, 0, 1, 8, 1, 2})
	f.Add([]byte{5, 1, 6, 2, 53, 0, 67, 0})
	f.Fuzz(func(t *testing.T, prog []byte) {
		table := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: "f"}
		elements := func(*nftables.Table, string) ([]nftables.SetElement, bool) {
			return []nftables.SetElement{{Key: prog}, {Key: []byte{0, 1}, IntervalEnd: true}}, true
		}
		var exprs []expr.Any
		next := func(n int) []byte {
			n = min(n, len(prog))
			b := prog[:n]
			prog = prog[n:]
			return b
		}
		for len(prog) >= 2 {
			op, reg := next(1)[0], uint32(next(1)[0])
			data := next(int(reg % 8))
			switch op % 10 {
			case 0:
				exprs = append(exprs, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg})
			case 1:
				exprs = append(exprs, &expr.Cmp{Op: expr.CmpOp(reg % 7), Register: reg % 24, Data: data})
			case 2:
				exprs = append(exprs, &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg % 24, Base: expr.PayloadBase(reg % 3), Offset: uint32(len(data)), Len: reg})
			case 3:
				exprs = append(exprs, &expr.Range{Op: expr.CmpOp(reg % 2), Register: reg % 24, FromData: data, ToData: next(2)})
			case 4:
				exprs = append(exprs, &expr.Immediate{Register: reg % 24, Data: data})
			case 5:
				exprs = append(exprs, &expr.Match{Name: "multiport", Rev: reg % 3, Info: (*xt.Unknown)(&data)})
			case 6:
				exprs = append(exprs, &expr.Lookup{SourceRegister: reg % 24, DestRegister: reg % 5, IsDestRegSet: reg%2 == 0, Invert: reg%3 == 0})
			case 7:
				exprs = append(exprs, &expr.Target{Name: "DNAT", Info: &xt.NatRange{Flags: uint(reg), MinIP: data, MaxIP: data, MinPort: uint16(reg), MaxPort: 1}})
			case 8:
				exprs = append(exprs, &expr.NAT{Type: expr.NATTypeDestNAT, Family: reg % 11, RegAddrMin: reg % 24, RegAddrMax: reg % 5, RegProtoMin: reg % 9, RegProtoMax: reg % 24})
			case 9:
				exprs = append(exprs, &expr.Match{Name: "tcp", Info: &xt.Tcp{DstPorts: [2]uint16{uint16(reg) << 8, uint16(len(data))}, InvFlags: xt.TcpInvFlagset(reg)}})
			}
		}
		m, ok := readDNATRule(table, exprs, elements)
		if ok {
			_ = m.describe() + m.to.String()
			m.covers(config.Port{Num: 1, Last: 65535, Proto: config.TCP})
		}
	})
}
