// Package config turns an nftknock TOML file into validated domain types.
//
// Decoding is strict (an unknown key is an error) and happens in two steps,
// as in CoreRAD: the TOML is decoded into raw values, and those are then
// validated into the types below. Every error names the file, the line, the
// door and the field.
//
// Parsing is pure: it reads no file but the one it is given. The files a
// configuration names (key files, one_time_sequences files) are checked for
// an absolute path here and read by the daemon into its own state, at start
// and at every reload; a Config is never changed once validated.
//
// A door is of one kind: the common keys (name, open, open_for, …) plus the
// keys of its kind, each kind in a file of its own (door_sequence.go,
// door_spa.go, door_keyspa.go, door_fwknop.go,
// door_rotating.go) and listed in Kinds.
package config

import (
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
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
	maxHookArgs    = 64
	maxHookTimeout = 10 * time.Minute
	// MaxGrants bounds a door's max_grants: the kernel set's size.
	MaxGrants = 1 << 22

	defaultHookTimeout = 10 * time.Second
)

// Defaults for the optional top-level and door keys.
const (
	DefaultNFLOGGroup = 7113
	DefaultTable      = "nftknock"
	DefaultMaxTracked = 65536
	DefaultMaxGrants  = 65536
)

var (
	doorNameRE  = regexp.MustCompile(`^[a-z0-9_]+$`)
	tableNameRE = regexp.MustCompile(`^[A-Za-z0-9_]+$`)
	ifnameRE    = regexp.MustCompile(`^[^/\s]{1,15}$`)
	decodeErrRE = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)
)

// Config is a whole validated configuration.
type Config struct {
	// File is where the configuration was read from, for messages.
	File string
	// NFLOGGroup is the netlink log group the knock rules log to.
	NFLOGGroup uint16
	// Table is the name of the `table inet` the daemon owns.
	Table string
	// MaxTracked bounds the number of sources whose progress is tracked.
	MaxTracked int
	// ServerKeyFile is the server's OpenSSH ed25519 key, which public-key
	// SPA doors open their datagrams with (read by the daemon); "" if
	// none is configured.
	ServerKeyFile string
	// Attach, if set, is the admin's chain the daemon's rules are jumped
	// to from: its chain (named Table) and sets (prefixed Table_) go in
	// the admin's table instead of a table of its own.
	Attach *Attach
	// OwnTable: the daemon's socket owns its table (Linux 6.9 and later;
	// not attached), so `nft flush ruleset` passes it by and only the
	// daemon may change it.
	OwnTable bool
	// Doors are the configured doors, in file order.
	Doors []Door
}

// Door is one door: what opens it (its Kind) and what it opens.
type Door struct {
	// Name is unique, [a-z0-9_]+; the door's sets are <Name>_v4 and <Name>_v6.
	Name string
	// Kind is what opens the door: *Sequence, *SPA, *KeySPA, *Fwknop or
	// *Rotating.
	Kind Kind
	// Interface, if set, is the only input interface the door's knocks
	// count on.
	Interface string
	// Open lists the ports a completed knock opens.
	Open []Port
	// OpenToAnyone opens them to every address, not just the knocking one.
	OpenToAnyone bool
	// OpenFor is the timeout of the kernel set element a knock adds.
	OpenFor time.Duration
	// MaxGrants bounds the door's live grants: the size of its sets.
	MaxGrants int
	// AlwaysAllow are networks that reach the door's ports without knocking.
	AlwaysAllow []netip.Prefix
	// OnOpen and OnClose are argv arrays run (never through a shell) when
	// the door opens for a source and when that grant ends; "{src}" and
	// "{door}" are replaced when they are a whole argument.
	OnOpen, OnClose []string
	// HookTimeout bounds each hook's run.
	HookTimeout time.Duration
	// Hook is where the door gates: the input hook (connections to the
	// host) or the forward hook (connections it routes, and its opened
	// ports on the input hook too).
	Hook Hook
	// To, on a forward door, narrows Open to connections the client
	// addressed to one of these addresses (ct original ip daddr).
	To []netip.Addr
	// ForwardTo are hosts and ports behind this router that a forward
	// door gates by their own address.
	ForwardTo []Dest
}

