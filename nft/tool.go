package nft

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/nft/plan"
)

// The nftknock tool's Firewall never installs: it works on the table the
// daemon installed, and finds the doors there. Doors reads them from the
// kernel's sets; Grant, Revoke and Grants look a door's sets up there. A
// running daemon hears of what the tool changes through nf_tables'
// notifications (watch.go) and takes it into its ledger.

// ErrNotInstalled is returned (wrapped) when the table does not exist.
var ErrNotInstalled = errors.New("not installed")

// Grant is one live element of a door set.
type Grant struct {
	Door string
	// Addr is the address let in; for an open_to = "anyone" door, the
	// unspecified address of the family the element opens.
	Addr netip.Addr
	// Port is the one port the grant opens, for a door that grants per
	// port (an fwknop door); the zero Port for a grant of all the door's
	// opened ports.
	Port config.Port
	// Timeout is the element's whole timeout; Expires is the time left.
	Timeout, Expires time.Duration
	// Comment is the element's comment: who made the grant, when the
	// daemon knew (the key of a public-key SPA knock).
	Comment string
}

// Doors lists the doors the table holds sets for, read from the kernel, in
// the order their sets were created (config order, for a table the daemon
// installed). A door that lets sources in is listed when the table has both
// of its sets, <door>_v4 and <door>_v6, in the shape Install gives them
// (addresses of the right family, or for a door that grants per port
// `ipv4_addr . inet_proto . inet_service` and its IPv6 twin; timeout flag,
// a plain set); an open_to = "anyone" door when it has <door>_anyone
// (nf_proto, timeout flag). Sets of other names or shapes are not doors.
// The error wraps ErrNotInstalled when the table does not exist.
func (f *Firewall) Doors() ([]string, error) {
	sets, ok, err := f.tableSets()
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%s: %w", f.Where(), ErrNotInstalled)
	}
	doors, shapes := doorsOf(sets)
	f.shapes = shapes
	return doors, nil
}

// tableSets lists the daemon's sets of the table, read from the kernel,
// under the plan's names (attached, the prefix taken off, and the admin's
// own sets left out); ok is false (with no error) when the table does not
// exist (attached: when the daemon's chain is not in it).
func (f *Firewall) tableSets() (sets []*nftables.Set, ok bool, err error) {
	if ok, err = f.Installed(); err != nil || !ok {
		return nil, false, err
	}
	c, err := f.c()
	if err != nil {
		return nil, false, err
	}
	found, err := c.GetSets(f.table)
	if err != nil {
		f.reset()
		return nil, false, fmt.Errorf("list sets of table inet %s: %w", f.table.Name, err)
	}
	for _, s := range found {
		if name := f.planSet(s.Name); name != "" && !s.Anonymous {
			c := *s
			c.Name = name
			sets = append(sets, &c)
		}
	}
	return sets, true, nil
}

// SetNames lists the names of the daemon's sets (as the plan names them);
// none when the table does not exist.
func (f *Firewall) SetNames() ([]string, error) {
	sets, _, err := f.tableSets()
	var names []string
	for _, s := range sets {
		names = append(names, s.Name)
	}
	return names, err
}

// AnyoneDoor tells whether door is an open_to = "anyone" door, as the last
// Doors found it: its grants open the door to every address of a family,
// and stand as the family's unspecified address (0.0.0.0, ::).
func (f *Firewall) AnyoneDoor(door string) bool { return f.shapes[door].Anyone }

// PerPortDoor tells whether door grants per port (an fwknop door), as the
// last Doors found it: each grant opens one port, which it names.
func (f *Firewall) PerPortDoor(door string) bool { return f.shapes[door].PerPort }

// doorsOf picks the doors out of a table's sets, with what their sets'
// shape tells of them.
func doorsOf(sets []*nftables.Set) (doors []string, shapes map[string]plan.Door) {
	// shaped: the grant sets of a door, by name; true for a per-port one.
	shaped := map[string]bool{}
	for _, s := range sets {
		door, v6, ok := parseSetName(s.Name)
		if !ok || s.Dynamic || !s.HasTimeout || s.IsMap || s.Interval || s.Concatenation {
			continue
		}
		addrKey, portKey := pick(v6, nftables.TypeIP6Addr, nftables.TypeIPAddr), plan.PortKey(v6)
		switch s.KeyType.GetNFTMagic() {
		case addrKey.GetNFTMagic():
			shaped[plan.SetName(door, v6)] = false
		case portKey.GetNFTMagic():
			shaped[plan.SetName(door, v6)] = true
		}
	}
	shapes = map[string]plan.Door{}
	for _, s := range sets {
		if door, ok := strings.CutSuffix(s.Name, "_anyone"); ok && door != "" &&
			s.KeyType.GetNFTMagic() == nftables.TypeNFProto.GetNFTMagic() && s.HasTimeout && !s.Dynamic && !s.Interval && !s.IsMap {
			doors = append(doors, door)
			shapes[door] = plan.Door{Name: door, Anyone: true}
			continue
		}
		door, v6, ok := parseSetName(s.Name)
		if !ok || v6 {
			continue
		}
		perPort, ok4 := shaped[s.Name]
		perPort6, ok6 := shaped[plan.SetName(door, true)]
		if !ok4 || !ok6 || perPort != perPort6 {
			continue
		}
		doors = append(doors, door)
		shapes[door] = plan.Door{Name: door, PerPort: perPort}
	}
	return doors, shapes
}

func pick[T any](b bool, yes, no T) T {
	if b {
		return yes
	}
	return no
}

