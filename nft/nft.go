// Package nft is all of nftknock's talk with nf_tables.
//
// The daemon owns one `table inet <name>`. Install writes its whole ruleset
// in one atomic batch: per door, two sets (<door>_v4, <door>_v6, flags
// timeout) of sources that completed the door's knock sequence, and one
// input chain that lets those sources reach the door's opened ports, drops
// everyone else there, and sends knock packets to the daemon over NFLOG.
// Grant adds a source to a door's set with a timeout; the kernel removes it
// when the timeout runs out, so a grant needs no timer in the daemon and
// survives a daemon restart.
package nft

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// expirySlack is how long past its computed expiry the mirror still treats
// an element as possibly live. The kernel rounds timeouts up to whole
// jiffies, so an element may outlive our estimate by a few milliseconds.
// Erring towards "live" is cheap (a refresh whose delete finds nothing falls
// back to a plain add); erring towards "gone" is not: a plain add onto an
// element the kernel still holds does not refresh it, and the grant would
// lapse.
const expirySlack = time.Second

// socketBuffer is the receive and send buffer size asked for on the netlink
// socket. google/nftables v0.3.0 sends a whole batch as one datagram, sends
// every rule with NLM_F_ECHO, and reads no reply before the whole batch is
// sent, so the kernel queues one ack per message plus an echo of every rule
// at once. With the default 208 KiB buffers, measured on Linux 6.18: an
// Install of 20 doors (~180 messages) fails with ENOBUFS although the kernel
// committed the batch, and the unread replies poison a lasting socket; one
// of 100 doors cannot even be sent (EMSGSIZE). 4 MiB holds thousands of
// messages; it is a limit, not an allocation.
const socketBuffer = 4 << 20

// Firewall owns `table inet <name>`. It is not safe for concurrent use: the
// daemon gives it one owner goroutine.
type Firewall struct {
	table *nftables.Table
	opts  []nftables.ConnOption

	// conn is a lasting netlink connection (one socket for all
	// operations), dialled on first use and dropped after any error.
	//
	// Why lasting: closing a NETLINK_NETFILTER socket right after a batch
	// that deleted anything takes 8-15ms on Linux 6.18 (by our reading,
	// nf_tables' socket-release handler waits for the deferred destruction
	// of what was deleted, an RCU grace period). So a refresh (delete + add) costs ~40µs over a
	// lasting socket but ~13ms with one socket per operation; see
	// BenchmarkGrant and BenchmarkGrantSocketPerOp.
	//
	// Why dropped after an error: v0.3.0 does not drain the socket after a
	// failed batch (that fix came later). On this kernel the abort path
	// still acks every message, so the socket stays in step (see
	// TestKernelLastingConnAfterFailedBatch); but an early return in Flush
	// (ENOBUFS, EPERM) leaves replies unread, and a later query would read
	// them as its own. A fresh socket after a rare error rules that out.
	conn *nftables.Conn

	closed bool

	// mode is how Grant restarts a timer on this kernel (see grantMode).
	mode grantMode
	// stats counts the batches sent and those the kernel refused.
	stats Stats

	// now is the clock of the mirror; tests replace it.
	now func() time.Time

	// doors are the door names of the installed config, in config order.
	doors []string
	// anyone are the installed open_to = "anyone" doors.
	anyone map[string]bool
	// rotating are the installed rotating doors, and rotation the knocks
	// each rotating door accepts now, as Rotate last set them.
	rotating map[string]bool
	rotation map[string]knocksNow

	// mirror is when each granted element expires, as far as this process
	// knows: seeded from the kernel by Install, updated by Grant and
	// Revoke, trimmed by Prune. It only chooses how Grant talks to the
	// kernel; the kernel remains the truth (see Grants).
	mirror map[grantKey]time.Time

	// The rest serves self-healing (heal.go, watch.go). timeouts is the
	// whole timeout of each mirrored grant, kept beside mirror and trimmed
	// with it, so that a grant restored after its set was deleted gets its
	// original timeout back; nrules is the rule count of the installed
	// chain and sets the names of its sets; restored counts the grants
	// the last Install put back.
	timeouts map[grantKey]time.Duration
	nrules   int
	sets     []string
	restored int
	// nl is the netlink socket under conn (captured when it is dialled)
	// and port its netlink port ID, which the kernel stamps on the
	// notifications of our own batches. port is the one field another
	// goroutine (a Watcher's) reads.
	nl   *netlink.Conn
	port atomic.Uint32
}

