package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Change is what a Watcher saw happen to the table, as a bit set.
type Change uint8

const (
	// ChangedRuleset: someone else added or deleted the table, or a
	// chain, rule, set, object or flowtable of it (`nft flush ruleset`,
	// `nft delete table inet nftknock`, a rule inserted by hand).
	ChangedRuleset Change = 1 << iota
	// ChangedElements: someone else added or deleted elements of the
	// table's sets (`nftknock grant`, `nft add element` by hand); Take
	// returns what changed.
	ChangedElements
	// Overrun: notifications were lost (the socket overran, ENOBUFS) or
	// the watch failed; anything may have changed.
	Overrun
)

func (c Change) String() string {
	var s []string
	for _, n := range []struct {
		c    Change
		name string
	}{{ChangedRuleset, "ruleset"}, {ChangedElements, "elements"}, {Overrun, "overrun"}} {
		if c&n.c != 0 {
			s = append(s, n.name)
		}
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, "|")
}

// A Watcher reports changes to the Firewall's table made by anyone but
// the Firewall itself. It listens to nf_tables' notifications (the
// NFNLGRP_NFTABLES multicast group, what `nft monitor` reads): the kernel
// sends one message per object a committed batch added or deleted, stamped
// with the netlink port ID of the socket that sent the batch. Messages
// stamped with the Firewall's own port are its own changes and are
// ignored, so that healing the table does not set off another heal.
//
// The kernel does not notify when it expires an element: grants running
// out are not changes.
//
// Its goroutine only reads and classifies; the owner of the Firewall takes
// the accumulated changes (C, Take) and acts on them in its own goroutine.
type Watcher struct {
	conn   *netlink.Conn
	table  string
	prefix string // attached: the daemon's sets' names start with it
	family byte
	own    *atomic.Uint32
	closed atomic.Bool

	mu      sync.Mutex
	pending Change
	elems   []ElementChange
	// overflow: element changes were dropped since the last Take (an
	// Overrun is pending): the rest are not parsed.
	overflow bool
	err      error

	c    chan struct{}
	done chan struct{}
}

// Watch starts watching the table. Close the Watcher to stop.
func (f *Firewall) Watch() (*Watcher, error) {
	return f.watch(socketBuffer)
}

// watch takes the socket's receive buffer size; tests make it tiny to
// provoke overruns.
func (f *Firewall) watch(rcvbuf int) (*Watcher, error) {
	conn, err := f.dial(0)
	if err != nil {
		return nil, fmt.Errorf("watch table: %w", err)
	}
	if err := setRcvbuf(conn, rcvbuf); err != nil {
		conn.Close()
		return nil, fmt.Errorf("watch table: %w", err)
	}
	if err := conn.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		conn.Close()
		return nil, fmt.Errorf("watch table: join NFNLGRP_NFTABLES: %w", err)
	}
	w := &Watcher{
		conn:   conn,
		table:  f.table.Name,
		prefix: f.prefix,
		family: byte(f.table.Family),
		own:    &f.port,
		c:      make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	go w.run()
	return w, nil
}

func setRcvbuf(c *netlink.Conn, n int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n) != nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, n)
		}
	}); err != nil {
		return err
	}
	return serr
}

func (w *Watcher) run() {
	defer close(w.done)
	for {
		msgs, err := w.conn.Receive()
		if w.closed.Load() {
			return
		}
		if errors.Is(err, unix.ENOBUFS) {
			// The socket stays usable; what was lost is unknown.
			w.flag(Overrun)
			continue
		}
		if err != nil {
			w.mu.Lock()
			w.err = fmt.Errorf("watch table: %w", err)
			w.mu.Unlock()
			w.flag(Overrun)
			return
		}
		var ch Change
		var elems []ElementChange
		own := w.own.Load()
		w.mu.Lock()
		full := w.overflow
		w.mu.Unlock()
		for _, m := range msgs {
			c := classify(m, w.family, w.table, own)
			// Once more have come than the owner will take, the owner
			// reads the sets instead: parsing the rest is wasted.
			if c == ChangedElements && !full {
				elems = appendElementChanges(elems, m, w.prefix)
			}
			ch |= c
		}
		if len(elems) > 0 {
			w.mu.Lock()
			if len(w.elems)+len(elems) > maxElementChanges {
				// More than the owner will take in time: it reads
				// the sets instead.
				ch |= Overrun
				w.elems, w.overflow = nil, true
			} else {
				w.elems = append(w.elems, elems...)
			}
			w.mu.Unlock()
		}
		if ch != 0 {
			w.flag(ch)
		}
	}
}

// flag adds ch to the pending changes and wakes the owner.
func (w *Watcher) flag(ch Change) {
	w.mu.Lock()
	w.pending |= ch
	w.mu.Unlock()
	select {
	case w.c <- struct{}{}:
	default: // already woken
	}
}

// C receives a value when changes are pending; Take them then.
func (w *Watcher) C() <-chan struct{} {
	if w == nil {
		return nil
	}
	return w.c
}

// Take returns the changes seen since the last Take and clears them, with
// the element changes among them. After an Overrun the element changes are
// not all there: read the sets.
func (w *Watcher) Take() (Change, []ElementChange) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ch, elems := w.pending, w.elems
	w.pending, w.elems, w.overflow = 0, nil, false
	return ch, elems
}

// maxElementChanges bounds the element changes a Watcher holds for its
// owner; past it they are dropped and Overrun is flagged.
const maxElementChanges = 1 << 16