// Kind is the part of a door that says what opens it.
type Kind interface {
	// KindName is the kind's name as the documentation uses it.
	KindName() string
	// Claims are the ports the kind takes for itself: no other door's
	// claim and no opened port may overlap them (see checkClaims).
	Claims() []Claim
}

// Claim is a port or range a door's kind takes for itself.
type Claim struct {
	Port Port
	// Field is the key the claim comes from, with its index: "sequence[1]".
	Field string
	// What names it in a message about another door, with that door's
	// name for %q: "a knock of door %q".
	What string
	// Own is what a message about this claim ends with: why it must be a
	// port of its own ("a knock port must not be an opened port").
	Own string
	// Share: claims of the same non-empty Share may overlap (doors may
	// share knock ports: the kernel logs a knock for each door that has
	// it).
	Share string
}

// A KindSpec is a kind of door as a configuration file writes it. Kinds
// lists the built-in ones; ParseWith takes more (a test adds one).
type KindSpec struct {
	// Name is the kind's name in messages: "an SPA door".
	Name string
	// Selectors are the keys whose presence makes a door this kind. A
	// kind without selectors is the default, for a door with none.
	Selectors []string
	// Keys are all the kind's own keys, selectors included.
	Keys []string
	// Refuse holds, for keys of other kinds, what to tell a user who set
	// one on a door of this kind (%s is the key); others get "only … has".
	Refuse map[string]string
	// Parse validates a door's keys of the kind into its Kind, reporting
	// problems through p.
	Parse func(p *DoorParser) Kind
}

// Kinds are the built-in door kinds, in the order their selectors are
// tried; the knock door is also the kind of a door with no selector.
var Kinds = []KindSpec{keySPAKind, spaKind, fwknopKind, rotatingKind, sequenceKind}

// commonKeys are the keys every door may have.
var commonKeys = []string{"name", "interface", "open", "open_to", "open_for", "max_grants", "always_allow", "on_open", "on_close", "hook_timeout", "hook", "to", "forward_to"}

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

// Load reads and validates the configuration file at path. A file that
// someone other than root could change is refused (see CheckPrivate).
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	defer f.Close()
	if err := CheckPrivate(path); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", path, err)
	}
	if len(data) > maxFileSize {
		return nil, &Error{File: path, Msg: fmt.Sprintf("file is larger than %d bytes", maxFileSize)}
	}
	return Parse(path, data)
}

// Parse validates the TOML in data with the built-in kinds; file names it
// in errors. The error, if any, joins every problem found (errors.Join),
// one per line.
func Parse(file string, data []byte) (*Config, error) {
	return ParseWith(file, data, Kinds)
}

// rawConfig is what the TOML's top level decodes into. Each door stays raw
// (a key → value map) until its kind is known.
type rawConfig struct {
	NFLOGGroup    *int64                      `toml:"nflog_group"`
	Table         *string                     `toml:"table"`
	MaxTracked    *int64                      `toml:"max_tracked"`
	ServerKeyFile *string                     `toml:"server_key_file"`
	Attach        *string                     `toml:"attach"`
	OwnTable      *bool                       `toml:"own_table"`
	Doors         []map[string]toml.Primitive `toml:"door"`
}

