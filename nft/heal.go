package nft

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/config"
)

// Self-healing: when someone deletes the table (`nft flush ruleset`, which
// `systemctl restart nftables` runs on most distributions), its chain or a
// door set, the daemon installs its ruleset again and puts back every grant
// its mirror knows, each with the time it had left, in the same atomic
// batch as the ruleset itself: no moment with the table but without its
// grants, and nothing half-applied if the kernel refuses any of it.
//
// "The time it had left" needs NFTA_SET_ELEM_EXPIRATION beside
// NFTA_SET_ELEM_TIMEOUT on NEWSETELEM (what `nft add element ... { a
// timeout 30s expires 10s }` sends; on Linux 6.18 an expiration longer than
// the timeout is refused with ERANGE). google/nftables v0.3.0 decodes that
// attribute but never sends it. So when there are grants to restore,
// Install builds its batch on a capturing Conn (v0.3.0 marshals every
// message as usual, nothing is sent), appends its own NEWSETELEM messages
// before the batch end, and sends the whole batch on the Firewall's
// lasting socket, reading the acks itself.

// restoreChunk is how many elements go in one NEWSETELEM message: the
// element list is one netlink attribute, whose length must fit 16 bits
// (about 1000 IPv6 elements).
const restoreChunk = 256

// batchTimeout bounds the wait for the kernel's acks of a batch sendBatch
// sent.
const batchTimeout = 10 * time.Second

// restoreGrant is a grant the mirror knows whose set Install creates anew.
type restoreGrant struct {
	key     grantKey
	set     setSpec
	exp     time.Time     // zero: an element without timeout
	timeout time.Duration // the element's whole timeout
	expired bool          // set by commit: ran out before the batch went
}

// restorable lists the grants of the mirror that are still live and whose
// set the batch being built (re)creates: the set of a configured door that
// the table no longer holds. Ordered by set, then address, so that the
// batch is the same for the same state.
func (f *Firewall) restorable(wantSets []setSpec, keep map[string]bool) []restoreGrant {
	now := f.now()
	var out []restoreGrant
	for key, exp := range f.mirror {
		if !exp.IsZero() && !now.Before(exp) {
			continue
		}
		// Only into a set of the grant's kind: were a door switched
		// between open_to "source" and "anyone" by a reload, a single
		// source's grant must never become everyone's, nor the reverse.
		name := SetName(key.door, key.addr.Is6())
		i := slices.IndexFunc(wantSets, func(s setSpec) bool {
			if s.role != roleGrant || s.door != key.door {
				return false
			}
			if s.anyone() {
				return key.addr.IsUnspecified()
			}
			return s.name == name && !key.addr.IsUnspecified()
		})
		if i < 0 || keep[wantSets[i].name] {
			continue
		}
		out = append(out, restoreGrant{key: key, set: wantSets[i], exp: exp, timeout: f.timeouts[key]})
	}
	slices.SortFunc(out, func(a, b restoreGrant) int {
		if a.set.id != b.set.id {
			return int(a.set.id) - int(b.set.id)
		}
		return a.key.addr.Compare(b.key.addr)
	})
	return out
}

// restoredInto records in the mirror the grants a successful batch put back.
func (f *Firewall) restoredInto(restore []restoreGrant) {
	f.restored = 0
	for _, r := range restore {
		if r.expired {
			continue
		}
		f.mirror[r.key] = r.exp
		f.timeouts[r.key] = r.timeout
		f.restored++
	}
}

// capture is an nftables.Conn that sends nothing: its Flush hands the batch
// v0.3.0 built to dial, which keeps it and acknowledges every message.
type capture struct {
	conn *nftables.Conn
	sent []netlink.Message
}

func newCapture() *capture {
	k := &capture{}
	// Without AsLasting, New dials nothing and cannot fail.
	k.conn, _ = nftables.New(nftables.WithTestDial(k.dial))
	return k
}

func (k *capture) dial(req []netlink.Message) ([]netlink.Message, error) {
	if len(req) == 0 {
		// Flush reading the ack of the next message of its batch.
		return []netlink.Message{{Header: netlink.Header{Type: netlink.Error}, Data: make([]byte, 4)}}, nil
	}
	for _, m := range req {
		m.Data = bytes.Clone(m.Data)
		k.sent = append(k.sent, m)
	}
	return nil, nil
}

// commit sends the batch queued on c: through v0.3.0 when there is nothing
// to restore, else as the captured batch with the restored elements added.
func (f *Firewall) commit(c *nftables.Conn, capt *capture, restore []restoreGrant) error {
	if capt == nil {
		return f.flush(c)
	}
	if err := c.Flush(); err != nil {
		return err // a marshalling error: nothing was sent
	}
	msgs := capt.sent
	if len(msgs) < 2 || msgs[len(msgs)-1].Header.Type != netlink.HeaderType(unix.NFNL_MSG_BATCH_END) {
		return errors.New("captured batch has no batch end")
	}
	elems, err := f.restoreMessages(restore)
	if err != nil {
		return err
	}
	batch := slices.Concat(msgs[:len(msgs)-1], elems, msgs[len(msgs)-1:])
	return f.sendBatch(batch)
}

