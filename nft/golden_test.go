package nft

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/nft/plan"
)

var update = flag.Bool("update", false, "rewrite nft/testdata/*.golden from the current code")

// fakeKernel stands in for nf_tables behind nftables.WithTestDial, in the
// style of Tailscale's util/linuxfw tests: it records every message sent and
// answers queries as a kernel would for an existing but empty table.
type fakeKernel struct {
	table string
	sent  []netlink.Message
}

func (k *fakeKernel) dial(req []netlink.Message) ([]netlink.Message, error) {
	if len(req) == 0 {
		// A receive with nothing queued: Flush waiting for the ack of the
		// next message of its batch.
		return []netlink.Message{{Header: netlink.Header{Type: netlink.Error}, Data: make([]byte, 4)}}, nil
	}
	for _, m := range req {
		m.Data = bytes.Clone(m.Data)
		k.sent = append(k.sent, m)
	}
	q := req[0]
	reply := func(msgs ...netlink.Message) []netlink.Message {
		done := netlink.Message{Header: netlink.Header{Type: netlink.Done}, Data: make([]byte, 4)}
		msgs = append(msgs, done)
		for i := range msgs {
			msgs[i].Header.Flags |= netlink.Multi
			msgs[i].Header.Sequence = q.Header.Sequence
			msgs[i].Header.PID = q.Header.PID
		}
		return msgs
	}
	switch q.Header.Type {
	case netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN):
		// Acks come one per receive, from the branch above.
		return nil, nil
	case nftMsg(unix.NFT_MSG_GETTABLE):
		attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
			{Type: unix.NFTA_TABLE_NAME, Data: []byte(k.table + "\x00")},
			{Type: unix.NFTA_TABLE_FLAGS, Data: make([]byte, 4)},
			{Type: unix.NFTA_TABLE_USE, Data: make([]byte, 4)},
		})
		if err != nil {
			return nil, err
		}
		table := netlink.Message{
			Header: netlink.Header{Type: nftMsg(unix.NFT_MSG_NEWTABLE)},
			Data:   append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
		}
		return reply(table), nil
	case nftMsg(unix.NFT_MSG_GETCHAIN), nftMsg(unix.NFT_MSG_GETSET), nftMsg(unix.NFT_MSG_GETSETELEM):
		return reply(), nil
	}
	return nil, fmt.Errorf("fake kernel: unexpected %s", msgName(q.Header.Type))
}

func nftMsg(t int) netlink.HeaderType {
	return netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | t)
}

// TestGoldenInstall pins the netlink messages of Install, byte for byte,
// for plans of each kind of door: the queries it makes of the table (here
// an empty one), then one batch. The "doors" case then replaces a port
// set: one batch that flushes and refills it.
func TestGoldenInstall(t *testing.T) {
	for _, tc := range []struct {
		name string
		plan *plan.Plan
		// then runs after Install; its messages are pinned too.
		then func(f *Firewall) error
	}{
		{"default", defaultPlan("nftknock"), nil},
		{"shared", sharedPlan("nftknock"), nil},
		{"forward", forwardPlan("nftknock"), nil},
		{"doors", planOf("nftknock", sshDoor(), vpnDoor(), rotDoor()), func(f *Firewall) error {
			return f.Replace("rot_first", [][]byte{{0x61, 0xa8}, {0x79, 0x18}})
		}},
		{"fwknop", planOf("nftknock", sshDoor(), fwDoor(), fw2Door()), func(f *Firewall) error {
			set, key := fwDoor().gate.GrantSet(mustAddr("192.0.2.2"), config.TCP, 22)
			_, first, err := f.Put(set, []Element{{Key: key, Timeout: 30 * time.Second}})
			return errors.Join(first, err)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := &fakeKernel{table: tc.plan.Table}
			f, err := Open(tc.plan.Table, nftables.WithTestDial(k.dial))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			// A kernel with NFT_TABLE_F_PERSIST, whatever this one is: a
			// new table is made with it (see flagsFor).
			f.release = "6.18.0"
			if _, err := f.Install(tc.plan); err != nil {
				t.Fatal(err)
			}
			if tc.then != nil {
				if err := tc.then(f); err != nil {
					t.Fatal(err)
				}
			}
			got := renderMessages(k.sent)
			path := filepath.Join("testdata", "install_"+tc.name+".golden")
			if want := golden(t, path, got); got != want {
				t.Errorf("Install sent other messages than %s (if the change is intended, rerun with -update and review the diff):\n%s",
					path, firstDiff(want, got))
			}
		})
	}
}

