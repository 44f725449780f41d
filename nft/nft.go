// Package nft is all of nftknock's talk with nf_tables.
//
// The daemon owns one `table inet <name>`, or in attach mode a chain of
// that name and sets prefixed <name>_ in an admin's table (OpenAttached).
// Install writes a plan (package nft/plan) into it in one atomic batch: the
// sets, the chains and their rules,
// keeping the sets of grants that are still configured with their live
// elements. Put, Replace and Delete write elements: a grant is an element
// with a timeout, which the kernel removes when it runs out, so a grant
// needs no timer in the daemon and survives a daemon restart.
//
// A Firewall that never installed (the nftknock tool's) works on the table
// the daemon installed, finding its doors in the kernel (tool.go).
package nft

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/nft/plan"
)

// socketBuffer is the receive and send buffer size asked for on the netlink
// sockets. A whole batch is one datagram, so the send buffer bounds the
// largest batch (see MaxBatch); 4 MiB holds a ruleset of many thousands of
// rules and tens of thousands of elements. It is a limit, not an
// allocation.
const socketBuffer = 4 << 20

// MaxBatch is the largest batch the Firewall sends: what the send buffer
// takes, less room for the kernel's bookkeeping. A plan larger than this
// cannot be installed; -check says so (see BatchBytes).
const MaxBatch = socketBuffer - 64<<10

// Firewall owns `table inet <name>`, or, attached to an admin's table,
// the chains and sets of its name in that table. It is not safe for
// concurrent use: the daemon gives it one owner goroutine.
type Firewall struct {
	// table is the kernel table the plan goes in: the daemon's own, or
	// the admin's in attach mode.
	table *nftables.Table
	opts  []nftables.ConnOption
	// name is the daemon's table name (the plan's Table). Attached, it
	// names the daemon's chain in the admin's table, and prefix
	// ("<name>_") starts the names of its sets and other chains there;
	// attach is the admin's chain that must jump to it. Own table: prefix
	// "" and attach nil.
	name   string
	prefix string
	attach *Attach

	// conn is a lasting netlink connection (one socket for all
	// operations), dialled on first use and dropped after any error.
	//
	// Why lasting: closing a NETLINK_NETFILTER socket right after a batch
	// that deleted anything takes 8-15ms on Linux 6.18 (by our reading,
	// nf_tables' socket-release handler waits for the deferred destruction
	// of what was deleted, an RCU grace period), so a grant costs ~40µs
	// over a lasting socket but ~13ms with one socket per operation; see
	// BenchmarkGrant and BenchmarkGrantSocketPerOp.
	//
	// Why dropped after an error: google/nftables v0.3.0 does not drain the
	// socket after a failed query, and a later one would read the stale
	// replies as its own. A fresh socket after a rare error rules that out.
	conn   *nftables.Conn
	closed bool
	// nl is the netlink socket under conn (captured when it is dialled),
	// on which batches are sent; port is its netlink port ID, which the
	// kernel stamps on the notifications of our own batches. port is the
	// one field another goroutine (a Watcher's) reads.
	nl   *netlink.Conn
	port atomic.Uint32

	// own: Install makes the table owned by the lasting socket (see
	// Own); claimed: it did, so a socket dialled after an error claims
	// the table again.
	own, claimed bool
	claiming     bool   // reset is claiming the table on a new socket
	flags        uint32 // of the table, as Install sends it (see flagsFor)
	// release is the kernel's (uname -r), which says what it supports;
	// tests replace it.
	release string

	// mode is how a grant restarts a timer on this kernel (see grantMode).
	mode grantMode
	// stats counts the batches sent and those the kernel refused.
	stats Stats

	// shapes are the doors the kernel holds sets for, as the tool's last
	// look at the table found them (tool.go): which are open_to =
	// "anyone", which grant per port.
	shapes map[string]plan.Door

	// now is the clock of element expiries; tests replace it.
	now func() time.Time
}

// Stats counts the Firewall's batches: each is one transaction, applied
// whole or, when the kernel answers with an error, not at all.
type Stats struct {
	Batches uint64 // sent
	Refused uint64 // answered with an error: nothing of them applied
}

// Stats returns the counts so far.
func (f *Firewall) Stats() Stats { return f.stats }

