package config

import (
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Limits on what a configuration may ask for. They keep a hostile or
// mistaken file from making the daemon build an unbounded ruleset or table.
const (
	maxFileSize    = 1 << 20
	maxDoors       = 256
	maxSequence    = 32
	maxOpen        = 64
	maxNameLen     = 32
	maxTracked     = 1 << 22
	maxSeqTimeout  = time.Hour
	maxOpenFor     = 30 * 24 * time.Hour
	durationQuanta = time.Millisecond // the kernel counts set timeouts in ms
)

var (
	doorNameRE  = regexp.MustCompile(`^[a-z0-9_]+$`)
	tableNameRE = regexp.MustCompile(`^[A-Za-z0-9_]+$`)
	decodeErrRE = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)
)

//go:embed default.toml
var defaultTOML []byte

// DefaultTOML returns the embedded reference configuration, the one
// `nftknockd -print-config` prints.
func DefaultTOML() []byte { return append([]byte(nil), defaultTOML...) }

// rawConfig and rawDoor are what the TOML decodes into: strings and
// integers only, validated into Config afterwards.
type rawConfig struct {
	NFLOGGroup *int64    `toml:"nflog_group"`
	Table      *string   `toml:"table"`
	MaxTracked *int64    `toml:"max_tracked"`
	Doors      []rawDoor `toml:"door"`
}

type rawDoor struct {
	Name       string   `toml:"name"`
	Sequence   []string `toml:"sequence"`
	SeqTimeout string   `toml:"seq_timeout"`
	Open       []string `toml:"open"`
	OpenFor    string   `toml:"open_for"`
}

// Error is one problem found in a configuration file.
type Error struct {
	File  string
	Line  int    // 0 when unknown
	Door  string // empty for top-level keys
	Field string // the key, with an index for list items: "sequence[2]"
	Msg   string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Door != "" {
		fmt.Fprintf(&b, "door %q: ", e.Door)
	}
	if e.Field != "" {
		fmt.Fprintf(&b, "%s: ", e.Field)
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Load reads and validates the configuration file at path.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", path, err)
	}
	if len(data) > maxFileSize {
		return nil, &Error{File: path, Msg: fmt.Sprintf("file is larger than %d bytes", maxFileSize)}
	}
	return Parse(path, data)
}

// Parse validates the TOML in data; file names it in errors. The error, if
// any, joins every problem found (errors.Join), one per line.
func Parse(file string, data []byte) (*Config, error) {
	var raw rawConfig
	md, err := toml.Decode(string(data), &raw)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, &Error{File: file, Line: pe.Position.Line, Msg: pe.Message}
		}
		// Type mismatches come as plain errors that carry the line and
		// key only in their text.
		if m := decodeErrRE.FindStringSubmatch(err.Error()); m != nil {
			line, _ := strconv.Atoi(m[1])
			return nil, &Error{File: file, Line: line, Field: m[2], Msg: m[3]}
		}
		return nil, &Error{File: file, Msg: err.Error()}
	}
	v := validator{file: file, lines: newLocator(data)}
	for _, k := range md.Undecoded() {
		v.unknownKey(k, raw.Doors)
	}
	cfg := v.config(&raw)
	if len(v.errs) > 0 {
		return nil, errors.Join(v.errs...)
	}
	return cfg, nil
}

// validator collects every error rather than stopping at the first, so
// that `nftknockd -check` shows a user all there is to fix at once.
type validator struct {
	file  string
	lines locator
	errs  []error
}

func (v *validator) add(door int, doorName, field, format string, args ...any) {
	key := field
	if i := strings.IndexByte(key, '['); i >= 0 {
		key = key[:i]
	}
	v.errs = append(v.errs, &Error{
		File:  v.file,
		Line:  v.lines.line(door, key),
		Door:  doorName,
		Field: field,
		Msg:   fmt.Sprintf(format, args...),
	})
}

func (v *validator) unknownKey(k toml.Key, doors []rawDoor) {
	switch {
	case len(k) == 1:
		v.add(-1, "", k[0], "unknown key (known: nflog_group, table, max_tracked, [[door]])")
	case len(k) >= 2 && k[0] == "door":
		// toml.Key does not say which [[door]] table the key sat in; the
		// locator finds the first door that has it.
		door, name := v.lines.doorWith(k[1]), ""
		if door >= 0 && door < len(doors) {
			name = doors[door].Name
		}
		v.add(door, name, k[1], "unknown key in [[door]] (known: name, sequence, seq_timeout, open, open_for)")
	default:
		v.add(-1, "", k.String(), "unknown key")
	}
}

func (v *validator) config(raw *rawConfig) *Config {
	cfg := &Config{
		File:       v.file,
		NFLOGGroup: DefaultNFLOGGroup,
		Table:      DefaultTable,
		MaxTracked: DefaultMaxTracked,
	}
	if raw.NFLOGGroup != nil {
		if g := *raw.NFLOGGroup; g < 0 || g > 65535 {
			v.add(-1, "", "nflog_group", "%d is out of range 0-65535", g)
		} else {
			cfg.NFLOGGroup = uint16(g)
		}
	}
	if raw.Table != nil {
		if t := *raw.Table; !tableNameRE.MatchString(t) || len(t) > maxNameLen {
			v.add(-1, "", "table", "%q must be 1-%d characters of A-Z a-z 0-9 _", t, maxNameLen)
		} else {
			cfg.Table = t
		}
	}
	if raw.MaxTracked != nil {
		if m := *raw.MaxTracked; m < 1 || m > maxTracked {
			v.add(-1, "", "max_tracked", "%d is out of range 1-%d", m, maxTracked)
		} else {
			cfg.MaxTracked = int(m)
		}
	}
	switch {
	case len(raw.Doors) == 0:
		v.add(-1, "", "door", "no [[door]] is configured: add one (see nftknockd -print-config)")
	case len(raw.Doors) > maxDoors:
		v.add(-1, "", "door", "%d doors configured; at most %d are allowed", len(raw.Doors), maxDoors)
		return cfg
	}
	seen := map[string]int{}
	for i := range raw.Doors {
		d := v.door(i, &raw.Doors[i])
		if prev, dup := seen[d.Name]; dup && d.Name != "" {
			v.add(i, d.Name, "name", "door name is already used by door #%d: names must be unique", prev+1)
		}
		seen[d.Name] = i
		cfg.Doors = append(cfg.Doors, d)
	}
	v.crossCheck(raw.Doors)
	return cfg
}