// TestGoldenPut pins, for each grant mode, the batches of a first grant
// and of a grant again while the element is live: in the update mode one
// NEWSETELEM with timeout and expiration both times; in the destroy mode
// {DESTROYSETELEM, NEWSETELEM} both times; in the legacy mode {add}, then
// {delete, add}. Then a restore of an element with 12.5 s left of its 30 s:
// timeout and expiration in every mode. The first grant and the restore
// carry a comment (who made the grant): the element's userdata.
func TestGoldenPut(t *testing.T) {
	for _, mode := range []grantMode{grantUpdate, grantDestroy, grantLegacy} {
		t.Run(mode.String(), func(t *testing.T) {
			k := &fakeKernel{table: "nftknock"}
			f, err := Open("nftknock", nftables.WithTestDial(k.dial))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			f.mode = mode
			key := mustAddr("192.0.2.1").AsSlice()
			for _, e := range []Element{
				{Key: key, Timeout: 30 * time.Second, Comment: `"alice@laptop" SHA256:x`},
				{Key: key, Timeout: 30 * time.Second, Live: true},
				{Key: key, Timeout: 30 * time.Second, Expires: 12500 * time.Millisecond, Comment: "bob"},
			} {
				if _, first, err := f.Put("ssh_v4", []Element{e}); err != nil || first != nil {
					t.Fatal(err, first)
				}
			}
			got := renderMessages(k.sent)
			path := filepath.Join("testdata", "put_"+strings.ReplaceAll(mode.String(), "+", "_")+".golden")
			if want := golden(t, path, got); got != want {
				t.Errorf("Put sent other messages than %s:\n%s", path, firstDiff(want, got))
			}
		})
	}
}

// golden returns the contents of the golden file at path, after writing
// got to it when the tests run with -update.
func golden(t testing.TB, path, got string) string {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./nft -run 'Golden|KernelInstallRuleset' -update to create it)", err)
	}
	return string(want)
}

// renderMessages writes messages as commented hex dumps, one block per
// message. Sequence numbers and port IDs are zeroed: netlink draws the
// first sequence number at random.
func renderMessages(msgs []netlink.Message) string {
	var b strings.Builder
	b.WriteString("# Netlink messages, in the order sent; sequence numbers and port IDs zeroed.\n")
	b.WriteString("# Regenerate with: go test ./nft -run Golden -update\n")
	for i, m := range msgs {
		m.Header.Sequence, m.Header.PID = 0, 0
		raw, err := m.MarshalBinary()
		if err != nil {
			panic(err)
		}
		fmt.Fprintf(&b, "\n## %d %s %s", i+1, msgName(m.Header.Type), flagNames(m.Header))
		if s := summary(m); s != "" {
			fmt.Fprintf(&b, " %s", s)
		}
		b.WriteString("\n")
		hexdump(&b, raw)
	}
	return b.String()
}

func hexdump(b *strings.Builder, raw []byte) {
	for off := 0; off < len(raw); off += 16 {
		line := raw[off:min(off+16, len(raw))]
		fmt.Fprintf(b, "%04x ", off)
		for i := 0; i < 16; i++ {
			if i == 8 {
				b.WriteString(" ")
			}
			if i < len(line) {
				fmt.Fprintf(b, " %02x", line[i])
			} else {
				b.WriteString("   ")
			}
		}
		b.WriteString("  |")
		for _, c := range line {
			if c < 0x20 || c > 0x7e {
				c = '.'
			}
			b.WriteByte(c)
		}
		b.WriteString("|\n")
	}
}