// grantMode is how a grant restarts the timer of an element that may or
// may not be in the set, chosen from the kernel's version at Open.
type grantMode uint8

const (
	// grantUpdate (Linux 6.12 and later, commit 4201f3938914 "set element
	// timeout update support"): one NEWSETELEM with timeout and
	// expiration adds the element or updates it in place.
	grantUpdate grantMode = iota
	// grantDestroy (Linux 6.3 and later): DESTROYSETELEM, a delete that
	// does not fail on a missing element, then NEWSETELEM.
	grantDestroy
	// grantLegacy: {delete, add} for an element believed live, {add}
	// after an abort (see putLegacy).
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

// Attach is an admin's base chain, in their `table inet Table`, that jumps
// to the daemon's chain (config attach = "inet filter input").
type Attach struct{ Table, Chain string }

// Open returns a Firewall for `table inet <table>`. It does not touch the
// ruleset: call Install. opts are passed to nftables.New; tests use
// nftables.WithNetNSFd to work in a scratch network namespace and
// nftables.WithTestDial to capture messages.
func Open(table string, opts ...nftables.ConnOption) (*Firewall, error) {
	return open(table, nil, opts)
}

// OpenAttached returns a Firewall whose plan goes in the admin's table
// a.Table, which it never creates, deletes or changes otherwise: the
// daemon's rules in a regular chain named name (and name_forward for
// forward doors), which the admin's chain a.Chain must jump to, and its
// sets named name_<set>, so that none can be the admin's.
func OpenAttached(a Attach, name string, opts ...nftables.ConnOption) (*Firewall, error) {
	if a.Table == "" || a.Chain == "" {
		return nil, errors.New("open nftables: attach needs a table and a chain")
	}
	return open(name, &a, opts)
}

func open(name string, a *Attach, opts []nftables.ConnOption) (*Firewall, error) {
	if name == "" {
		return nil, errors.New("open nftables: empty table name")
	}
	f := &Firewall{
		table:   &nftables.Table{Name: name, Family: nftables.TableFamilyINet},
		name:    name,
		opts:    slices.Clone(opts),
		now:     time.Now,
		mode:    grantModeFor(kernelRelease()),
		release: kernelRelease(),
		shapes:  map[string]plan.Door{},
	}
	if a != nil {
		f.table.Name, f.prefix, f.attach = a.Table, name+"_", a
	}
	// Dial now so a missing netlink (or a bad namespace fd) shows at start.
	if _, err := f.c(); err != nil {
		return nil, fmt.Errorf("open nftables for %s: %w", f.Where(), err)
	}
	return f, nil
}

// Table is the name of the table, as in `table inet <name>`: the daemon's
// own, or attached, the admin's.
func (f *Firewall) Table() string { return f.table.Name }

// Attached is the admin's chain the Firewall is attached to, if it is.
func (f *Firewall) Attached() *Attach { return f.attach }

// Where names what the Firewall works on for messages: "table inet
// nftknock", or "chain nftknock in table inet filter".
func (f *Firewall) Where() string {
	if f.attach == nil {
		return "table inet " + f.table.Name
	}
	return "chain " + f.name + " in table inet " + f.table.Name
}

// chainName is the kernel's name of a plan chain: its own in the daemon's
// table; attached, the daemon's name for the input chain and
// <name>_<chain> for the others.
func (f *Firewall) chainName(chain string) string {
	switch {
	case f.attach == nil:
		return chain
	case chain == plan.ChainName:
		return f.name
	}
	return f.prefix + chain
}

// ours tells whether a chain of the kernel table is the daemon's: every
// chain of its own table; attached, its chain and those it prefixes.
func (f *Firewall) ours(chain string) bool {
	return f.attach == nil || chain == f.name || strings.HasPrefix(chain, f.prefix)
}

// setName is the kernel's name of a plan set; planSet undoes it ("" for a
// set that is not the daemon's).
func (f *Firewall) setName(set string) string { return f.prefix + set }

func (f *Firewall) planSet(kernel string) string {
	if f.prefix == "" {
		return kernel
	}
	name, ok := strings.CutPrefix(kernel, f.prefix)
	if !ok {
		return ""
	}
	return name
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
		if f.claimed {
			if err := f.claim(); err != nil {
				f.reset()
				return nil, err
			}
		}
	}
	return f.conn, nil
}