// restoreMessages builds the NEWSETELEM messages that put the grants back,
// each element with its whole timeout and, as its expiration, the time it
// has left now, in whole milliseconds rounded down: a restore never extends
// a grant. Grants that ran out meanwhile are marked expired and left out.
func (f *Firewall) restoreMessages(restore []restoreGrant) ([]netlink.Message, error) {
	now := f.now()
	var msgs []netlink.Message
	for i := 0; i < len(restore); {
		set := restore[i].set
		var items []netlink.Attribute
		for ; i < len(restore) && restore[i].set.name == set.name && len(items) < restoreChunk; i++ {
			r := &restore[i]
			item, ok, err := restoreElement(elementKey(r.set, r.key.addr), r.exp, r.timeout, now)
			if err != nil {
				return nil, err
			}
			if !ok {
				r.expired = true
				continue
			}
			items = append(items, netlink.Attribute{Type: uint16(len(items)+1) | unix.NLA_F_NESTED, Data: item})
		}
		if len(items) == 0 {
			continue
		}
		m, err := setElemMessage(f.table, set, items)
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// restoreElement is one NFTA_LIST_ELEM: key, timeout, expiration. ok is
// false when the grant has run out.
func restoreElement(elemKey []byte, exp time.Time, timeout time.Duration, now time.Time) (item []byte, ok bool, err error) {
	var left time.Duration
	if !exp.IsZero() {
		left = exp.Sub(now).Truncate(time.Millisecond)
		if left < time.Millisecond {
			return nil, false, nil
		}
		if timeout < left {
			// Unknown (zero) or shorter than what is left, which the
			// kernel refuses (ERANGE): the time left is the timeout.
			timeout = left
		}
	} else {
		timeout = 0 // an element without timeout
	}
	item, err = elementItem(elemKey, timeout, left)
	return item, err == nil, err
}

// elementItem is one NFTA_LIST_ELEM: the key and, unless zero, the
// element's whole timeout and the time it has left (its expiration), in
// whole milliseconds. NEWSETELEM with both adds the element with that much
// left, or, on Linux 6.12 and later, updates an element that is already
// there in place: its timer restarts at the expiration.
func elementItem(elemKey []byte, timeout, expires time.Duration) ([]byte, error) {
	key, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: elemKey}})
	if err != nil {
		return nil, err
	}
	attrs := []netlink.Attribute{{Type: unix.NFTA_SET_ELEM_KEY | unix.NLA_F_NESTED, Data: key}}
	if timeout > 0 {
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_ELEM_TIMEOUT, Data: binaryutil.BigEndian.PutUint64(uint64(timeout.Milliseconds()))})
	}
	if expires > 0 {
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_ELEM_EXPIRATION, Data: binaryutil.BigEndian.PutUint64(uint64(expires.Milliseconds()))})
	}
	return netlink.MarshalAttributes(attrs)
}

// setElemMessage is NFT_MSG_NEWSETELEM for items of set, as nft sends it:
// table, set name, set ID (when the set is added in the same batch),
// elements.
func setElemMessage(t *nftables.Table, set setSpec, items []netlink.Attribute) (netlink.Message, error) {
	elems, err := netlink.MarshalAttributes(items)
	if err != nil {
		return netlink.Message{}, err
	}
	list := []netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: []byte(t.Name + "\x00")},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte(set.name + "\x00")},
	}
	if set.id != 0 {
		list = append(list, netlink.Attribute{Type: unix.NFTA_SET_ELEM_LIST_SET_ID, Data: binaryutil.BigEndian.PutUint32(set.id)})
	}
	attrs, err := netlink.MarshalAttributes(append(list,
		netlink.Attribute{Type: unix.NFTA_SET_ELEM_LIST_ELEMENTS | unix.NLA_F_NESTED, Data: elems}))
	if err != nil {
		return netlink.Message{}, err
	}
	return netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWSETELEM),
			Flags: netlink.Request | netlink.Acknowledge | netlink.Create,
		},
		Data: append([]byte{byte(t.Family), unix.NFNETLINK_V0, 0, 0}, attrs...),
	}, nil
}

// sendBatch sends a whole batch (begin, messages, end) as one datagram on
// the lasting socket and reads one ack per message that asked for one,
// skipping the echoes of rules. On any error the kernel has applied none
// of the batch; the socket is dropped with whatever is still unread.
func (f *Firewall) sendBatch(batch []netlink.Message) error {
	if _, err := f.c(); err != nil {
		return err
	}
	nl := f.nl
	if nl == nil {
		return errors.New("no netlink socket")
	}
	for i := range batch {
		// The capturing Conn numbered them; the real socket numbers
		// them anew.
		batch[i].Header.Length, batch[i].Header.Sequence, batch[i].Header.PID = 0, 0, 0
	}
	if _, err := nl.SendMessages(batch); err != nil {
		f.reset()
		return fmt.Errorf("send batch: %w", err)
	}
	want := 0
	for _, m := range batch {
		if m.Header.Flags&netlink.Acknowledge != 0 {
			want++
		}
	}
	// The kernel answers at once; a socket that stays silent is broken.
	// (The test socket of WithTestDial has no deadlines: ignored.)
	_ = nl.SetReadDeadline(time.Now().Add(batchTimeout))
	defer nl.SetReadDeadline(time.Time{})
	f.stats.Batches++
	for got := 0; got < want; {
		replies, err := nl.Receive()
		if err != nil {
			var errno unix.Errno
			if errors.As(err, &errno) {
				f.stats.Refused++
			}
			f.reset()
			return err
		}
		for _, r := range replies {
			if r.Header.Type == netlink.Error {
				got++
			}
		}
	}
	return nil
}