// Stats counts the Firewall's batches: each is one transaction, applied
// whole or, when the kernel answers with an error, not at all.
type Stats struct {
	Batches uint64 // sent
	Refused uint64 // answered with an error: nothing of them applied
}

// Stats returns the counts so far.
func (f *Firewall) Stats() Stats { return f.stats }

// grantMode is how Grant restarts the timer of an element that may or may
// not be in the set, chosen from the kernel's version at Open.
type grantMode uint8

const (
	// grantUpdate (Linux 6.12 and later, commit 4201f3938914 "set element
	// timeout update support"): one NEWSETELEM with timeout and
	// expiration adds the element or updates it in place.
	grantUpdate grantMode = iota
	// grantDestroy (Linux 6.3 and later): DESTROYSETELEM, a delete that
	// does not fail on a missing element, then NEWSETELEM.
	grantDestroy
	// grantLegacy: {delete, add} guided by the mirror, {add} after an
	// abort (see grantLegacy).
	grantLegacy
)

func (m grantMode) String() string {
	return [...]string{"update", "destroy+add", "delete+add"}[m]
}

// grantModeFor picks the grant mode for a kernel release such as
// "6.18.44-fc-v1045". A release it cannot read gets the legacy mode,
// which works everywhere.
func grantModeFor(release string) grantMode {
	var major, minor int
	if _, err := fmt.Sscanf(release, "%d.%d", &major, &minor); err != nil {
		return grantLegacy
	}
	switch v := major*1000 + minor; {
	case v >= 6012:
		return grantUpdate
	case v >= 6003:
		return grantDestroy
	}
	return grantLegacy
}

// kernelRelease is uname -r.
func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

type grantKey struct {
	door string
	addr netip.Addr
}

// Grant is one live element of a door set.
type Grant struct {
	Door string
	Addr netip.Addr
	// Timeout is the element's whole timeout; Expires is the time left.
	Timeout, Expires time.Duration
}

// Open returns a Firewall for `table inet <table>`. It does not touch the
// ruleset: call Install. opts are passed to nftables.New; tests use
// nftables.WithNetNSFd to work in a scratch network namespace and
// nftables.WithTestDial to capture messages.
func Open(table string, opts ...nftables.ConnOption) (*Firewall, error) {
	if table == "" {
		return nil, errors.New("open nftables: empty table name")
	}
	f := &Firewall{
		table:  &nftables.Table{Name: table, Family: nftables.TableFamilyINet},
		opts:   slices.Clone(opts),
		now:    time.Now,
		mode:   grantModeFor(kernelRelease()),
		mirror: map[grantKey]time.Time{},

		rotation: map[string]knocksNow{},

		timeouts: map[grantKey]time.Duration{},
	}
	// Dial now so a missing netlink (or a bad namespace fd) shows at start.
	if _, err := f.c(); err != nil {
		return nil, fmt.Errorf("open nftables for table %q: %w", table, err)
	}
	return f, nil
}

// c returns the lasting connection, dialling it if needed.
func (f *Firewall) c() (*nftables.Conn, error) {
	if f.closed {
		return nil, errors.New("firewall is closed")
	}
	if f.conn == nil {
		opts := append(slices.Clone(f.opts), nftables.AsLasting(), nftables.WithSockOptions(growBuffers, f.remember))
		c, err := nftables.New(opts...)
		if err != nil {
			return nil, err
		}
		f.conn = c
	}
	return f.conn, nil
}

// reset drops the connection after an error, with whatever v0.3.0 may have
// left queued in it: unread replies, or messages of a batch never flushed.
func (f *Firewall) reset() {
	if f.conn != nil {
		_ = f.conn.CloseLasting()
		f.conn = nil
	}
	f.nl = nil
}

