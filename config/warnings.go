package config

import (
	"fmt"
	"strings"
)

// Warnings are what a valid cfg does that its author would not want: a
// knock sequence that an ordered port scan walks. Each knock of a sequence
// is logged and breaks off a knock on any other port, so a scan that walks
// the ports upwards (nmap -r, or any scan of a small range) is broken off
// between two knocks unless they are adjacent ports in ascending order:
// 7301, 7302, 7303 is walked by a scan of 7300-7310, and opens the door.
func Warnings(cfg *Config) []string {
	var ws []string
	for _, d := range cfg.Doors {
		s, ok := d.Kind.(*Sequence)
		if !ok {
			continue
		}
		for _, seq := range []struct {
			key   string
			steps []Port
		}{{"sequence", s.Sequence}, {"close_sequence", s.CloseSequence}} {
			if walkable(seq.steps) {
				var ports []string
				for _, p := range seq.steps {
					ports = append(ports, p.String())
				}
				ws = append(ws, fmt.Sprintf("%s: door %q: %s: %s are adjacent ports in ascending order: a port scan of the range walks them in order and opens the door; choose knocks that are not",
					cfg.File, d.Name, seq.key, strings.Join(ports, ", ")))
			}
		}
	}
	return ws
}

// walkable tells whether steps are adjacent ascending ports of one
// protocol, the order a scan sends them in.
func walkable(steps []Port) bool {
	if len(steps) < 2 {
		return false
	}
	for j := 1; j < len(steps); j++ {
		p, q := steps[j-1], steps[j]
		if q.Proto != p.Proto || p.Proto == ICMP || q.Num != p.Num+1 {
			return false
		}
	}
	return true
}
