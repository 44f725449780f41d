package config

import (
	"bytes"
	"strings"
)

// locator finds the line of a key so that validation errors can point at
// it: the TOML decoder reports lines for syntax errors only.
type locator struct {
	// keys[r] maps a key to its first line in region r; region 0 is the top
	// level, region i+1 is the i-th [[door]] table.
	keys []map[string]int
}

func newLocator(data []byte) locator {
	l := locator{keys: []map[string]int{{}}}
	for n, line := range bytes.Split(data, []byte("\n")) {
		s := strings.TrimSpace(string(line))
		if strings.HasPrefix(s, "[") {
			if strings.ReplaceAll(s, " ", "") == "[[door]]" {
				l.keys = append(l.keys, map[string]int{})
			}
			continue
		}
		key, _, ok := strings.Cut(s, "=")
		if !ok || strings.HasPrefix(s, "#") {
			continue
		}
		key = strings.Trim(strings.TrimSpace(key), `"'`)
		region := l.keys[len(l.keys)-1]
		if _, seen := region[key]; !seen {
			region[key] = n + 1
		}
	}
	return l
}

// line returns the line of key in door (-1: the top level), or 0.
func (l locator) line(door int, key string) int {
	if door+1 < 0 || door+1 >= len(l.keys) {
		return 0
	}
	if n, ok := l.keys[door+1][key]; ok {
		return n
	}
	if door >= 0 {
		// A missing key: point at the door's own [[door]] line instead
		// would need its position too; the name line is the next best.
		return l.keys[door+1]["name"]
	}
	return 0
}

// doorWith returns the index of the first door that sets key, or -1.
func (l locator) doorWith(key string) int {
	for i := 1; i < len(l.keys); i++ {
		if _, ok := l.keys[i][key]; ok {
			return i - 1
		}
	}
	return -1
}
