package nft

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
)

// A Firewall that has not run Install (the nftknock tool's) works on the
// table the daemon installed: Doors reads the doors from the kernel, and
// Grant, Revoke and Grants look the door's sets up there instead of in the
// installed config.

// ErrNotInstalled is returned (wrapped) when the table does not exist.
var ErrNotInstalled = errors.New("not installed")

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
	for _, t := range tables {
		if t.Name == f.table.Name {
			return true, nil
		}
	}
	return false, nil
}

// Table is the name of the table, as in `table inet <name>`.
func (f *Firewall) Table() string { return f.table.Name }

// Doors lists the doors the table holds sets for, read from the kernel, in
// the order their sets were created (config order, for a table the daemon
// installed). A door that lets sources in is listed when the table has both
// of its sets, <door>_v4 and <door>_v6, in the shape Install gives them
// (addresses of the right family, timeout flag, a plain set); an open_to =
// "anyone" door when it has <door>_anyone (nf_proto, timeout flag). Sets of
// other names or shapes are not doors. The error wraps ErrNotInstalled when
// the table does not exist.
func (f *Firewall) Doors() ([]string, error) {
	sets, ok, err := f.tableSets()
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("table inet %s: %w", f.table.Name, ErrNotInstalled)
	}
	doors, anyone := doorsOf(sets)
	if len(f.doors) == 0 {
		// Not installed here: what the kernel says is what Grant,
		// Revoke and Grants go by.
		f.anyone = anyone
	}
	return doors, nil
}

// tableSets lists the table's sets, read from the kernel; ok is false
// (with no error) when the table does not exist.
func (f *Firewall) tableSets() (sets []*nftables.Set, ok bool, err error) {
	if ok, err = f.Installed(); err != nil || !ok {
		return nil, false, err
	}
	c, err := f.c()
	if err != nil {
		return nil, false, err
	}
	if sets, err = c.GetSets(f.table); err != nil {
		f.reset()
		return nil, false, fmt.Errorf("list sets of table inet %s: %w", f.table.Name, err)
	}
	return sets, true, nil
}

// AnyoneDoor tells whether door is an open_to = "anyone" door, as the
// installed config or the last Doors says: its grants open the door to
// every address of a family, and stand as the family's unspecified
// address (0.0.0.0, ::).
func (f *Firewall) AnyoneDoor(door string) bool { return f.anyone[door] }

// grantAddr is the address the mirror files a grant of door to addr under:
// addr itself, or for an open_to = "anyone" door, whose one element per
// family opens it to everyone, the family's unspecified address (as
// Install and Grants read that element back), so that all sources knocking
// such a door share one entry, as they share the element.
func (f *Firewall) grantAddr(door string, addr netip.Addr) netip.Addr {
	if !f.anyone[door] {
		return addr
	}
	if addr.Is6() {
		return netip.IPv6Unspecified()
	}
	return netip.IPv4Unspecified()
}

// doorsOf picks the doors out of a table's sets.
func doorsOf(sets []*nftables.Set) (doors []string, anyone map[string]bool) {
	shaped := map[string]bool{}
	for _, s := range sets {
		door, v6, ok := parseSetName(s.Name)
		if ok && !s.Dynamic && fits(s, grantSetSpec(s.Name, door, v6)) {
			shaped[s.Name] = true
		}
	}
	anyone = map[string]bool{}
	for _, s := range sets {
		if door, ok := strings.CutSuffix(s.Name, "_anyone"); ok && door != "" &&
			s.KeyType.GetNFTMagic() == nftables.TypeNFProto.GetNFTMagic() && s.HasTimeout && !s.Dynamic && !s.Interval && !s.IsMap {
			doors = append(doors, door)
			anyone[door] = true
			continue
		}
		door, v6, ok := parseSetName(s.Name)
		if !ok || v6 || !shaped[s.Name] || !shaped[SetName(door, true)] {
			continue
		}
		doors = append(doors, door)
	}
	return doors, anyone
}

// anyoneGrants reads the grants of an open_to = "anyone" door.
func (f *Firewall) anyoneGrants(door string) ([]Grant, error) {
	elems, err := f.elements(AnyoneSetName(door))
	if err != nil {
		return nil, err
	}
	var gs []Grant
	for _, e := range elems {
		if addr, ok := anyoneAddr(e.Key); ok {
			gs = append(gs, Grant{Door: door, Addr: addr, Timeout: e.Timeout, Expires: e.Expires})
		}
	}
	slices.SortFunc(gs, func(a, b Grant) int { return a.Addr.Compare(b.Addr) })
	return gs, nil
}

// parseSetName undoes SetName.
func parseSetName(name string) (door string, v6, ok bool) {
	if door, ok := strings.CutSuffix(name, "_v4"); ok && door != "" {
		return door, false, true
	}
	if door, ok := strings.CutSuffix(name, "_v6"); ok && door != "" {
		return door, true, true
	}
	return "", false, false
}

// kernelDoor checks that the table holds door's sets, for a Firewall that
// has not installed: the error names the doors it does hold.
func (f *Firewall) kernelDoor(door string) error {
	doors, err := f.Doors()
	if err != nil {
		return err
	}
	for _, d := range doors {
		if d == door {
			return nil
		}
	}
	if len(doors) == 0 {
		return fmt.Errorf("door %q has no sets in table inet %s, and no other door has", door, f.table.Name)
	}
	return fmt.Errorf("door %q has no sets in table inet %s; doors that do: %s", door, f.table.Name, strings.Join(doors, ", "))
}
