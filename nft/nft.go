// Package nft is all of nftknock's talk with nf_tables.
//
// The daemon owns one `table inet <name>`. Install writes a plan (package
// nft/plan) into it in one atomic batch: the sets, the chain and its rules,
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
		shapes: map[string]plan.Door{},
	}
	// Dial now so a missing netlink (or a bad namespace fd) shows at start.
	if _, err := f.c(); err != nil {
		return nil, fmt.Errorf("open nftables for table %q: %w", table, err)
	}
	return f, nil
}

// Table is the name of the table, as in `table inet <name>`.
func (f *Firewall) Table() string { return f.table.Name }

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

// Installed tells whether the table exists in the kernel.
func (f *Firewall) Installed() (bool, error) {
	c, err := f.c()
	if err != nil {
		return false, err
	}
	tables, err := c.ListTablesOfFamily(f.table.Family)
	if err != nil {
		f.reset()
		return false, fmt.Errorf("list tables: %w", err)
	}
	return slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == f.table.Name }), nil
}

// Remove deletes the table with everything in it. A table that is already
// gone is not an error.
func (f *Firewall) Remove() error {
	ok, err := f.Installed()
	if err != nil || !ok {
		return err
	}
	msgs, err := f.build(func(c *nftables.Conn) error { c.DelTable(f.table); return nil })
	if err == nil {
		err = f.sendBatch(msgs)
	}
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove table %q: %w", f.table.Name, err)
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
