package door

import "github.com/nftknock/nftknock/config"

// Shared keeps, for one generation, the doors that share a capture port
// (fwknop doors: fwknopd's stanzas all take its one port, and a packet is
// the door's whose key made it). The engine routes a logged packet by its
// NFLOG prefix to one door, so the kernel logs a packet to a shared port
// once, under the prefix of the first door that asked for the port
// (plan.Builder.SharedDatagram), and that door finds the others here and
// tries their keys too; when one of them takes a packet, it acts through
// that door's Actions, which the registry gets from the engine. Doors join
// in config order, in their constructors; the generation is built whole
// before it runs, so the doors of a port are all known by its first
// packet. Like the doors, it belongs to the engine's goroutine once the
// generation runs.
type Shared struct {
	ports   map[sharedPort][]Door
	actions func(Door) Actions
}

// sharedPort is a port as one kind of door shares it: doors of two kinds
// never share one (config.CheckClaims refuses it).
type sharedPort struct {
	kind string
	port config.Port
}

// NewShared returns an empty registry, for a generation whose doors act
// through actions(door).
func NewShared(actions func(Door) Actions) *Shared {
	return &Shared{ports: map[sharedPort][]Door{}, actions: actions}
}

// join adds d to the doors of kind that share port.
func (s *Shared) join(kind string, port config.Port, d Door) {
	k := sharedPort{kind, port}
	s.ports[k] = append(s.ports[k], d)
}

// doors lists the doors of kind that share port, in config order.
func (s *Shared) doors(kind string, port config.Port) []Door { return s.ports[sharedPort{kind, port}] }

// actionsOf are d's Actions, for a door that takes a packet on d's behalf.
func (s *Shared) actionsOf(d Door) Actions { return s.actions(d) }