var msgNames = map[int]string{
	unix.NFT_MSG_NEWTABLE:   "NFT_MSG_NEWTABLE",
	unix.NFT_MSG_GETTABLE:   "NFT_MSG_GETTABLE",
	unix.NFT_MSG_DELTABLE:   "NFT_MSG_DELTABLE",
	unix.NFT_MSG_NEWCHAIN:   "NFT_MSG_NEWCHAIN",
	unix.NFT_MSG_GETCHAIN:   "NFT_MSG_GETCHAIN",
	unix.NFT_MSG_DELCHAIN:   "NFT_MSG_DELCHAIN",
	unix.NFT_MSG_NEWRULE:    "NFT_MSG_NEWRULE",
	unix.NFT_MSG_GETRULE:    "NFT_MSG_GETRULE",
	unix.NFT_MSG_DELRULE:    "NFT_MSG_DELRULE",
	unix.NFT_MSG_NEWSET:     "NFT_MSG_NEWSET",
	unix.NFT_MSG_GETSET:     "NFT_MSG_GETSET",
	unix.NFT_MSG_DELSET:     "NFT_MSG_DELSET",
	unix.NFT_MSG_NEWSETELEM: "NFT_MSG_NEWSETELEM",
	unix.NFT_MSG_GETSETELEM: "NFT_MSG_GETSETELEM",
	unix.NFT_MSG_DELSETELEM: "NFT_MSG_DELSETELEM",
	nftMsgDestroySetElem:    "NFT_MSG_DESTROYSETELEM",
}

func msgName(t netlink.HeaderType) string {
	switch t {
	case netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN):
		return "NFNL_MSG_BATCH_BEGIN"
	case netlink.HeaderType(unix.NFNL_MSG_BATCH_END):
		return "NFNL_MSG_BATCH_END"
	}
	if t>>8 == unix.NFNL_SUBSYS_NFTABLES {
		if n, ok := msgNames[int(t&0xff)]; ok {
			return n
		}
	}
	return fmt.Sprintf("type(%#x)", uint16(t))
}

// flagNames names header flags; bits 0x100-0x800 mean different things in
// get requests and in new/delete requests.
func flagNames(h netlink.Header) string {
	low := []string{"request", "multi", "ack", "echo"}
	high := []string{"replace", "excl", "create", "append"}
	if strings.Contains(msgName(h.Type), "GET") {
		high = []string{"root", "match", "atomic", "0x800"}
	}
	var names []string
	flags := h.Flags
	dump := high[0] == "root" && flags&netlink.Dump == netlink.Dump
	if dump {
		flags &^= netlink.Dump
	}
	for i, n := range low {
		if flags&(1<<i) != 0 {
			names = append(names, n)
		}
	}
	for i, n := range high {
		if flags&(0x100<<i) != 0 {
			names = append(names, n)
		}
	}
	if dump {
		names = append(names, "dump")
	}
	return strings.Join(names, "|")
}

// summary names what a message is about: table, chain or set, and the
// comment of a rule.
func summary(m netlink.Message) string {
	if len(m.Data) < 4 || m.Header.Type>>8 != unix.NFNL_SUBSYS_NFTABLES {
		return ""
	}
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return ""
	}
	ad.ByteOrder = binary.BigEndian
	var parts []string
	msg := int(m.Header.Type & 0xff)
	for ad.Next() {
		switch {
		case ad.Type() == 1: // NFTA_{TABLE_NAME,CHAIN_TABLE,RULE_TABLE,SET_TABLE,SET_ELEM_LIST_TABLE}
			parts = append(parts, "table="+ad.String())
		case ad.Type() == unix.NFTA_CHAIN_NAME && (msg == unix.NFT_MSG_NEWCHAIN || msg == unix.NFT_MSG_DELCHAIN):
			parts = append(parts, "chain="+ad.String())
		case ad.Type() == unix.NFTA_RULE_CHAIN && (msg == unix.NFT_MSG_NEWRULE || msg == unix.NFT_MSG_DELRULE):
			parts = append(parts, "chain="+ad.String())
		case ad.Type() == unix.NFTA_RULE_USERDATA && msg == unix.NFT_MSG_NEWRULE:
			if c, ok := userdata.GetString(ad.Bytes(), userdata.TypeComment); ok {
				parts = append(parts, fmt.Sprintf("comment=%q", c))
			}
		case ad.Type() == unix.NFTA_SET_NAME && (msg >= unix.NFT_MSG_NEWSET && msg <= unix.NFT_MSG_DELSETELEM || msg == nftMsgDestroySetElem):
			parts = append(parts, "set="+ad.String())
		}
	}
	return strings.Join(parts, " ")
}

// firstDiff shows the first differing line of two texts, with context.
func firstDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < max(len(w), len(g)); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			start := max(0, i-3)
			return fmt.Sprintf("first difference at line %d:\ncontext:\n%s\nwant: %s\ngot:  %s",
				i+1, strings.Join(w[start:i], "\n"), wl, gl)
		}
	}
	return "(no difference)"
}