// parseSetName undoes plan.SetName.
func parseSetName(name string) (door string, v6, ok bool) {
	if door, ok := strings.CutSuffix(name, "_v4"); ok && door != "" {
		return door, false, true
	}
	if door, ok := strings.CutSuffix(name, "_v6"); ok && door != "" {
		return door, true, true
	}
	return "", false, false
}

// gate is door as the kernel's sets show it, for the tool: which set
// holds a grant to an address, and its key there.
func (f *Firewall) gate(door string) (*plan.Door, error) {
	doors, err := f.Doors()
	if err != nil {
		return nil, err
	}
	if !slices.Contains(doors, door) {
		if len(doors) == 0 {
			return nil, fmt.Errorf("door %q has no sets in %s, and no other door has", door, f.Where())
		}
		return nil, fmt.Errorf("door %q has no sets in %s; doors that do: %s", door, f.Where(), strings.Join(doors, ", "))
	}
	g := f.shapes[door]
	return &g, nil
}

// Grant lets addr through door's opened ports for d, counted from now, as
// the daemon's own grants do: one batch that adds the element or restarts
// its timer.
func (f *Firewall) Grant(door string, addr netip.Addr, d time.Duration) error {
	return f.GrantPort(door, addr, config.Port{}, d)
}

// GrantPort is Grant for a door that grants per port: port alone opens
// to addr (Grant is GrantPort with the zero port, for other doors).
func (f *Firewall) GrantPort(door string, addr netip.Addr, port config.Port, d time.Duration) error {
	addr = addr.Unmap().WithZone("")
	if err := f.grantTool(door, addr, port, d); err != nil {
		return fmt.Errorf("grant %s to %s: %w", door, addr, ownedElsewhere(f, err))
	}
	return nil
}

// portFits refuses a port that the door's kind of grant cannot hold.
func portFits(g *plan.Door, port config.Port) error {
	switch {
	case g.PerPort && port.Num == 0:
		return fmt.Errorf("door %s grants per port (its sets hold address . protocol . port): name the port", g.Name)
	case g.PerPort && (port.Last > port.Num || (port.Proto != config.TCP && port.Proto != config.UDP)):
		return fmt.Errorf("door %s grants one tcp or udp port at a time, not %s", g.Name, port)
	case !g.PerPort && port.Num != 0:
		return fmt.Errorf("door %s grants all its opened ports at once: a port cannot be named", g.Name)
	}
	return nil
}

func (f *Firewall) grantTool(door string, addr netip.Addr, port config.Port, d time.Duration) error {
	if !addr.IsValid() {
		return errors.New("invalid address")
	}
	if d < time.Millisecond {
		// The kernel counts in milliseconds, and a zero timeout would
		// mean "never expires".
		return fmt.Errorf("timeout %v is under a millisecond", d)
	}
	g, err := f.gate(door)
	if err != nil {
		return err
	}
	if err := portFits(g, port); err != nil {
		return err
	}
	set, key := g.GrantSet(addr, port.Proto, port.Num)
	// Live: the kernel may hold it; the tool keeps no record to say.
	_, first, err := f.Put(set, []Element{{Key: key, Timeout: d, Live: true}})
	if err == nil {
		err = first
	}
	return err
}

// Revoke removes addr from door's set at once. An element that is already
// gone (never granted, expired, revoked) is not an error.
func (f *Firewall) Revoke(door string, addr netip.Addr) error {
	return f.RevokePort(door, addr, config.Port{})
}

// RevokePort is Revoke for a door that grants per port: addr's grant of
// port alone ends.
func (f *Firewall) RevokePort(door string, addr netip.Addr, port config.Port) error {
	addr = addr.Unmap().WithZone("")
	if !addr.IsValid() {
		return fmt.Errorf("revoke %s: invalid address", door)
	}
	g, err := f.gate(door)
	if err == nil {
		err = portFits(g, port)
	}
	if err != nil {
		return fmt.Errorf("revoke %s from %s: %w", door, addr, err)
	}
	set, key := g.GrantSet(addr, port.Proto, port.Num)
	if err := f.Delete(set, [][]byte{key}); err != nil {
		return fmt.Errorf("revoke %s from %s: %w", door, addr, ownedElsewhere(f, err))
	}
	return nil
}

// Grants reads every live element of every door's sets from the kernel,
// by door in the order Doors gives, then IPv4 before IPv6, then address,
// then port. A grant of an open_to = "anyone" door has the unspecified
// address of its family; one of a door that grants per port, its port.
func (f *Firewall) Grants() ([]Grant, error) {
	doors, err := f.Doors()
	if err != nil {
		return nil, err
	}
	r, err := f.Reader()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var grants []Grant
	for _, door := range doors {
		shape := f.shapes[door]
		sets := []string{plan.SetName(door, false), plan.SetName(door, true)}
		if shape.Anyone {
			sets = []string{plan.AnyoneSetName(door)}
		}
		var gs []Grant
		for _, set := range sets {
			els, err := r.Read(set)
			if err != nil {
				return nil, fmt.Errorf("list grants of door %s: %w", door, err)
			}
			for _, e := range els {
				addr, proto, port, ok := shape.Grantee(e.Key)
				if ok {
					g := Grant{Door: door, Addr: addr, Timeout: e.Timeout, Expires: e.Expires, Comment: e.Comment}
					if shape.PerPort {
						g.Port = config.Port{Num: port, Proto: proto}
					}
					gs = append(gs, g)
				}
			}
		}
		slices.SortFunc(gs, func(a, b Grant) int {
			if c := a.Addr.Compare(b.Addr); c != 0 {
				return c
			}
			return cmp.Or(cmp.Compare(a.Port.Proto, b.Port.Proto), cmp.Compare(a.Port.Num, b.Port.Num))
		})
		grants = append(grants, gs...)
	}
	return grants, nil
}