// ParseWith is Parse with the door kinds kinds.
func ParseWith(file string, data []byte, kinds []KindSpec) (*Config, error) {
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
	v := validator{file: file, lines: newLocator(data), md: md, kinds: kinds}
	for _, k := range md.Undecoded() {
		// Doors are decoded key by key below; only the top level is
		// left to report here.
		if len(k) == 1 {
			v.add(-1, "", k[0], "unknown key (known: nflog_group, table, max_tracked, server_key_file, attach, own_table, [[door]])")
		}
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
	md    toml.MetaData
	kinds []KindSpec
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

func (v *validator) config(raw *rawConfig) *Config {
	cfg := &Config{
		File:       v.file,
		NFLOGGroup: DefaultNFLOGGroup,
		Table:      DefaultTable,
		MaxTracked: DefaultMaxTracked,
		OwnTable:   true,
	}
	if raw.OwnTable != nil {
		cfg.OwnTable = *raw.OwnTable
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
	if raw.ServerKeyFile != nil {
		if s := *raw.ServerKeyFile; !filepath.IsAbs(s) {
			v.add(-1, "", "server_key_file", "%q must be an absolute path", s)
		} else {
			cfg.ServerKeyFile = s
		}
	}
	if raw.Attach != nil {
		a, err := parseAttach(*raw.Attach, cfg.Table)
		if err != nil {
			v.add(-1, "", "attach", "%v", err)
		}
		cfg.Attach = a
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
		d := v.door(i, raw.Doors[i])
		if prev, dup := seen[d.Name]; dup && d.Name != "" {
			v.add(i, d.Name, "name", "door name is already used by door #%d: names must be unique", prev+1)
		}
		seen[d.Name] = i
		cfg.Doors = append(cfg.Doors, d)
	}
	for _, e := range CheckClaims(cfg.Doors, nil) {
		v.add(e.door, cfg.Doors[e.door].Name, e.field, "%s", e.msg)
	}
	v.needServerKey(cfg)
	return cfg
}

// door validates the i-th [[door]] table: its kind first (which its keys
// select), then the common keys, then the kind's own.
func (v *validator) door(i int, keys map[string]toml.Primitive) Door {
	p := &DoorParser{v: v, door: i, keys: keys}
	var d Door
	name, _ := p.String("name")
	d.Name = name
	p.label = name
	if p.label == "" {
		p.label = fmt.Sprintf("#%d", i+1)
	}
	switch {
	case !p.Has("name"):
		p.Errorf("name", "missing: every door needs a name of [a-z0-9_]+")
	case !doorNameRE.MatchString(name) || len(name) > maxNameLen:
		p.Errorf("name", "%q must be 1-%d characters of a-z 0-9 _", name, maxNameLen)
	case slices.Contains([]string{"knock_first", "knocking", "knock_rate"}, name) || strings.HasSuffix(name, "_allow"):
		// The door's sets, <name>_v4 and <name>_v6, would have the name
		// of a table-wide set or of another door's always_allow set.
		p.Errorf("name", "%q would give the door a set name nftknock uses for its own sets (knock_first, knocking, knock_rate, <door>_allow): choose another name", name)
	}

	kind, reported := v.kindOf(p)
	for k := range keys {
		switch {
		case reported[k] || slices.Contains(commonKeys, k) || slices.Contains(kind.Keys, k):
		case kind.Refuse[k] != "":
			p.Errorf(k, kind.Refuse[k], k)
		default:
			if others := v.kindsWithKey(k); len(others) > 0 {
				p.Errorf(k, "only %s has %s", strings.Join(others, " or "), k)
			} else {
				p.Errorf(k, "unknown key in [[door]] (known: %s)", strings.Join(v.allKeys(), ", "))
			}
		}
	}

	if s, ok := p.String("interface"); ok {
		if !ifnameRE.MatchString(s) {
			p.Errorf("interface", "%q is not an interface name (1-15 characters, no spaces or /)", s)
		}
		d.Interface = s
	}
	p.parseHook(&d)
	// A router's door may gate hosts behind it alone (forward_to).
	if p.Has("open") || len(d.ForwardTo) == 0 {
		d.Open = p.Ports("open", maxOpen, ParsePort, `list what a knock opens, e.g. ["22:tcp"]`)
	}
	switch s, _ := p.String("open_to"); s {
	case "", "source":
	case "anyone":
		d.OpenToAnyone = true
	default:
		p.Errorf("open_to", "%q is neither \"source\" (the knocking address only, the default) nor \"anyone\"", s)
	}
	d.MaxGrants = DefaultMaxGrants
	if n, ok := p.Int("max_grants"); ok {
		if n < 1 || n > MaxGrants {
			p.Errorf("max_grants", "%d is out of range 1-%d", n, MaxGrants)
		} else {
			d.MaxGrants = int(n)
		}
	}
	nets, _ := p.Strings("always_allow")
	for j, s := range nets {
		n, err := parseNetwork(s)
		if err != nil {
			p.Errorf(fmt.Sprintf("always_allow[%d]", j), "%v", err)
			continue
		}
		d.AlwaysAllow = append(d.AlwaysAllow, n)
	}
	d.OnOpen = p.hook("on_open")
	d.OnClose = p.hook("on_close")
	d.HookTimeout = p.Duration("hook_timeout", defaultHookTimeout, maxHookTimeout)
	d.OpenFor = p.Duration("open_for", 0, maxOpenFor)
	d.Kind = kind.Parse(p)
	return d
}

// kindOf picks the door's kind by its selector keys: the first kind one of
// whose selectors it has, or the default (the knock door). A selector of a
// second kind as well is an error, reported against that selector, which
// is returned in reported.
func (v *validator) kindOf(p *DoorParser) (kind *KindSpec, reported map[string]bool) {
	reported = map[string]bool{}
	var foundKey string
	for i := range v.kinds {
		k := &v.kinds[i]
		for _, s := range k.Selectors {
			switch {
			case !p.Has(s):
				continue
			case kind == nil:
				kind, foundKey = k, s
			case kind == k:
			case slices.Contains(kind.Keys, s):
				// Another kind's selector that this kind has too
				// (spa_port on a public-key SPA door).
			case kind.Refuse[s] != "":
				p.Errorf(s, kind.Refuse[s], s)
				reported[s] = true
			default:
				p.Errorf(s, "a door has either %s or %s, not both", foundKey, s)
				reported[s] = true
			}
		}
	}
	if kind == nil {
		kind = &v.kinds[len(v.kinds)-1]
		for i := range v.kinds {
			if v.kinds[i].Name == sequenceKind.Name {
				kind = &v.kinds[i]
			}
		}
	}
	return kind, reported
}

// kindsWithKey names the kinds that have key k.
func (v *validator) kindsWithKey(k string) []string {
	var names []string
	for _, kind := range v.kinds {
		if slices.Contains(kind.Keys, k) {
			names = append(names, kind.Name)
		}
	}
	return names
}

// allKeys lists every key a door may have, of any kind.
func (v *validator) allKeys() []string {
	keys := slices.Clone(commonKeys)
	for _, k := range v.kinds {
		for _, key := range k.Keys {
			if !slices.Contains(keys, key) {
				keys = append(keys, key)
			}
		}
	}
	return keys
}

// DoorParser reads and checks one [[door]]'s keys for its kind's Parse:
// each accessor reports a value of the wrong type itself, with the key's
// line, and returns the zero value then.
type DoorParser struct {
	v     *validator
	door  int
	label string
	keys  map[string]toml.Primitive
}

// Has tells whether the door sets key.
func (p *DoorParser) Has(key string) bool {
	_, ok := p.keys[key]
	return ok
}

// Name is the door's name, or "#N" when it has none.
func (p *DoorParser) Name() string { return p.label }

// Errorf reports a problem with field (a key, or key[index]).
func (p *DoorParser) Errorf(field, format string, args ...any) {
	p.v.add(p.door, p.label, field, format, args...)
}

// decode decodes key into dst; ok is false if the door does not set it or
// it has the wrong type (then reported).
func (p *DoorParser) decode(key string, dst any, want string) bool {
	prim, ok := p.keys[key]
	if !ok {
		return false
	}
	if err := p.v.md.PrimitiveDecode(prim, dst); err != nil {
		p.Errorf(key, "want %s", want)
		return false
	}
	return true
}

// String is key's value as a string.
func (p *DoorParser) String(key string) (string, bool) {
	var s string
	ok := p.decode(key, &s, `a string, e.g. "value"`)
	return s, ok
}

// Strings is key's value as a list of strings.
func (p *DoorParser) Strings(key string) ([]string, bool) {
	var s []string
	ok := p.decode(key, &s, `a list of strings, e.g. ["a", "b"]`)
	return s, ok
}

// Int is key's value as an integer.
func (p *DoorParser) Int(key string) (int64, bool) {
	var n int64
	ok := p.decode(key, &n, "a whole number")
	return n, ok
}

// Bool is key's value as a boolean.
func (p *DoorParser) Bool(key string) (bool, bool) {
	var b bool
	ok := p.decode(key, &b, "true or false")
	return b, ok
}

// Duration is key's value as a duration of at most max: def when the door
// does not set it; when def is zero the key is required.
func (p *DoorParser) Duration(key string, def, max time.Duration) time.Duration {
	s, ok := p.String(key)
	if !ok {
		if !p.Has(key) && def == 0 {
			p.Errorf(key, "missing: give a duration such as \"30s\"")
		}
		return def
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		p.Errorf(key, "%q is not a duration: write it as \"30s\", \"5m\" or \"1h30m\"", s)
	case d <= 0:
		p.Errorf(key, "%q must be longer than zero", s)
	case d > max:
		p.Errorf(key, "%q is longer than the %s allowed", s, max)
	case d%durationQuanta != 0:
		p.Errorf(key, "%q is finer than the kernel's millisecond", s)
	default:
		return d
	}
	return 0
}

// Ports validates key's list of ports with parse (ParsePort, ParseKnock):
// at least one, at most max; errors name key[j]. hint says what to write.
func (p *DoorParser) Ports(key string, max int, parse func(string) (Port, error), hint string) []Port {
	raw, _ := p.Strings(key)
	switch {
	case len(raw) == 0:
		p.Errorf(key, "empty: %s", hint)
	case len(raw) > max:
		p.Errorf(key, "%d entries; at most %d are allowed", len(raw), max)
	}
	ports := make([]Port, 0, len(raw))
	for j, s := range raw {
		port, err := parse(s)
		if err != nil {
			p.Errorf(fmt.Sprintf("%s[%d]", key, j), "%v", err)
			continue
		}
		ports = append(ports, port)
	}
	return ports
}

// Path is key's value as an absolute path ("" and reported when missing or
// relative). missing says what to do when it is not set.
func (p *DoorParser) Path(key, missing string) string {
	s, ok := p.String(key)
	switch {
	case !ok && !p.Has(key):
		p.Errorf(key, "missing: %s", missing)
	case !ok:
	case !filepath.IsAbs(s):
		p.Errorf(key, "%q must be an absolute path", s)
	default:
		return s
	}
	return ""
}

// TCPFlags is the door's tcp_flags, or DefaultTCPFlags.
func (p *DoorParser) TCPFlags() TCPFlags {
	s, ok := p.String("tcp_flags")
	if !ok {
		return DefaultTCPFlags
	}
	f, err := ParseTCPFlags(s)
	if err != nil {
		p.Errorf("tcp_flags", "%v", err)
	}
	return f
}

// hook validates an on_open/on_close argv: it is run without a shell, so
// argv[0] must be an absolute path (no PATH lookup to surprise anyone).
func (p *DoorParser) hook(key string) []string {
	argv, ok := p.Strings(key)
	if !ok {
		return nil
	}
	switch {
	case len(argv) == 0:
		p.Errorf(key, "empty: give the program and its arguments, e.g. [\"/usr/local/bin/notify\", \"{door}\", \"{src}\"]")
	case len(argv) > maxHookArgs:
		p.Errorf(key, "%d arguments; at most %d are allowed", len(argv), maxHookArgs)
	case !filepath.IsAbs(argv[0]):
		p.Errorf(key+"[0]", "%q must be an absolute path: hooks run without a shell or PATH lookup", argv[0])
	default:
		return argv
	}
	return nil
}

// ClaimError is a claim that clashes with an opened port or another claim.
type ClaimError struct {
	door       int // index in the doors given
	field, msg string
}

func (e ClaimError) Error() string { return e.field + ": " + e.msg }

// Door is the index of the door whose claim it is.
func (e ClaimError) Door() int { return e.door }

// Field is the key the claim comes from.
func (e ClaimError) Field() string { return e.field }

// Msg says what clashes.
func (e ClaimError) Msg() string { return e.msg }

// CheckClaims checks the ports the doors' kinds claim: none may land on a
// port any door opens (the opened port's drop rule would swallow the knock,
// or a knock would open the port it guards), and no two may overlap unless
// they share a Share. A clash is reported against the claim that is a
// range if one is, else against the later one. Parse runs it on the kinds
// as configured; the daemon runs it again with claims only its state
// knows (the sequence a one_time_sequences file has due now), given in
// extra by door index.
func CheckClaims(doors []Door, extra map[int][]Claim) []ClaimError {
	type owned struct {
		Claim
		door int
	}
	var claims []owned
	for i, d := range doors {
		var cs []Claim
		if d.Kind != nil {
			cs = d.Kind.Claims()
		}
		for _, c := range append(cs, extra[i]...) {
			claims = append(claims, owned{c, i})
		}
	}
	var errs []ClaimError
	for _, c := range claims {
		for _, o := range doors {
			p, ok := opens(o, c.Port)
			switch {
			case !ok:
				continue
			case c.Port.Last > c.Port.Num:
				errs = append(errs, ClaimError{c.door, c.Field, fmt.Sprintf("%s overlaps %s, which door %q opens: %s", c.Port, p, o.Name, c.Own)})
			default:
				errs = append(errs, ClaimError{c.door, c.Field, fmt.Sprintf("%s is also opened by door %q (%s): %s", c.Port, o.Name, p, c.Own)})
			}
			break
		}
	}
	for j, c := range claims {
		for _, o := range claims[:j] {
			if !c.Port.Overlaps(o.Port) || (c.Share != "" && c.Share == o.Share) {
				continue
			}
			at, other := c, o
			if o.Port.Last > o.Port.Num && c.Port.Last <= c.Port.Num {
				at, other = o, c
			}
			errs = append(errs, ClaimError{at.door, at.Field, fmt.Sprintf("%s overlaps %s, %s: %s",
				at.Port, other.Port, fmt.Sprintf(other.What, doors[other.door].Name), at.Own)})
		}
	}
	return errs
}

// opens reports the opened port of d that claim lands on.
func opens(d Door, claim Port) (Port, bool) {
	for _, p := range d.Open {
		if p.Overlaps(claim) {
			return p, true
		}
	}
	return Port{}, false
}

// parseNetwork reads "192.168.1.0/24", "fd00::/8" or a bare address.
func parseNetwork(s string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is neither an address nor a network such as \"192.168.1.0/24\"", s)
	}
	if p != p.Masked() {
		return netip.Prefix{}, fmt.Errorf("%q has host bits set: did you mean %q?", s, p.Masked())
	}
	return p, nil
}

//go:embed default.toml
var defaultTOML []byte

//go:embed reference.toml
var referenceTOML []byte

// DefaultTOML returns the embedded default configuration, the one `make
// install` puts in /etc/nftknock.
func DefaultTOML() []byte { return slices.Clone(defaultTOML) }

// ReferenceTOML returns the embedded reference configuration: every key
// of every kind of door, with its default. `nftknockd -print-config`
// prints it.
func ReferenceTOML() []byte { return slices.Clone(referenceTOML) }
