package config

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

// Hook is where a door's gate decides: on connections to the host itself
// (the input hook) or on connections the host routes (the forward hook).
type Hook uint8

// The hooks a door may gate on. The zero value is the input hook.
const (
	// HookInput gates connections addressed to the host: a service it
	// runs, or one a local proxy (docker-proxy) serves.
	HookInput Hook = iota
	// HookForward gates connections the host forwards: a port Docker
	// publishes (DNAT'd to a container), a router's port forward, a host
	// behind a router. It gates the door's opened ports as the client
	// addressed them, on the input hook as well.
	HookForward
)

func (h Hook) String() string {
	if h == HookForward {
		return "forward"
	}
	return "input"
}

// Dest is a host and port behind the router that a forward door gates by
// the host's own address (forward_to).
type Dest struct {
	Addr netip.Addr
	Port Port
}

func (d Dest) String() string {
	return netip.AddrPortFrom(d.Addr, d.Port.Num).String() + portSuffix(d.Port)
}

// portSuffix is what Dest.String writes after ADDR:PORT: the end of a
// range and the protocol.
func portSuffix(p Port) string {
	s := ""
	if p.Last > p.Num {
		s = fmt.Sprintf("-%d", p.Last)
	}
	return s + ":" + p.Proto.String()
}

// maxTo bounds a forward door's to addresses: each costs rules per port.
const maxTo = 16

// ParseDest reads a forward_to entry: "192.168.1.10:22",
// "192.168.1.10:60000-61000:udp", "[2001:db8::10]:22".
func ParseDest(s string) (Dest, error) {
	var host, port string
	if rest, ok := strings.CutPrefix(s, "["); ok {
		h, p, ok := strings.Cut(rest, "]:")
		if !ok {
			return Dest{}, fmt.Errorf("%q: write an IPv6 destination as \"[2001:db8::10]:22\"", s)
		}
		host, port = h, p
	} else {
		h, p, ok := strings.Cut(s, ":")
		if !ok {
			return Dest{}, fmt.Errorf("%q: write ADDRESS:PORT[:tcp|udp], e.g. \"192.168.1.10:22\"", s)
		}
		host, port = h, p
	}
	a, err := netip.ParseAddr(host)
	if err != nil || a.Zone() != "" {
		return Dest{}, fmt.Errorf("%q: %q is not an IPv4 or IPv6 address", s, host)
	}
	if a.Is6() && !a.Is4In6() && !strings.HasPrefix(s, "[") {
		return Dest{}, fmt.Errorf("%q: write an IPv6 destination as \"[2001:db8::10]:22\"", s)
	}
	p, err := ParsePort(port)
	if err != nil {
		return Dest{}, fmt.Errorf("%q: %w", s, err)
	}
	return Dest{Addr: a.Unmap(), Port: p}, nil
}

// parseHook reads a door's hook, to and forward_to, before its open (a
// forward door with forward_to needs no open).
func (p *DoorParser) parseHook(d *Door) {
	switch s, _ := p.String("hook"); s {
	case "", "input":
	case "forward":
		d.Hook = HookForward
	default:
		p.Errorf("hook", "%q is neither \"input\" (connections to this host, the default) nor \"forward\" (connections it routes: Docker-published ports, port forwards, hosts behind it)", s)
	}
	forwardOnly := func(key string) bool {
		if p.Has(key) && d.Hook != HookForward {
			p.Errorf(key, "only a door on the forward hook has %s: add hook = \"forward\"", key)
			return false
		}
		return p.Has(key)
	}
	if forwardOnly("to") {
		addrs, _ := p.Strings("to")
		switch {
		case len(addrs) == 0:
			p.Errorf("to", "empty: list the addresses clients connect to, e.g. [\"203.0.113.5\"], or leave to out")
		case len(addrs) > maxTo:
			p.Errorf("to", "%d addresses; at most %d are allowed", len(addrs), maxTo)
		}
		for j, s := range addrs {
			a, err := netip.ParseAddr(s)
			if err != nil || a.Zone() != "" {
				p.Errorf(fmt.Sprintf("to[%d]", j), "%q is not an IPv4 or IPv6 address (a single address: the one clients connect to)", s)
				continue
			}
			d.To = append(d.To, a.Unmap())
		}
	}
	if forwardOnly("forward_to") {
		dests, _ := p.Strings("forward_to")
		switch {
		case len(dests) == 0:
			p.Errorf("forward_to", "empty: list hosts and ports behind this router, e.g. [\"192.168.1.10:22\"], or leave forward_to out")
		case len(dests) > maxOpen:
			p.Errorf("forward_to", "%d entries; at most %d are allowed", len(dests), maxOpen)
		}
		for j, s := range dests {
			dst, err := ParseDest(s)
			if err != nil {
				p.Errorf(fmt.Sprintf("forward_to[%d]", j), "%v", err)
				continue
			}
			d.ForwardTo = append(d.ForwardTo, dst)
		}
	}
}

// Attach is an admin's own chain that the daemon's rules are jumped to
// from (attach = "inet filter input"): the daemon's chain and sets live in
// the admin's table, and an accept there is an accept in the admin's base
// chain.
type Attach struct {
	// Table is the admin's `table inet` (nftknock's rules are IPv4 and
	// IPv6 rules: only an inet table holds them).
	Table string
	// Chain is the admin's base chain that must `jump` to the daemon's
	// chain, first.
	Chain string
}

func (a Attach) String() string { return "inet " + a.Table + " " + a.Chain }

var nftNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]{0,63}$`)

// parseAttach reads the top-level attach.
func parseAttach(s, own string) (*Attach, error) {
	f := strings.Fields(s)
	if len(f) != 3 {
		return nil, fmt.Errorf("%q: write the family, table and chain that jump to nftknock's chain, e.g. \"inet filter input\"", s)
	}
	if f[0] != "inet" {
		return nil, fmt.Errorf("%q: nftknock's rules are for IPv4 and IPv6 alike: attach to an inet table (\"inet %s %s\"); an ip or ip6 table cannot hold them", s, f[1], f[2])
	}
	for _, n := range f[1:] {
		if !nftNameRE.MatchString(n) {
			return nil, fmt.Errorf("%q: %q is not a table or chain name nftknock can attach to (letters, digits, _ . -)", s, n)
		}
	}
	if f[2] == own || strings.HasPrefix(f[2], own+"_") {
		return nil, fmt.Errorf("%q: chain %s is nftknock's own chain (named after table = %q): name your base chain, the one with `jump %s`", s, f[2], own, own)
	}
	return &Attach{Table: f[1], Chain: f[2]}, nil
}