// ElementChange is an element someone else added to or deleted from a set
// of the table.
type ElementChange struct {
	Set     string
	Key     []byte
	Deleted bool
	// Timeout and Expires (the time left) of an added element.
	Timeout, Expires time.Duration
	// Comment is an added element's comment.
	Comment string
}

// appendElementChanges adds the elements of a NEWSETELEM, DELSETELEM or
// DESTROYSETELEM notification to out. The kernel built the message, but
// it is read as carefully as anything from a socket: what does not parse
// is skipped.
//
// Attached, only the daemon's sets count: their prefix is taken off, and
// the admin's own sets are left out.
func appendElementChanges(out []ElementChange, m netlink.Message, prefix string) []ElementChange {
	deleted := m.Header.Type&0xff != unix.NFT_MSG_NEWSETELEM
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return out
	}
	ad.ByteOrder = binary.BigEndian
	var set string
	var list []byte
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_SET_ELEM_LIST_SET:
			set = ad.String()
		case unix.NFTA_SET_ELEM_LIST_ELEMENTS:
			list = ad.Bytes()
		}
	}
	if ad.Err() != nil || set == "" {
		return out
	}
	if prefix != "" {
		var ours bool
		if set, ours = strings.CutPrefix(set, prefix); !ours || set == "" {
			return out
		}
	}
	items, err := netlink.NewAttributeDecoder(list)
	if err != nil {
		return out
	}
	for items.Next() {
		e := ElementChange{Set: set, Deleted: deleted}
		el, err := netlink.NewAttributeDecoder(items.Bytes())
		if err != nil {
			continue
		}
		el.ByteOrder = binary.BigEndian
		for el.Next() {
			switch el.Type() {
			case unix.NFTA_SET_ELEM_KEY:
				if kd, err := netlink.NewAttributeDecoder(el.Bytes()); err == nil {
					for kd.Next() {
						if kd.Type() == unix.NFTA_DATA_VALUE {
							e.Key = kd.Bytes()
						}
					}
				}
			case unix.NFTA_SET_ELEM_TIMEOUT:
				e.Timeout = time.Duration(el.Uint64()) * time.Millisecond
			case unix.NFTA_SET_ELEM_EXPIRATION:
				e.Expires = time.Duration(el.Uint64()) * time.Millisecond
			case unix.NFTA_SET_ELEM_USERDATA:
				e.Comment = commentOf(el.Bytes())
			}
		}
		if el.Err() == nil && e.Key != nil {
			out = append(out, e)
		}
	}
	return out
}

// Again puts changes back, to be taken again (a heal that failed and is to
// be retried). Safe from any goroutine.
func (w *Watcher) Again(ch Change) {
	if ch != 0 {
		w.flag(ch)
	}
}

// Err is why the Watcher stopped watching, or nil while it watches. A
// stopped Watcher has flagged Overrun; make a new one.
func (w *Watcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Close stops the Watcher and waits for its goroutine.
func (w *Watcher) Close() error {
	if w == nil || w.closed.Swap(true) {
		return nil
	}
	err := w.conn.Close()
	<-w.done
	return err
}

// NFT_MSG_DESTROY* (Linux 6.3, `nft destroy`), which x/sys/unix lacks: the
// kernel's commit passes the transaction's own message type to the
// notification of a table it deletes, so a destroy may come as itself.
const (
	nftMsgDestroyTable = 26 + iota
	nftMsgDestroyChain
	nftMsgDestroyRule
	nftMsgDestroySet
	nftMsgDestroySetElem
	nftMsgDestroyObj
	nftMsgDestroyFlowtable
)

// classify tells what a notification means for table (of family), ignoring
// those of the socket with port ID own.
func classify(m netlink.Message, family byte, table string, own uint32) Change {
	if m.Header.Type>>8 != unix.NFNL_SUBSYS_NFTABLES || len(m.Data) < 4 {
		return 0
	}
	if own != 0 && m.Header.PID == own {
		return 0
	}
	var ch Change
	switch m.Header.Type & 0xff {
	case unix.NFT_MSG_NEWTABLE, unix.NFT_MSG_DELTABLE,
		unix.NFT_MSG_NEWCHAIN, unix.NFT_MSG_DELCHAIN,
		unix.NFT_MSG_NEWRULE, unix.NFT_MSG_DELRULE,
		unix.NFT_MSG_NEWSET, unix.NFT_MSG_DELSET,
		unix.NFT_MSG_NEWOBJ, unix.NFT_MSG_DELOBJ,
		unix.NFT_MSG_NEWFLOWTABLE, unix.NFT_MSG_DELFLOWTABLE,
		nftMsgDestroyTable, nftMsgDestroyChain, nftMsgDestroyRule, nftMsgDestroySet,
		nftMsgDestroyObj, nftMsgDestroyFlowtable:
		ch = ChangedRuleset
	case unix.NFT_MSG_NEWSETELEM, unix.NFT_MSG_DELSETELEM, nftMsgDestroySetElem:
		ch = ChangedElements
	default: // NEWGEN ends every batch; GET replies are not notifications
		return 0
	}
	if m.Data[0] != family {
		return 0
	}
	// Every one of these messages names its table in attribute 1
	// (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE,
	// NFTA_SET_ELEM_LIST_TABLE, NFTA_OBJ_TABLE, NFTA_FLOWTABLE_TABLE).
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return 0
	}
	for ad.Next() {
		if ad.Type() == 1 {
			if ad.String() == table {
				return ch
			}
			return 0
		}
	}
	return 0
}