// remember is a socket option of the lasting connection: it records the
// socket and its port ID as they are dialled.
func (f *Firewall) remember(c *netlink.Conn) error {
	f.nl = c
	f.port.Store(c.PID())
	return nil
}

// Intact tells whether the ruleset Install put in the kernel is still
// whole: the table, its chain with exactly the rules Install added, and
// every set Install made (those the rules use cannot be deleted while
// the rules hold them, nor replaced by a set of another shape). It does
// not look at elements.
// It is false, with no error, when the table is gone.
func (f *Firewall) Intact() (bool, error) {
	if len(f.doors) == 0 {
		return false, errors.New("check table: nothing installed")
	}
	c, err := f.c()
	if err != nil {
		return false, err
	}
	chains, sets, err := f.current(c)
	if err != nil {
		f.reset()
		return false, fmt.Errorf("check table %q: %w", f.table.Name, err)
	}
	if !slices.ContainsFunc(chains, func(ch *nftables.Chain) bool { return ch.Name == chainName }) {
		return false, nil
	}
	for _, name := range f.sets {
		if !slices.ContainsFunc(sets, func(s *nftables.Set) bool { return s.Name == name }) {
			return false, nil
		}
	}
	rules, err := c.GetRules(f.table, &nftables.Chain{Name: chainName, Table: f.table})
	if err != nil {
		f.reset()
		return false, fmt.Errorf("check table %q: list rules: %w", f.table.Name, err)
	}
	return len(rules) == f.nrules, nil
}

// Heal installs cfg again if the table is not intact (see Intact), putting
// back every grant the mirror knows to be live, with the time it has left,
// in the same batch. It reports whether it installed and how many grants
// it restored.
func (f *Firewall) Heal(cfg *config.Config) (healed bool, restored int, err error) {
	ok, err := f.Intact()
	if err != nil || ok {
		return false, 0, err
	}
	if err := f.Install(cfg); err != nil {
		return false, 0, err
	}
	return true, f.restored, nil
}

// Resync replaces the mirror with what the installed doors' sets hold now.
// The daemon calls it when someone else changed their elements (`nftknock
// grant`, `nft add element` by hand), so that a later knock from such an
// address refreshes the right element, and a later heal restores it. On
// error the mirror stays as it was.
func (f *Firewall) Resync() error {
	if len(f.doors) == 0 {
		return errors.New("resync grants: nothing installed")
	}
	gs, err := f.Grants()
	if err != nil {
		return fmt.Errorf("resync grants: %w", err)
	}
	// Read after the kernel reported the time left: not earlier than
	// the kernel's expiry.
	now := f.now()
	mirror := make(map[grantKey]time.Time, len(gs))
	timeouts := make(map[grantKey]time.Duration, len(gs))
	for _, g := range gs {
		key := grantKey{g.Door, g.Addr}
		var exp time.Time
		if g.Timeout != 0 {
			exp = now.Add(g.Expires)
		}
		mirror[key], timeouts[key] = exp, g.Timeout
	}
	f.mirror, f.timeouts = mirror, timeouts
	return nil
}

// keep re-adds a grant that outlasts the one being made, with its own
// timeout and the time it has left as its expiration: on Linux 6.18 an add
// with another timeout than the element's replaces it and restarts its
// timer, so a plain add of the shorter grant would cut it short, while this
// leaves it as it is (or puts it back, if it went missing behind the
// mirror's back).
func (f *Firewall) keep(key grantKey, set string, exp time.Time) error {
	item, ok, err := restoreElement(f.elemKey(key.door, key.addr), exp, f.timeouts[key], f.now())
	if err != nil {
		return err
	}
	if !ok {
		return nil // ran out this very moment; the caller's clock said otherwise
	}
	m, err := setElemMessage(f.table, setSpec{name: set}, []netlink.Attribute{{Type: 1 | unix.NLA_F_NESTED, Data: item}})
	if err != nil {
		return err
	}
	return f.sendBatch(batchOf(m))
}

// batchOf wraps messages in a batch, as v0.3.0 does.
func batchOf(msgs ...netlink.Message) []netlink.Message {
	mark := func(t int) netlink.Message {
		return netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(t), Flags: netlink.Request},
			Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES},
		}
	}
	return slices.Concat([]netlink.Message{mark(unix.NFNL_MSG_BATCH_BEGIN)}, msgs, []netlink.Message{mark(unix.NFNL_MSG_BATCH_END)})
}
