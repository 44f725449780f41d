package nft

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// dumpBuffer is the receive buffer of a SetReader. The kernel fills each
// round of a dump up to the largest buffer a recvmsg on the socket has
// offered (capped at 32 KiB); a reader that offers only what it peeked, as
// plain netlink sockets do here, gets rounds of one page.
const dumpBuffer = 32 << 10

// A SetReader reads sets on a netlink connection of its own. The kernel
// dumps a set in rounds of one buffer each and walks the set from its
// start in every round: a dump takes time quadratic in the set's elements
// (a million take over a minute of kernel time on a small machine), so the
// gate reads its sets with a SetReader on another goroutine and serves
// meanwhile. Close may be called from any goroutine: a Read under way then
// fails.
type SetReader struct {
	table  string
	prefix string // attached: of the daemon's sets' names (see Firewall)
	c      *netlink.Conn
}

// Reader opens a SetReader on the table.
func (f *Firewall) Reader() (*SetReader, error) {
	c, err := f.dial(dumpBuffer)
	if err != nil {
		return nil, fmt.Errorf("open a reader of table %q: %w", f.table.Name, err)
	}
	return &SetReader{table: f.table.Name, prefix: f.prefix, c: c}, nil
}

// Read returns the live elements of set: elements whose timeout has run
// out are not listed, even before the kernel garbage-collects them.
func (r *SetReader) Read(set string) ([]Element, error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, r.table)
	ae.String(unix.NFTA_SET_ELEM_LIST_SET, r.prefix+set)
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	req, err := r.c.Send(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return nil, fmt.Errorf("read set %s: %w", set, err)
	}
	// Receive reads the whole dump, up to its done message.
	msgs, err := r.c.Receive()
	if err != nil {
		return nil, fmt.Errorf("read set %s: %w", set, err)
	}
	var out []Element
	var changes []ElementChange
	for _, m := range msgs {
		if m.Header.Sequence != req.Header.Sequence {
			continue
		}
		changes = appendElementChanges(changes[:0], m, r.prefix)
		for _, e := range changes {
			// The kernel's dump skips expired elements; this guards
			// against one that expires as it is dumped.
			if e.Timeout == 0 || e.Expires > 0 {
				out = append(out, Element{Key: e.Key, Timeout: e.Timeout, Expires: e.Expires, Comment: e.Comment})
			}
		}
	}
	return out, nil
}

// Close closes the reader's connection.
func (r *SetReader) Close() error { return r.c.Close() }

// Read returns the live elements of set, on a SetReader of its own.
func (f *Firewall) Read(set string) ([]Element, error) {
	r, err := f.Reader()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return r.Read(set)
}

// dial opens a netlink socket to nf_tables in the firewall's namespace,
// receiving into buffers of bufSize (0: what each datagram needs).
func (f *Firewall) dial(bufSize int) (*netlink.Conn, error) {
	var cc nftables.Conn
	for _, o := range f.opts {
		o(&cc)
	}
	if cc.TestDial != nil {
		return nil, errors.New("needs a real netlink socket")
	}
	return netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: cc.NetNS, MessageBufferSize: bufSize})
}