// growBuffers raises the socket buffers (see socketBuffer). SO_*BUFFORCE
// needs CAP_NET_ADMIN, which nf_tables needs anyway; the plain options are
// capped by net.core.[rw]mem_max. It is best effort: a smaller buffer only
// matters for configs of about 20 doors or more, and the test socket of
// WithTestDial has no file descriptor at all.
func growBuffers(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	_ = rc.Control(func(fd uintptr) {
		for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], socketBuffer) != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], socketBuffer)
			}
		}
	})
	return nil
}

// flush sends the queued batch, dropping the connection if it failed.
//
// ENOENT is the exception: the kernel refused the batch (a delete of an
// element that had just expired, see Grant) and acknowledged every message
// of it, so the socket holds nothing unread and Grant's retry can use it.
func (f *Firewall) flush(c *nftables.Conn) error {
	f.stats.Batches++
	if err := c.Flush(); err != nil {
		var errno unix.Errno
		if errors.As(err, &errno) {
			f.stats.Refused++
		}
		if !errors.Is(err, unix.ENOENT) {
			f.reset()
		}
		return err
	}
	return nil
}

// Grant lets addr through door's opened ports for d, counted from now: it
// adds addr to the door's set with timeout d, or restarts the timeout if
// addr is already there, in one batch that the kernel never refuses for
// an element that is missing, live, or expired but not yet collected.
//
// How depends on the kernel (see grantMode): from Linux 6.12 one
// NEWSETELEM that carries the expiration as well as the timeout adds the
// element or restarts its timer in place; from 6.3 a DESTROYSETELEM (a
// delete that does not fail on a missing element) and a NEWSETELEM go in
// one batch; before that, a mirror of expiries decides between {delete,
// add} and {add}, and an aborted {delete, add} is retried as {add}.
//
// An element the mirror knows to outlast d (a longer grant from `nftknock
// grant`) is left as it is, never shortened (see keep).
func (f *Firewall) Grant(door string, addr netip.Addr, d time.Duration) error {
	addr = addr.Unmap().WithZone("")
	if err := f.grant(door, addr, d); err != nil {
		return fmt.Errorf("grant %s to %s: %w", door, addr, err)
	}
	return nil
}

func (f *Firewall) grant(door string, addr netip.Addr, d time.Duration) error {
	set, err := f.doorSet(door, addr)
	if err != nil {
		return err
	}
	if d < time.Millisecond {
		// The kernel counts in milliseconds, and a zero timeout would
		// mean "never expires".
		return fmt.Errorf("timeout %v is under a millisecond", d)
	}
	key := grantKey{door, f.grantAddr(door, addr)}
	exp, known := f.mirror[key]
	now := f.now()
	if known && f.live(exp, now) && (exp.IsZero() || exp.After(now.Add(d))) {
		// The element outlasts d (a longer grant from `nftknock grant`,
		// or one from before a reload that shortened open_for). A knock
		// never shortens a grant: re-add it as it is (see keep).
		return f.keep(key, set.Name, exp)
	}
	switch f.mode {
	case grantUpdate, grantDestroy:
		var batch []netlink.Message
		if batch, err = f.refreshBatch(set.Name, f.elemKey(door, addr), d); err == nil {
			err = f.sendBatch(batch)
		}
	default:
		err = f.grantLegacy(set, f.elemKey(door, addr), d, (known && f.live(exp, now)) || len(f.doors) == 0)
	}
	if err != nil {
		return err
	}
	// Read the clock after the kernel has set its expiry, so ours is never
	// the earlier of the two.
	f.mirror[key] = f.now().Add(d)
	f.timeouts[key] = d
	return nil
}

// refreshBatch is the one batch that gives the element key of set a
// timeout d starting now, whether it is there or not: in grantUpdate mode
// a NEWSETELEM with timeout and expiration both d (an element already
// there is updated in place, its timer restarted); in grantDestroy mode a
// DESTROYSETELEM and a NEWSETELEM.
func (f *Firewall) refreshBatch(set string, key []byte, d time.Duration) ([]netlink.Message, error) {
	spec := setSpec{name: set}
	expires := d
	if f.mode == grantDestroy {
		expires = 0 // a fresh element's expiration is its timeout
	}
	item, err := elementItem(key, d, expires)
	if err != nil {
		return nil, err
	}
	add, err := setElemMessage(f.table, spec, []netlink.Attribute{{Type: 1 | unix.NLA_F_NESTED, Data: item}})
	if err != nil || f.mode == grantUpdate {
		return batchOf(add), err
	}
	if item, err = elementItem(key, 0, 0); err != nil {
		return nil, err
	}
	del, err := setElemMessage(f.table, spec, []netlink.Attribute{{Type: 1 | unix.NLA_F_NESTED, Data: item}})
	del.Header.Type = netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | nftMsgDestroySetElem)
	return batchOf(del, add), err
}

