package nft

import (
	"errors"
	"fmt"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Element is one element of a set, as Put writes it and Read reads it.
type Element struct {
	Key []byte
	// Timeout is the element's whole timeout (0: none); Expires the time
	// it has left, which Put sets (0: all of Timeout).
	Timeout, Expires time.Duration
	// Live tells Put that the element may be in the set already and its
	// timer must restart (the legacy mode needs to know; see putLegacy).
	Live bool
	// Comment is the element's comment, as `nft add element … { a
	// comment "…" }` sets it and `nft list set` shows it: who made a
	// grant. Put cuts it to MaxComment bytes. A Put that only restarts a
	// live element's timer (Linux 6.12 and later) leaves the comment the
	// element has.
	Comment string
}

// Element writes go in chunks, as cs-firewall-bouncer writes its
// decisions: elemChunk elements to a message (the element list is one
// netlink attribute, whose length must fit 16 bits: about 1000 IPv6
// elements), chunkMessages messages to a batch. A batch the kernel
// refuses is written again one element at a time, so one bad element
// costs itself, not its chunk.
const (
	elemChunk     = 256
	chunkMessages = 64
)

// Put adds els to set, or restarts the timer of those already there, each
// with its Timeout and Expires, never failing for an element that is
// missing, live, or expired but not yet collected (how depends on the
// kernel: see grantMode). It returns the elements the kernel refused, one
// by one (a full set refuses more), with the first refusal's error; err
// alone is a failure to talk to the kernel at all.
func (f *Firewall) Put(set string, els []Element) (refused []Element, first error, err error) {
	if f.mode == grantLegacy {
		return f.putLegacy(set, els)
	}
	for start := 0; start < len(els); start += elemChunk * chunkMessages {
		part := els[start:min(len(els), start+elemChunk*chunkMessages)]
		batch, berr := f.putBatch(set, part)
		if berr != nil {
			return refused, first, berr
		}
		serr := f.sendBatch(batch)
		var errno unix.Errno
		switch {
		case serr == nil:
			continue
		case !errors.As(serr, &errno):
			return refused, first, serr
		}
		// The kernel refused the batch: one at a time.
		for _, e := range part {
			if batch, berr = f.putBatch(set, []Element{e}); berr != nil {
				return refused, first, berr
			}
			if serr := f.sendBatch(batch); serr != nil {
				if !errors.As(serr, &errno) {
					return refused, first, serr
				}
				refused = append(refused, e)
				if first == nil {
					first = serr
				}
			}
		}
	}
	return refused, first, nil
}

// putBatch is the batch that puts els: in the update mode NEWSETELEM with
// timeout and expiration; in the destroy mode a DESTROYSETELEM of each
// first.
func (f *Firewall) putBatch(set string, els []Element) ([]netlink.Message, error) {
	var msgs []netlink.Message
	for start := 0; start < len(els); start += elemChunk {
		part := els[start:min(len(els), start+elemChunk)]
		adds := make([][]byte, len(part))
		var dels [][]byte
		for i, e := range part {
			expires := e.Expires
			if expires == 0 && f.mode == grantUpdate {
				expires = e.Timeout // restart a live element's timer
			}
			item, err := elementItem(e.Key, e.Timeout, expires, e.Comment)
			if err != nil {
				return nil, err
			}
			adds[i] = item
			if f.mode == grantDestroy {
				if item, err = elementItem(e.Key, 0, 0, ""); err != nil {
					return nil, err
				}
				dels = append(dels, item)
			}
		}
		if dels != nil {
			m, err := f.setElemMessage(nftMsgDestroySetElem, set, 0, dels)
			if err != nil {
				return nil, err
			}
			msgs = append(msgs, m)
		}
		m, err := f.setElemMessage(unix.NFT_MSG_NEWSETELEM, set, 0, adds)
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, m)
	}
	return batchOf(msgs...), nil
}

// putLegacy is Put on a kernel older than 6.3, which has neither
// DESTROYSETELEM nor element updates, one element at a time. Two kernel
// facts shape it (pinned by TestKernelReaddDoesNotRefresh and
// TestKernelDeleteExpiredRollsBack): adding an element that is there
// already, with the same timeout, leaves its expiry alone, so a refresh is
// {delete, add}; and deleting an element whose timeout has just run out
// fails with ENOENT and aborts the whole batch. So an element marked Live
// gets {delete, add}, and one that the kernel aborts with ENOENT is sent
// again as {add}.
func (f *Firewall) putLegacy(set string, els []Element) (refused []Element, first error, err error) {
	for _, e := range els {
		item, err := elementItem(e.Key, e.Timeout, e.Expires, e.Comment)
		if err != nil {
			return refused, first, err
		}
		add, err := f.setElemMessage(unix.NFT_MSG_NEWSETELEM, set, 0, [][]byte{item})
		if err != nil {
			return refused, first, err
		}
		var serr error
		if e.Live {
			key, _ := elementItem(e.Key, 0, 0, "")
			del, err := f.setElemMessage(unix.NFT_MSG_DELSETELEM, set, 0, [][]byte{key})
			if err != nil {
				return refused, first, err
			}
			serr = f.sendBatch(batchOf(del, add))
		}
		if !e.Live || errors.Is(serr, unix.ENOENT) {
			// Not there, or the kernel expired it before our estimate did.
			serr = f.sendBatch(batchOf(add))
		}
		var errno unix.Errno
		switch {
		case serr == nil:
		case errors.As(serr, &errno):
			refused = append(refused, e)
			if first == nil {
				first = serr
			}
		default:
			return refused, first, serr
		}
	}
	return refused, first, nil
}

// Delete removes the elements of keys from set. An element that is not
// there (never added, expired, deleted already) is not an error.
func (f *Firewall) Delete(set string, keys [][]byte) error {
	typ := nftMsgDestroySetElem
	if f.mode == grantLegacy {
		typ = unix.NFT_MSG_DELSETELEM
	}
	for _, k := range keys {
		item, err := elementItem(k, 0, 0, "")
		if err != nil {
			return err
		}
		m, err := f.setElemMessage(typ, set, 0, [][]byte{item})
		if err != nil {
			return err
		}
		// One at a time: in the legacy mode a missing element aborts
		// its batch.
		if err := f.sendBatch(batchOf(m)); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete from set %s: %w", set, err)
		}
	}
	return nil
}

// Replace makes set hold exactly els, in one batch: a port set that a
// rotating door's window turn rewrites.
func (f *Firewall) Replace(set string, keys [][]byte) error {
	batch, err := f.build(func(c *nftables.Conn) error {
		s := &nftables.Set{Table: f.table, Name: f.setName(set)}
		c.FlushSet(s)
		if len(keys) == 0 {
			return nil
		}
		els := make([]nftables.SetElement, len(keys))
		for i, k := range keys {
			els[i] = nftables.SetElement{Key: k}
		}
		return c.SetAddElements(s, els)
	})
	if err == nil {
		err = f.sendBatch(batch)
	}
	if err != nil {
		return fmt.Errorf("replace the elements of set %s: %w", set, err)
	}
	return nil
}
