package nft

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Batches are built with google/nftables v0.3.0 on a capturing Conn (the
// library marshals every message as usual and sends nothing), completed
// with messages the library cannot make (elements with an expiration,
// DESTROYSETELEM), and sent by sendBatch on the Firewall's lasting socket,
// which reads the acks itself. One path for every write: a batch is one
// datagram, applied whole or not at all.

// batchTimeout bounds the wait for the kernel's acks of a batch.
const batchTimeout = 10 * time.Second

// capture is an nftables.Conn that sends nothing: its Flush hands the batch
// the library built to dial, which keeps it and acknowledges every message.
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

// build runs fill on a capturing Conn and returns the batch it queued,
// begin and end included. The library asks the kernel to echo every rule
// (NLM_F_ECHO) to learn its handle; nothing here needs handles, so the
// echo is dropped and the kernel answers each message with its ack alone.
func (f *Firewall) build(fill func(c *nftables.Conn) error) ([]netlink.Message, error) {
	k := newCapture()
	if err := fill(k.conn); err != nil {
		return nil, err
	}
	if err := k.conn.Flush(); err != nil {
		return nil, err // a marshalling error: nothing was sent
	}
	msgs := k.sent
	if len(msgs) < 2 || msgs[len(msgs)-1].Header.Type != netlink.HeaderType(unix.NFNL_MSG_BATCH_END) {
		return nil, errors.New("captured batch has no batch end")
	}
	for i := range msgs {
		msgs[i].Header.Flags &^= netlink.Echo
	}
	return msgs, nil
}

// withBefore returns batch with extra messages put before its end.
func withBefore(batch []netlink.Message, extra ...netlink.Message) []netlink.Message {
	n := len(batch) - 1
	return slices.Concat(batch[:n], extra, batch[n:])
}

// batchOf wraps messages in a batch, as the library does.
func batchOf(msgs ...netlink.Message) []netlink.Message {
	mark := func(t int) netlink.Message {
		return netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(t), Flags: netlink.Request},
			Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES},
		}
	}
	return slices.Concat([]netlink.Message{mark(unix.NFNL_MSG_BATCH_BEGIN)}, msgs, []netlink.Message{mark(unix.NFNL_MSG_BATCH_END)})
}

// batchBytes is the size of batch on the wire.
func batchBytes(batch []netlink.Message) int {
	n := 0
	for _, m := range batch {
		n += (16 + len(m.Data) + 3) &^ 3
	}
	return n
}

// sendBatch sends a whole batch (begin, messages, end) as one datagram on
// the lasting socket and reads one ack per message that asked for one. On
// any error the kernel has applied none of the batch; the socket is
// dropped with whatever is still unread.
func (f *Firewall) sendBatch(batch []netlink.Message) error {
	if n := batchBytes(batch); n > MaxBatch {
		return fmt.Errorf("batch of %d bytes is larger than the %d nftknock sends at once", n, MaxBatch)
	}
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
	f.stats.Batches++
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

// elementItem is one NFTA_LIST_ELEM: the key and, unless zero, the
// element's whole timeout and the time it has left (its expiration), in
// whole milliseconds, and its comment. NEWSETELEM with both adds the
// element with that much left, or, on Linux 6.12 and later, updates an
// element that is already there in place: its timer restarts at the
// expiration (its comment stays).
func elementItem(key []byte, timeout, expires time.Duration, comment string) ([]byte, error) {
	k, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: key}})
	if err != nil {
		return nil, err
	}
	attrs := []netlink.Attribute{{Type: unix.NFTA_SET_ELEM_KEY | unix.NLA_F_NESTED, Data: k}}
	if timeout > 0 {
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_ELEM_TIMEOUT, Data: binaryutil.BigEndian.PutUint64(uint64(timeout.Milliseconds()))})
	}
	if expires > 0 {
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_ELEM_EXPIRATION, Data: binaryutil.BigEndian.PutUint64(uint64(expires.Milliseconds()))})
	}
	if comment != "" {
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_ELEM_USERDATA, Data: commentUserdata(comment)})
	}
	return netlink.MarshalAttributes(attrs)
}