// grantLegacy is Grant on a kernel older than 6.3, which has neither
// DESTROYSETELEM nor element updates. Two kernel facts shape it (pinned by
// TestKernelReaddDoesNotRefresh and TestKernelDeleteExpiredRollsBack):
// adding an element that is there already, with the same timeout, leaves
// its expiry alone, so a refresh is {delete, add}; and deleting an element
// whose timeout has just run out fails with ENOENT and aborts the whole
// batch. So refresh says whether the mirror believes the element live
// (or there is no mirror: the nftknock tool); a {delete, add} that the
// kernel aborts with ENOENT is sent again as {add}.
func (f *Firewall) grantLegacy(set *nftables.Set, key []byte, d time.Duration, refresh bool) error {
	elem := []nftables.SetElement{{Key: key, Timeout: d}}
	send := func(refresh bool) error {
		c, err := f.c()
		if err != nil {
			return err
		}
		if refresh {
			if err := c.SetDeleteElements(set, []nftables.SetElement{{Key: key}}); err != nil {
				f.reset()
				return err
			}
		}
		if err := c.SetAddElements(set, elem); err != nil {
			f.reset()
			return err
		}
		return f.flush(c)
	}
	err := send(refresh)
	if refresh && errors.Is(err, unix.ENOENT) {
		// The kernel expired it before our estimate did.
		err = send(false)
	}
	return err
}

// Revoke removes addr from door's set at once. An element that is already
// gone (never granted, expired, revoked) is not an error.
func (f *Firewall) Revoke(door string, addr netip.Addr) error {
	addr = addr.Unmap().WithZone("")
	if err := f.revoke(door, addr); err != nil {
		return fmt.Errorf("revoke %s from %s: %w", door, addr, err)
	}
	return nil
}

func (f *Firewall) revoke(door string, addr netip.Addr) error {
	set, err := f.doorSet(door, addr)
	if err != nil {
		return err
	}
	c, err := f.c()
	if err != nil {
		return err
	}
	if err := c.SetDeleteElements(set, []nftables.SetElement{{Key: f.elemKey(door, addr)}}); err != nil {
		f.reset()
		return err
	}
	if err := f.flush(c); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	delete(f.mirror, grantKey{door, f.grantAddr(door, addr)})
	delete(f.timeouts, grantKey{door, f.grantAddr(door, addr)})
	return nil
}

// Grants reads every live element of every installed door's sets from the
// kernel, by door in config order, then IPv4 before IPv6, then address.
// Elements whose timeout has run out are not listed, even before the kernel
// garbage-collects them. Without Install (the nftknock tool), the doors are
// those the kernel holds sets for (see Doors). A grant of an open_to =
// "anyone" door has the unspecified address of its family.
func (f *Firewall) Grants() ([]Grant, error) {
	doors := f.doors
	if len(doors) == 0 {
		var err error
		if doors, err = f.Doors(); err != nil {
			return nil, err
		}
	}
	var grants []Grant
	for _, door := range doors {
		if f.anyone[door] {
			gs, err := f.anyoneGrants(door)
			if err != nil {
				return nil, fmt.Errorf("list grants of door %s: %w", door, err)
			}
			grants = append(grants, gs...)
			continue
		}
		for _, v6 := range []bool{false, true} {
			elems, err := f.elements(SetName(door, v6))
			if err != nil {
				return nil, fmt.Errorf("list grants of door %s: %w", door, err)
			}
			var gs []Grant
			for _, e := range elems {
				addr, ok := netip.AddrFromSlice(e.Key)
				if !ok {
					continue
				}
				gs = append(gs, Grant{Door: door, Addr: addr, Timeout: e.Timeout, Expires: e.Expires})
			}
			slices.SortFunc(gs, func(a, b Grant) int { return a.Addr.Compare(b.Addr) })
			grants = append(grants, gs...)
		}
	}
	return grants, nil
}

