package nft

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// notification is a message as the kernel multicasts it: the nfgenmsg
// header, then attribute 1 naming the table.
func notification(t *testing.T, msg int, family byte, table string, port uint32) netlink.Message {
	t.Helper()
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: 1, Data: []byte(table + "\x00")},
		{Type: 2, Data: []byte("whatever\x00")},
	})
	if err != nil {
		t.Fatal(err)
	}
	return netlink.Message{
		Header: netlink.Header{Type: nftMsg(msg), PID: port},
		Data:   append([]byte{family, unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
}

// TestClassify: what a notification means for the table, and that the
// Firewall's own (by port ID) mean nothing.
func TestClassify(t *testing.T) {
	const own, other = 4242, 77
	inet := byte(unix.NFPROTO_INET)
	for _, tc := range []struct {
		name string
		m    netlink.Message
		want Change
	}{
		{"someone deletes the table", notification(t, unix.NFT_MSG_DELTABLE, inet, "nftknock", other), ChangedRuleset},
		{"we delete the table", notification(t, unix.NFT_MSG_DELTABLE, inet, "nftknock", own), 0},
		{"kernel deletes the table (port 0)", notification(t, unix.NFT_MSG_DELTABLE, inet, "nftknock", 0), ChangedRuleset},
		{"someone deletes a chain", notification(t, unix.NFT_MSG_DELCHAIN, inet, "nftknock", other), ChangedRuleset},
		{"someone adds a rule", notification(t, unix.NFT_MSG_NEWRULE, inet, "nftknock", other), ChangedRuleset},
		{"we add a rule", notification(t, unix.NFT_MSG_NEWRULE, inet, "nftknock", own), 0},
		{"someone deletes a set", notification(t, unix.NFT_MSG_DELSET, inet, "nftknock", other), ChangedRuleset},
		{"someone adds an element", notification(t, unix.NFT_MSG_NEWSETELEM, inet, "nftknock", other), ChangedElements},
		{"someone deletes an element", notification(t, unix.NFT_MSG_DELSETELEM, inet, "nftknock", other), ChangedElements},
		{"we add an element", notification(t, unix.NFT_MSG_NEWSETELEM, inet, "nftknock", own), 0},
		{"another table", notification(t, unix.NFT_MSG_DELTABLE, inet, "filter", other), 0},
		{"a table of the name in another family", notification(t, unix.NFT_MSG_DELTABLE, unix.NFPROTO_IPV4, "nftknock", other), 0},
		{"a prefix of the name", notification(t, unix.NFT_MSG_DELTABLE, inet, "nftknock2", other), 0},
		{"new generation", notification(t, unix.NFT_MSG_NEWGEN, inet, "nftknock", other), 0},
		{"another subsystem", netlink.Message{Header: netlink.Header{Type: 3<<8 | 2}, Data: make([]byte, 16)}, 0},
		{"too short", netlink.Message{Header: netlink.Header{Type: nftMsg(unix.NFT_MSG_DELTABLE)}, Data: []byte{1}}, 0},
		{"no table attribute", netlink.Message{Header: netlink.Header{Type: nftMsg(unix.NFT_MSG_DELTABLE)}, Data: []byte{1, 0, 0, 0}}, 0},
	} {
		if got := classify(tc.m, inet, "nftknock", own); got != tc.want {
			t.Errorf("%s: classify = %v, want %v", tc.name, got, tc.want)
		}
	}
	if s := (ChangedRuleset | Overrun).String(); s != "ruleset|overrun" {
		t.Errorf("String() = %q", s)
	}
}

// waitChange waits for the Watcher's signal and takes the changes.
func waitChange(t *testing.T, w *Watcher, within time.Duration) Change {
	t.Helper()
	ch, _ := waitChanges(t, w, within)
	return ch
}

func waitChanges(t *testing.T, w *Watcher, within time.Duration) (Change, []ElementChange) {
	t.Helper()
	select {
	case <-w.C():
		return w.Take()
	case <-time.After(within):
		t.Fatalf("no change reported within %v", within)
		return 0, nil
	}
}

// TestKernelWatch: the Watcher reports what others do to the table, and
// not what the Firewall does itself, even while it heals.
func TestKernelWatch(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	p := sharedPlan("nftknock")
	install(t, f, p)
	w, err := f.Watch()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	// Our own changes of every kind, then someone else's element: the
	// notifications come in order, so ours were classified before it.
	install(t, f, p)
	grant(t, f, "ssh", "192.0.2.1", time.Minute)
	grant(t, f, "ssh", "192.0.2.1", time.Minute)
	if err := f.Revoke("ssh", mustAddr("192.0.2.1")); err != nil {
		t.Fatal(err)
	}
	ns.nft(t, "add", "element", "inet", "nftknock", "ssh_v4", `{ 192.0.2.5 timeout 1m comment "by hand" }`)
	ch, elems := waitChanges(t, w, time.Second)
	if ch != ChangedElements {
		t.Errorf("after our changes and someone's element: %v, want elements only", ch)
	}
	if len(elems) != 1 || elems[0].Set != "ssh_v4" || string(elems[0].Key) != string(mustAddr("192.0.2.5").AsSlice()) ||
		elems[0].Deleted || elems[0].Timeout != time.Minute || elems[0].Expires <= 55*time.Second || elems[0].Comment != "by hand" {
		t.Errorf("element changes %+v, want 192.0.2.5 added to ssh_v4 with a minute, comment \"by hand\"", elems)
	}
	ns.nft(t, "delete", "element", "inet", "nftknock", "ssh_v4", "{ 192.0.2.5 }")
	if _, elems := waitChanges(t, w, time.Second); len(elems) != 1 || !elems[0].Deleted {
		t.Errorf("element changes %+v, want 192.0.2.5 deleted", elems)
	}

	// Another table is none of our business.
	ns.nftInput(t, "add table inet other\nadd chain inet other c\ndelete table inet other\n")
	ns.nft(t, "flush", "ruleset")
	if ch := waitChange(t, w, time.Second); ch != ChangedRuleset {
		t.Errorf("after nft flush ruleset: %v, want ruleset", ch)
	}

	// Installing again (a heal) is our own change; the tool's grant is
	// someone else's.
	install(t, f, p)
	tool := ns.open(t, "nftknock")
	if err := tool.Grant("admin", mustAddr("2001:db8::9"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if ch := waitChange(t, w, time.Second); ch != ChangedElements {
		t.Errorf("after our heal and the tool's grant: %v, want elements only", ch)
	}
	if err := w.Err(); err != nil {
		t.Errorf("Err() = %v", err)
	}

	// A rule inserted by hand into our chain.
	ns.nft(t, "insert", "rule", "inet", "nftknock", "input", "tcp", "dport", "22", "accept")
	if ch := waitChange(t, w, time.Second); ch != ChangedRuleset {
		t.Errorf("after a rule inserted by hand: %v, want ruleset", ch)
	}

	if err := w.Close(); err != nil {
		t.Errorf("Close() = %v", err)
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close() = %v", err)
	}
}

// TestKernelWatchOverrun: when the socket overruns, the Watcher says
// Overrun (anything may have changed) and goes on watching.
func TestKernelWatchOverrun(t *testing.T) {
	t.Parallel()
	ns := newNetns(t)
	f := ns.open(t, "nftknock")
	install(t, f, defaultPlan("nftknock"))
	// The smallest buffer the kernel allows (it raises what is asked).
	w, err := f.watch(1)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	// Thousands of element notifications in one commit, sent by the
	// kernel faster than any reader drains a buffer of a few KiB.
	var b strings.Builder
	b.WriteString("add element inet nftknock ssh_v4 {")
	for i := range 4000 {
		fmt.Fprintf(&b, " 10.%d.%d.%d timeout 1m,", i>>16, (i>>8)&0xff, i&0xff)
	}
	b.WriteString(" 10.255.255.255 timeout 1m }\n")
	ns.nftInput(t, b.String())
	var ch Change
	deadline := time.After(2 * time.Second)
	for ch&Overrun == 0 {
		select {
		case <-w.C():
			c, _ := w.Take()
			ch |= c
		case <-deadline:
			t.Fatalf("no overrun reported; changes: %v", ch)
		}
	}
	if err := w.Err(); err != nil {
		t.Fatalf("the Watcher stopped: %v", err)
	}

	// Still watching. Drain what the flood left, then one more change.
	time.Sleep(200 * time.Millisecond)
	w.Take()
	select {
	case <-w.C():
	default:
	}
	ns.nft(t, "delete", "table", "inet", "nftknock")
	if got := waitChange(t, w, time.Second); got&ChangedRuleset == 0 {
		t.Errorf("after the overrun, a deleted table: %v, want ruleset", got)
	}
}