// MaxComment is the longest element comment nft accepts (libnftnl's
// NFTNL_UDATA_COMMENT_MAXLEN), in bytes.
const MaxComment = 128

// udataComment is the type of a set element's comment in its userdata
// TLVs (libnftnl's NFTNL_UDATA_SET_ELEM_COMMENT).
const udataComment = 0

// commentUserdata is comment as an element's NFTA_SET_ELEM_USERDATA, as
// nft writes it: one TLV (type, length, the text and its NUL), the text
// cut to MaxComment bytes at a character boundary. nft's syntax has no
// escapes: a double quote in a comment would make what `nft list ruleset`
// prints unreadable to `nft -f`, so it is written as a single quote, and a
// control character as a space.
func commentUserdata(comment string) []byte {
	if len(comment) > MaxComment {
		cut := MaxComment
		for cut > 0 && !utf8.RuneStart(comment[cut]) {
			cut--
		}
		comment = comment[:cut]
	}
	b := make([]byte, 0, 2+len(comment)+1)
	b = append(b, udataComment, byte(len(comment)+1))
	for i := 0; i < len(comment); i++ {
		switch c := comment[i]; {
		case c == '"':
			b = append(b, '\'')
		case c < 0x20 || c == 0x7f:
			b = append(b, ' ')
		default:
			b = append(b, c)
		}
	}
	return append(b, 0)
}

// commentOf reads the comment TLV of an element's or a rule's userdata
// (type 0 in both, libnftnl's NFTNL_UDATA_SET_ELEM_COMMENT and
// NFTNL_UDATA_RULE_COMMENT): "" when it has none, or when the TLVs do not
// parse. Not the library's userdata.Get: v0.3.0 slices before it checks
// the length, and panics on a TLV that runs past the end, which any tool
// may have written.
func commentOf(udata []byte) string {
	for len(udata) >= 2 {
		typ, n := udata[0], int(udata[1])
		if len(udata) < 2+n {
			return ""
		}
		if typ == udataComment {
			return strings.TrimRight(string(udata[2:2+n]), "\x00")
		}
		udata = udata[2+n:]
	}
	return ""
}

// setElemMessage is NFT_MSG_<typ>SETELEM (unix.NFT_MSG_NEWSETELEM, …) for
// items of set, as nft sends it: table, set name, set ID (when the set is
// added in the same batch), elements.
func (f *Firewall) setElemMessage(typ int, set string, id uint32, items [][]byte) (netlink.Message, error) {
	list := make([]netlink.Attribute, len(items))
	for i, it := range items {
		list[i] = netlink.Attribute{Type: uint16(i+1) | unix.NLA_F_NESTED, Data: it}
	}
	elems, err := netlink.MarshalAttributes(list)
	if err != nil {
		return netlink.Message{}, err
	}
	attrs := []netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: []byte(f.table.Name + "\x00")},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte(f.setName(set) + "\x00")},
	}
	if id != 0 {
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_SET_ELEM_LIST_SET_ID, Data: binaryutil.BigEndian.PutUint32(id)})
	}
	data, err := netlink.MarshalAttributes(append(attrs,
		netlink.Attribute{Type: unix.NFTA_SET_ELEM_LIST_ELEMENTS | unix.NLA_F_NESTED, Data: elems}))
	if err != nil {
		return netlink.Message{}, err
	}
	flags := netlink.Request | netlink.Acknowledge
	if typ == unix.NFT_MSG_NEWSETELEM {
		flags |= netlink.Create
	}
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ), Flags: flags},
		Data:   append([]byte{byte(f.table.Family), unix.NFNETLINK_V0, 0, 0}, data...),
	}, nil
}