// elements reads a set of the table from the kernel.
func (f *Firewall) elements(set string) ([]nftables.SetElement, error) {
	c, err := f.c()
	if err != nil {
		return nil, err
	}
	elems, err := c.GetSetElements(&nftables.Set{Table: f.table, Name: set})
	if err != nil {
		f.reset()
		return nil, err
	}
	// The kernel's dump already skips expired elements; this guards
	// against one that expires as it is being dumped.
	live := elems[:0]
	for _, e := range elems {
		if e.Timeout == 0 || e.Expires > 0 {
			live = append(live, e)
		}
	}
	return live, nil
}

// Prune forgets mirror entries that have expired by now, so the mirror
// stays as small as the set of live grants. The daemon calls it from its
// sweep timer.
func (f *Firewall) Prune(now time.Time) {
	for k, exp := range f.mirror {
		if !f.live(exp, now) {
			delete(f.mirror, k)
			delete(f.timeouts, k)
		}
	}
}

// live tells whether an element expiring at exp may still be in the kernel.
// A zero exp is an element without timeout.
func (f *Firewall) live(exp, now time.Time) bool {
	return exp.IsZero() || now.Before(exp.Add(expirySlack))
}

// Remove deletes the table with everything in it. A table that is already
// gone is not an error.
func (f *Firewall) Remove() error {
	c, err := f.c()
	if err != nil {
		return fmt.Errorf("remove table %q: %w", f.table.Name, err)
	}
	c.DelTable(f.table)
	if err := f.flush(c); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove table %q: %w", f.table.Name, err)
	}
	f.doors = nil
	clear(f.mirror)
	clear(f.timeouts)
	return nil
}

// Close releases the netlink socket. It leaves the ruleset in place: the
// grants it holds go on expiring in the kernel.
func (f *Firewall) Close() error {
	f.closed = true
	if f.conn == nil {
		return nil
	}
	err := f.conn.CloseLasting()
	f.conn = nil
	return err
}

// doorSet is the set of door that holds addr's family.
func (f *Firewall) doorSet(door string, addr netip.Addr) (*nftables.Set, error) {
	if !addr.IsValid() {
		return nil, errors.New("invalid address")
	}
	if len(f.doors) == 0 {
		// Not installed by this process (the nftknock tool): ask the
		// kernel which doors the table has.
		if err := f.kernelDoor(door); err != nil {
			return nil, err
		}
	} else if !slices.Contains(f.doors, door) {
		return nil, fmt.Errorf("door %q is not installed", door)
	}
	name := SetName(door, addr.Is6())
	if f.anyone[door] {
		name = AnyoneSetName(door)
	}
	return &nftables.Set{
		Table:      f.table,
		Name:       name,
		HasTimeout: true,
	}, nil
}

// elemKey is the set element that grants addr through door. For an
// open_to = "anyone" door the unspecified address of a family stands for
// every address of it, and the element is the family (meta nfproto).
func (f *Firewall) elemKey(door string, addr netip.Addr) []byte {
	if !f.anyone[door] {
		return addr.AsSlice()
	}
	return familyKey(addr)
}

// elementKey is elemKey for a planned set.
func elementKey(set setSpec, addr netip.Addr) []byte {
	if set.anyone() {
		return familyKey(addr)
	}
	return addr.AsSlice()
}

func familyKey(addr netip.Addr) []byte {
	if addr.Is6() {
		return []byte{unix.NFPROTO_IPV6}
	}
	return []byte{unix.NFPROTO_IPV4}
}

// anyoneAddr undoes elemKey for an anyone set's element.
func anyoneAddr(key []byte) (netip.Addr, bool) {
	switch {
	case len(key) == 1 && key[0] == unix.NFPROTO_IPV4:
		return netip.IPv4Unspecified(), true
	case len(key) == 1 && key[0] == unix.NFPROTO_IPV6:
		return netip.IPv6Unspecified(), true
	}
	return netip.Addr{}, false
}
