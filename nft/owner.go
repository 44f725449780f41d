package nft

import (
	"errors"
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/nft/plan"
)

// Table ownership. A table made with NFT_TABLE_F_OWNER belongs to the
// netlink socket that made it: `nft flush ruleset` passes it by, and any
// other socket that tries to change or delete it gets EPERM. With
// NFT_TABLE_F_PERSIST (Linux 6.9) the table stays when that socket closes
// — the daemon killed, stopped, restarted — with its owner cleared, and the
// next nftknockd claims it again. Without PERSIST an owned table would go
// with the daemon and leave every port open, so on older kernels the
// table is not owned and heal (gate.Heal) puts it back instead.
const (
	tableFlagOwner   = 0x2 // NFT_TABLE_F_OWNER
	tableFlagPersist = 0x4 // NFT_TABLE_F_PERSIST
	ownedFlags       = tableFlagOwner | tableFlagPersist
)

// ownerSupported tells whether a kernel of release has NFT_TABLE_F_PERSIST.
func ownerSupported(release string) bool {
	var major, minor int
	if _, err := fmt.Sscanf(release, "%d.%d", &major, &minor); err != nil {
		return false
	}
	return major*1000+minor >= 6009
}

// Own makes the Firewall hold its table as the owner from the next
// Install on: the daemon's choice (own_table); tools and tests that write
// the table from their own sockets leave it unowned. It returns false, and
// changes nothing, attached (the table is the admin's) or on a kernel
// without NFT_TABLE_F_PERSIST.
func (f *Firewall) Own() bool {
	if f.attach != nil || !ownerSupported(f.release) {
		return false
	}
	f.own = true
	return true
}

// Owned tells whether Install makes the table owned (see Own).
func (f *Firewall) Owned() bool { return f.own }

// flagsFor is the flags the Firewall's NEWTABLE carries, given the table
// found now (and its flags): owned, owner and persist. Not owned: none on
// a new table, as before ownership (nft before 1.0.9 lists persist as a
// bare "flags" it cannot read back); on a table an owner made and left,
// its persist, which the kernel refuses to take away.
func (f *Firewall) flagsFor(found bool, now uint32) uint32 {
	switch {
	case f.own:
		return ownedFlags
	case found && ownerSupported(f.release):
		return now & tableFlagPersist
	}
	return 0
}

// withTableFlags sets the flags of each NEWTABLE in batch to the
// Firewall's: google/nftables v0.3.0 sends NFTA_TABLE_FLAGS as zero
// whatever Table.Flags says, and a zero would ask the kernel to take the
// owner flag away, which it refuses.
func (f *Firewall) withTableFlags(batch []netlink.Message) ([]netlink.Message, error) {
	if f.flags == 0 {
		return batch, nil
	}
	for i, m := range batch {
		if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWTABLE) || len(m.Data) < 4 {
			continue
		}
		attrs, err := netlink.UnmarshalAttributes(m.Data[4:])
		if err != nil {
			return nil, fmt.Errorf("NEWTABLE as the library made it: %w", err)
		}
		found := false
		for j := range attrs {
			if attrs[j].Type == unix.NFTA_TABLE_FLAGS {
				attrs[j].Data, found = binaryutil.BigEndian.PutUint32(f.flags), true
			}
		}
		if !found {
			attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_TABLE_FLAGS, Data: binaryutil.BigEndian.PutUint32(f.flags)})
		}
		data, err := netlink.MarshalAttributes(attrs)
		if err != nil {
			return nil, err
		}
		batch[i].Data = append(m.Data[:4:4], data...)
	}
	return batch, nil
}

// claim makes the table this socket's again after the Firewall dialled a
// new one (the old was dropped after an error, which released the table:
// it stays, unowned, until claimed). A table that is gone is no error:
// heal installs it anew, owned.
func (f *Firewall) claim() error {
	data, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_TABLE_NAME, Data: []byte(f.table.Name + "\x00")},
		{Type: unix.NFTA_TABLE_FLAGS, Data: binaryutil.BigEndian.PutUint32(ownedFlags)},
	})
	if err != nil {
		return err
	}
	m := netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWTABLE), Flags: netlink.Request | netlink.Acknowledge},
		Data:   append([]byte{byte(f.table.Family), unix.NFNETLINK_V0, 0, 0}, data...),
	}
	if err := f.sendBatch(batchOf(m)); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("claim %s: %w", f.Where(), err)
	}
	return nil
}

// ownedElsewhere explains EPERM from a change to the table: it is owned
// by another socket, a running nftknockd's.
func ownedElsewhere(f *Firewall, err error) error {
	if f.attach != nil || !errors.Is(err, unix.EPERM) {
		return err
	}
	return fmt.Errorf("%w (%s is owned by a running nftknockd, and only it may change it: stop it first, or ask it with `nftknock grant`/`revoke`)", err, f.Where())
}

// maxTakeOver bounds the grants takeOver carries over: it reads them with
// a dump, which the kernel makes in time quadratic in a set's size (a
// quarter of a million take it about 5 s).
const maxTakeOver = 1 << 18

// takeOver replaces a table the kernel lets no one claim (made without the
// persist flag: by a daemon that did not own it, an older nftknockd, or on
// an older kernel) with one the Firewall owns, grants and all. The grants
// are read; the old table goes and the new one, owned, comes in one batch,
// so the gate never stops; then the grants are put back with the time
// they had left. Until they are, a granted source is dropped: closed,
// never open. It returns the grant sets put back, as Install's kept.
func (f *Firewall) takeOver(p *plan.Plan) (map[string]bool, error) {
	r, err := f.Reader()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	saved := map[string][]Element{}
	n := 0
	for _, s := range p.Sets {
		if s.Role != plan.RoleGrant {
			continue
		}
		els, err := r.Read(s.Name)
		if err != nil {
			continue // not there, or not a set of this shape: nothing to carry
		}
		if n += len(els); n > maxTakeOver {
			return nil, fmt.Errorf("%s, made by a daemon that did not own it, holds more than %d grants, too many to carry over: set own_table = false, or run `nftknockd -remove` (which ends every grant) and start again", f.Where(), maxTakeOver)
		}
		saved[s.Name] = els
	}
	del, err := f.build(func(c *nftables.Conn) error { c.DelTable(f.table); return nil })
	if err != nil {
		return nil, err
	}
	f.flags = ownedFlags
	inst, err := f.installBatch(p, nil, nil, map[string]bool{})
	if err != nil {
		return nil, err
	}
	if err := f.sendBatch(batchOf(slices.Concat(del[1:len(del)-1], inst[1:len(inst)-1])...)); err != nil {
		return nil, fmt.Errorf("replace %s with one nftknockd owns: %w", f.Where(), err)
	}
	f.claimed = true
	kept := map[string]bool{}
	for _, s := range p.Sets {
		els := saved[s.Name]
		if len(els) == 0 {
			continue
		}
		if _, _, err := f.Put(s.Name, els); err != nil {
			continue // the set is fresh; the daemon's record starts without them
		}
		kept[s.Name] = true
	}
	return kept, nil
}