// remember is a socket option of the lasting connection: it records the
// socket and its port ID as they are dialled.
func (f *Firewall) remember(c *netlink.Conn) error {
	f.nl = c
	f.port.Store(c.PID())
	return nil
}

// reset drops the connection after an error, with whatever may be left
// queued in it.
func (f *Firewall) reset() {
	if f.conn != nil {
		_ = f.conn.CloseLasting()
		f.conn = nil
	}
	f.nl = nil
	if f.claimed && !f.closed && !f.claiming {
		// Closing the socket released the table: claim it at once on a
		// new one, not at the next write, which may be hours away (and
		// until then `nft flush ruleset` would take the table). A
		// failure leaves it to the next operation.
		f.claiming = true
		_, _ = f.c()
		f.claiming = false
	}
}

// growBuffers raises the socket buffers (see socketBuffer). SO_*BUFFORCE
// needs CAP_NET_ADMIN, which nf_tables needs anyway; the plain options are
// capped by net.core.[rw]mem_max. It is best effort: the test socket of
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

// Installed tells whether the table exists in the kernel; attached,
// whether the admin's table holds the daemon's chain.
func (f *Firewall) Installed() (bool, error) {
	c, err := f.c()
	if err != nil {
		return false, err
	}
	ok, err := f.tableExists(c)
	if err != nil || !ok || f.attach == nil {
		if err != nil {
			f.reset()
		}
		return ok, err
	}
	chains, _, err := f.currentIn(c)
	if err != nil {
		f.reset()
		return false, err
	}
	return slices.ContainsFunc(chains, func(ch *nftables.Chain) bool { return ch.Name == f.name }), nil
}

// Remove deletes the table with everything in it. A table that is already
// gone is not an error. Attached, it deletes only the daemon's sets and
// chains in the admin's table; a chain the admin's ruleset still jumps to
// is left there, empty (the kernel refuses to delete it), and named in
// the error.
func (f *Firewall) Remove() error {
	if f.attach != nil {
		return f.removeAttached()
	}
	ok, err := f.Installed()
	if err != nil || !ok {
		return err
	}
	msgs, err := f.build(func(c *nftables.Conn) error { c.DelTable(f.table); return nil })
	if err == nil {
		err = f.sendBatch(msgs)
	}
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove table %q: %w", f.table.Name, ownedElsewhere(f, err))
	}
	return nil
}

// ErrStillJumpedTo is returned (wrapped) by an attached Remove that left a
// chain in place because the admin's ruleset jumps to it.
var ErrStillJumpedTo = errors.New("still jumped to")

func (f *Firewall) removeAttached() error {
	c, err := f.c()
	if err != nil {
		return err
	}
	chains, sets, err := f.current(c)
	if err != nil {
		f.reset()
		return fmt.Errorf("remove %s: %w", f.Where(), err)
	}
	if chains == nil && sets == nil {
		return nil
	}
	msgs, err := f.build(func(c *nftables.Conn) error {
		for _, ch := range chains {
			c.FlushChain(ch)
		}
		for _, s := range sets {
			c.DelSet(s)
		}
		return nil
	})
	if err == nil {
		err = f.sendBatch(msgs)
	}
	if err != nil {
		return fmt.Errorf("remove %s: %w", f.Where(), err)
	}
	var left []string
	for _, ch := range chains {
		msgs, err := f.build(func(c *nftables.Conn) error { c.DelChain(ch); return nil })
		if err == nil {
			err = f.sendBatch(msgs)
		}
		switch {
		case errors.Is(err, unix.EBUSY):
			left = append(left, ch.Name)
		case err != nil && !errors.Is(err, unix.ENOENT):
			return fmt.Errorf("remove chain %s from table inet %s: %w", ch.Name, f.table.Name, err)
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("chain %s of table inet %s is left there, empty: %w by your ruleset; take the jump (and its `chain %s {}`) out of your ruleset, then `nft delete chain inet %s %s`",
			strings.Join(left, ", "), f.table.Name, ErrStillJumpedTo, left[0], f.table.Name, left[0])
	}
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
	f.conn, f.nl = nil, nil
	return err
}
