package authkeys

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Patterns is a from= pattern list, ready to match addresses.
type Patterns struct {
	items []pattern
	text  string
}

type pattern struct {
	negated bool
	prefix  netip.Prefix // valid for an address or CIDR pattern
	glob    string       // otherwise: a wildcard over the address text
}

// String is the list as written.
func (p *Patterns) String() string { return p.text }

// ParsePatterns reads a from= value: comma-separated patterns, see the
// package doc. warn says what was kept but can never match.
func ParsePatterns(s string) (p *Patterns, warn []string, err error) {
	if len(s) > maxFromLength {
		return nil, nil, fmt.Errorf("longer than %d bytes", maxFromLength)
	}
	p = &Patterns{text: s}
	for _, item := range strings.Split(s, ",") {
		if len(p.items) >= maxPatterns {
			return nil, nil, fmt.Errorf("more than %d patterns", maxPatterns)
		}
		var pt pattern
		if strings.HasPrefix(item, "!") {
			pt.negated, item = true, item[1:]
		}
		if item == "" {
			return nil, nil, errors.New("empty pattern")
		}
		switch pfx, a, kind := parseAddrPattern(item); kind {
		case addrPattern:
			pt.prefix = netip.PrefixFrom(a, a.BitLen())
		case prefixPattern:
			if pfx != pfx.Masked() {
				return nil, nil, fmt.Errorf("%q has bits set past its prefix length (sshd refuses it too): write %s", item, pfx.Masked())
			}
			pt.prefix = pfx
		default:
			if strings.Contains(item, "/") {
				return nil, nil, fmt.Errorf("%q is not an address/prefix-length", item)
			}
			if !couldMatchAddrText(item) {
				if pt.negated {
					return nil, nil, fmt.Errorf("!%s is a hostname pattern: the daemon sees addresses only, so it cannot exclude that host. Write its addresses", item)
				}
				warn = append(warn, fmt.Sprintf("from= pattern %q is a hostname pattern: the daemon sees addresses only, so it never matches", item))
			}
			pt.glob = strings.ToLower(item)
		}
		p.items = append(p.items, pt)
	}
	return p, warn, nil
}

type patternKind int

const (
	otherPattern patternKind = iota
	addrPattern
	prefixPattern
)

// parseAddrPattern reads an address or an address/length, zone-less.
func parseAddrPattern(s string) (netip.Prefix, netip.Addr, patternKind) {
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		return netip.Prefix{}, a.Unmap(), addrPattern
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return p, netip.Addr{}, prefixPattern
	}
	return netip.Prefix{}, netip.Addr{}, otherPattern
}

// couldMatchAddrText reports whether a wildcard pattern could match the
// text of some address: digits, hex letters, dots, colons and wildcards.
func couldMatchAddrText(s string) bool {
	for _, c := range strings.ToLower(s) {
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f', c == '.', c == ':', c == '*', c == '?':
		default:
			return false
		}
	}
	return true
}

// Match reports whether a is allowed: no negated pattern matches it and a
// positive one does (sshd's addr_match_list).
func (p *Patterns) Match(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	var text string
	ok := false
	for i := range p.items {
		pt := &p.items[i]
		var hit bool
		if pt.prefix.IsValid() {
			hit = pt.prefix.Contains(a)
		} else {
			if text == "" {
				text = a.String()
			}
			hit = wildcardMatch(pt.glob, text)
		}
		if hit && pt.negated {
			return false
		}
		ok = ok || hit
	}
	return ok
}

// wildcardMatch matches s against pattern, where * is any run of
// characters and ? any one, in time linear in len(pattern)*len(s) at
// worst (no backtracking blow-up on hostile patterns).
func wildcardMatch(pattern, s string) bool {
	pi, si := 0, 0
	star, mark := -1, 0
	for si < len(s) {
		switch {
		case pi < len(pattern) && (pattern[pi] == '?' || pattern[pi] == s[si]):
			pi++
			si++
		case pi < len(pattern) && pattern[pi] == '*':
			star, mark = pi, si
			pi++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(pattern) && pattern[pi] == '*' {
		pi++
	}
	return pi == len(pattern)
}