func (v *validator) door(i int, raw *rawDoor) Door {
	d := Door{Name: raw.Name}
	label := raw.Name
	if label == "" {
		label = fmt.Sprintf("#%d", i+1)
	}
	switch {
	case raw.Name == "":
		v.add(i, label, "name", "missing: every door needs a name of [a-z0-9_]+")
	case !doorNameRE.MatchString(raw.Name) || len(raw.Name) > maxNameLen:
		v.add(i, label, "name", "%q must be 1-%d characters of a-z 0-9 _", raw.Name, maxNameLen)
	}

	d.Sequence = v.ports(i, label, "sequence", raw.Sequence, maxSequence, `list the knocks, e.g. ["7000:tcp", "8000:udp"]`)
	for j := 1; j < len(raw.Sequence); j++ {
		prev, err1 := ParsePort(raw.Sequence[j-1])
		p, err2 := ParsePort(raw.Sequence[j])
		if err1 == nil && err2 == nil && p == prev {
			v.add(i, label, fmt.Sprintf("sequence[%d]", j),
				"%s repeats the knock before it: a repeated knock cannot be told from a retransmitted packet", p)
		}
	}
	d.Open = v.ports(i, label, "open", raw.Open, maxOpen, `list what a knock opens, e.g. ["22:tcp"]`)
	d.SeqTimeout = v.duration(i, label, "seq_timeout", raw.SeqTimeout, maxSeqTimeout)
	d.OpenFor = v.duration(i, label, "open_for", raw.OpenFor, maxOpenFor)
	return d
}

// ports validates a list of PORT[:proto]; errors name field[j].
func (v *validator) ports(i int, label, field string, raw []string, max int, hint string) []Port {
	switch {
	case len(raw) == 0:
		v.add(i, label, field, "empty: %s", hint)
	case len(raw) > max:
		v.add(i, label, field, "%d entries; at most %d are allowed", len(raw), max)
	}
	ports := make([]Port, 0, len(raw))
	for j, s := range raw {
		p, err := ParsePort(s)
		if err != nil {
			v.add(i, label, fmt.Sprintf("%s[%d]", field, j), "%v", err)
			continue
		}
		ports = append(ports, p)
	}
	return ports
}

func (v *validator) duration(i int, label, field, s string, max time.Duration) time.Duration {
	if s == "" {
		v.add(i, label, field, "missing: give a duration such as \"30s\"")
		return 0
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		v.add(i, label, field, "%q is not a duration: write it as \"30s\", \"5m\" or \"1h30m\"", s)
	case d <= 0:
		v.add(i, label, field, "%q must be longer than zero", s)
	case d > max:
		v.add(i, label, field, "%q is longer than the %s allowed", s, max)
	case d%durationQuanta != 0:
		v.add(i, label, field, "%q is finer than the kernel's millisecond", s)
	default:
		return d
	}
	return 0
}

// crossCheck rejects a port that one door knocks on and another (or the
// same) door opens: the opened port's drop rule would swallow the knock,
// or a knock would open the port it is supposed to guard.
func (v *validator) crossCheck(doors []rawDoor) {
	opened := map[Port]string{}
	for _, d := range doors {
		for _, s := range d.Open {
			if p, err := ParsePort(s); err == nil && opened[p] == "" {
				opened[p] = d.Name
			}
		}
	}
	for i, d := range doors {
		for j, s := range d.Sequence {
			p, err := ParsePort(s)
			if err != nil {
				continue // reported already
			}
			if by, ok := opened[p]; ok {
				v.add(i, d.Name, fmt.Sprintf("sequence[%d]", j),
					"%s is also opened by door %q: a knock port must not be an opened port", p, by)
			}
		}
	}
}

// ParsePort parses knockd's port notation: "7000", "7000:tcp", "7000:udp".
func ParsePort(s string) (Port, error) {
	num, proto, hasProto := strings.Cut(strings.TrimSpace(s), ":")
	p := Port{Proto: TCP}
	if hasProto {
		switch strings.ToLower(proto) {
		case "tcp":
		case "udp":
			p.Proto = UDP
		default:
			return Port{}, fmt.Errorf("%q: protocol %q is neither tcp nor udp", s, proto)
		}
	}
	n, err := strconv.ParseUint(num, 10, 32)
	if err != nil {
		return Port{}, fmt.Errorf("%q: port is not a number: write PORT[:tcp|udp], e.g. \"7000:tcp\"", s)
	}
	if n < 1 || n > 65535 {
		return Port{}, fmt.Errorf("%q: port %d is out of range 1-65535", s, n)
	}
	p.Num = uint16(n)
	return p, nil
}
