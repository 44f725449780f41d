package config

import (
	_ "embed"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/nftknock/nftknock/knock/spa"
)

// doorKeys lists the keys a [[door]] may have, for error messages.
const doorKeys = "name, sequence, close_sequence, one_time_sequences, seq_timeout, tcp_flags, interface, open, open_to, open_for, always_allow, on_open, on_close, hook_timeout, spa_port, key_file, spa_max_age, spa_allow_requested, sequence_key_file, sequence_length, sequence_ports, rotate_every"

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
	maxSPAMaxAge   = time.Hour

	// A rotating door's sequence is drawn from at least minRotatingPorts
	// ports and worth at least minRotatingBits bits: a blind guess
	// succeeds less than once in 2^32 tries.
	minRotatingPorts = 256
	minRotatingBits  = 32
	maxRotateEvery   = 24 * time.Hour

	defaultHookTimeout = 10 * time.Second
)

// DefaultSPAMaxAge is an SPA door's spa_max_age when the file gives none.
const DefaultSPAMaxAge = 30 * time.Second

// Limits on a rotating door's sequence_length and rotate_every (a client
// needs time to send the sequence), which the client (nftknock knock
// -door) checks too.
const (
	MinRotatingLength = 2
	MaxRotatingLength = 16
	MinRotateEvery    = time.Second
)

// A rotating door's parameters when the file gives none. The client
// (nftknock knock -door) has the same defaults, so a door that keeps them
// needs only its key on the client.
const (
	DefaultSequenceLength = 4
	DefaultSequencePorts  = "20000-40000:tcp"
	DefaultRotateEvery    = 30 * time.Second
)

var (
	doorNameRE  = regexp.MustCompile(`^[a-z0-9_]+$`)
	tableNameRE = regexp.MustCompile(`^[A-Za-z0-9_]+$`)
	ifnameRE    = regexp.MustCompile(`^[^/\s]{1,15}$`)
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
	Name          string   `toml:"name"`
	Sequence      []string `toml:"sequence"`
	CloseSequence []string `toml:"close_sequence"`
	OneTime       string   `toml:"one_time_sequences"`
	SeqTimeout    string   `toml:"seq_timeout"`
	TCPFlags      *string  `toml:"tcp_flags"`
	Interface     string   `toml:"interface"`
	Open          []string `toml:"open"`
	OpenTo        string   `toml:"open_to"`
	OpenFor       string   `toml:"open_for"`
	AlwaysAllow   []string `toml:"always_allow"`
	OnOpen        []string `toml:"on_open"`
	OnClose       []string `toml:"on_close"`
	HookTimeout   string   `toml:"hook_timeout"`
	SPAPort       string   `toml:"spa_port"`
	KeyFile       string   `toml:"key_file"`
	SPAMaxAge     string   `toml:"spa_max_age"`
	SPAAllowReq   bool     `toml:"spa_allow_requested"`
	SeqKeyFile    string   `toml:"sequence_key_file"`
	SeqLength     *int64   `toml:"sequence_length"`
	SeqPorts      string   `toml:"sequence_ports"`
	RotateEvery   string   `toml:"rotate_every"`
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
		v.add(door, name, k[1], "unknown key in [[door]] (known: "+doorKeys+")")
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
	v.crossCheckOneTime(cfg.Doors)
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
	case slices.Contains([]string{"knock_first", "knocking", "knock_rate"}, raw.Name) || strings.HasSuffix(raw.Name, "_allow"):
		// The door's sets, <name>_v4 and <name>_v6, would have the name
		// of a table-wide set or of another door's always_allow set.
		v.add(i, label, "name", "%q would give the door a set name nftknock uses for its own sets (knock_first, knocking, knock_rate, <door>_allow): choose another name", raw.Name)
	}

	spa := raw.SPAPort != ""
	if spa {
		v.spa(i, label, raw, &d)
	} else {
		v.refuse(i, label, "only an SPA door (one with spa_port) has %s",
			given{"key_file", raw.KeyFile != ""}, given{"spa_max_age", raw.SPAMaxAge != ""}, given{"spa_allow_requested", raw.SPAAllowReq})
	}
	rotating := raw.SeqKeyFile != ""
	if rotating {
		v.rotating(i, label, raw, &d)
	} else {
		v.refuse(i, label, "only a rotating door (one with sequence_key_file) has %s",
			given{"sequence_length", raw.SeqLength != nil}, given{"sequence_ports", raw.SeqPorts != ""}, given{"rotate_every", raw.RotateEvery != ""})
	}
	switch {
	case spa && rotating:
		v.add(i, label, "sequence_key_file", "a door has either spa_port or sequence_key_file, not both")
	case spa, rotating:
	case raw.OneTime != "" && len(raw.Sequence) > 0:
		v.add(i, label, "one_time_sequences", "a door has either sequence or one_time_sequences, not both")
	case raw.OneTime != "":
		d.OneTime = raw.OneTime
		d.Sequence = v.oneTime(i, label, raw.OneTime)
	default:
		d.Sequence = v.sequence(i, label, "sequence", raw.Sequence)
	}
	if raw.CloseSequence != nil {
		d.CloseSequence = v.sequence(i, label, "close_sequence", raw.CloseSequence)
		if slices.Equal(d.CloseSequence, d.Sequence) && len(d.Sequence) > 0 {
			v.add(i, label, "close_sequence", "is the same as sequence: a knock could not tell opening from closing")
		}
	}
	d.TCPFlags = DefaultTCPFlags
	if raw.TCPFlags != nil {
		f, err := ParseTCPFlags(*raw.TCPFlags)
		if err != nil {
			v.add(i, label, "tcp_flags", "%v", err)
		}
		d.TCPFlags = f
	}
	if raw.Interface != "" {
		if !ifnameRE.MatchString(raw.Interface) {
			v.add(i, label, "interface", "%q is not an interface name (1-15 characters, no spaces or /)", raw.Interface)
		}
		d.Interface = raw.Interface
	}
	d.Open = v.ports(i, label, "open", raw.Open, maxOpen, ParsePort, `list what a knock opens, e.g. ["22:tcp"]`)
	switch raw.OpenTo {
	case "", "source":
	case "anyone":
		d.OpenToAnyone = true
	default:
		v.add(i, label, "open_to", "%q is neither \"source\" (the knocking address only, the default) nor \"anyone\"", raw.OpenTo)
	}
	for j, s := range raw.AlwaysAllow {
		p, err := parseNetwork(s)
		if err != nil {
			v.add(i, label, fmt.Sprintf("always_allow[%d]", j), "%v", err)
			continue
		}
		d.AlwaysAllow = append(d.AlwaysAllow, p)
	}
	d.OnOpen = v.hook(i, label, "on_open", raw.OnOpen)
	d.OnClose = v.hook(i, label, "on_close", raw.OnClose)
	d.HookTimeout = defaultHookTimeout
	if raw.HookTimeout != "" {
		d.HookTimeout = v.duration(i, label, "hook_timeout", raw.HookTimeout, maxHookTimeout)
	}
	if !spa {
		d.SeqTimeout = v.duration(i, label, "seq_timeout", raw.SeqTimeout, maxSeqTimeout)
		if d.IsRotating() && d.SeqTimeout > d.RotateEvery {
			v.add(i, label, "seq_timeout", "%s is longer than rotate_every (%s): a sequence is accepted for two windows from the one it was drawn for, so a knock begun late could not finish; make seq_timeout at most rotate_every", d.SeqTimeout, d.RotateEvery)
		}
	} else if raw.SeqTimeout != "" {
		v.add(i, label, "seq_timeout", "an SPA door has no knock sequence to time out: remove seq_timeout")
	}
	d.OpenFor = v.duration(i, label, "open_for", raw.OpenFor, maxOpenFor)
	return d
}

// spa validates an SPA door's keys into d. A door is either a knock door
// or an SPA door: a sequence as well is an error.
func (v *validator) spa(i int, label string, raw *rawDoor, d *Door) {
	v.refuse(i, label, "a door has either spa_port or %s, not both", sequenceKeys(raw)...)
	p, err := ParseKnock(raw.SPAPort)
	switch {
	case err != nil:
		v.add(i, label, "spa_port", "%v", err)
	case p.Proto != UDP || !strings.Contains(raw.SPAPort, ":"):
		v.add(i, label, "spa_port", "%q: an SPA port is a UDP port, written \"62201:udp\"", raw.SPAPort)
	default:
		d.SPAPort = p
	}
	d.KeyFile = raw.KeyFile
	switch {
	case raw.KeyFile == "":
		v.add(i, label, "key_file", "missing: an SPA door needs a key file (nftknock keygen > FILE; chmod 600 FILE)")
	default:
		d.Key = v.keyFile(i, label, "key_file", raw.KeyFile)
	}
	d.SPAMaxAge = DefaultSPAMaxAge
	if raw.SPAMaxAge != "" {
		d.SPAMaxAge = v.duration(i, label, "spa_max_age", raw.SPAMaxAge, maxSPAMaxAge)
	}
	d.SPAAllowRequested = raw.SPAAllowReq
}

// given is whether a door key was set in the file.
type given struct {
	key string
	set bool
}

// refuse reports each key of keys that was set, with format (whose %s is
// the key): keys that do not go with the kind of door.
func (v *validator) refuse(i int, label, format string, keys ...given) {
	for _, k := range keys {
		if k.set {
			v.add(i, label, k.key, format, k.key)
		}
	}
}

// sequenceKeys are the keys of a door with a fixed sequence.
func sequenceKeys(raw *rawDoor) []given {
	return []given{{"sequence", len(raw.Sequence) > 0}, {"one_time_sequences", raw.OneTime != ""}, {"close_sequence", raw.CloseSequence != nil}}
}

// rotating validates a rotating door's keys into d. Its sequence is
// derived, so a fixed one as well is an error.
func (v *validator) rotating(i int, label string, raw *rawDoor, d *Door) {
	v.refuse(i, label, "a rotating door (one with sequence_key_file) derives its sequence: remove %s", sequenceKeys(raw)...)
	d.SequenceKeyFile = raw.SeqKeyFile
	d.SequenceKey = v.keyFile(i, label, "sequence_key_file", raw.SeqKeyFile)
	d.SequenceLength = DefaultSequenceLength
	if raw.SeqLength != nil {
		if n := *raw.SeqLength; n < MinRotatingLength || n > MaxRotatingLength {
			v.add(i, label, "sequence_length", "%d is out of range %d-%d", n, MinRotatingLength, MaxRotatingLength)
		} else {
			d.SequenceLength = int(n)
		}
	}
	ports := DefaultSequencePorts
	if raw.SeqPorts != "" {
		ports = raw.SeqPorts
	}
	p, err := ParsePort(ports)
	size := int(p.End()) - int(p.Num) + 1
	bits := float64(d.SequenceLength) * math.Log2(float64(size))
	switch {
	case err != nil:
		v.add(i, label, "sequence_ports", "%v", err)
	case size < minRotatingPorts:
		v.add(i, label, "sequence_ports", "%q holds %d ports: give a range of at least %d, e.g. %q", ports, size, minRotatingPorts, DefaultSequencePorts)
	case bits < minRotatingBits:
		v.add(i, label, "sequence_ports", "%d knocks over %d ports are worth %.0f bits: a blind guess would succeed about once in 2^%.0f tries; make sequence_length or the range larger (at least %d bits)",
			d.SequenceLength, size, bits, bits, minRotatingBits)
	default:
		d.SequencePorts = p
	}
	d.RotateEvery = DefaultRotateEvery
	if raw.RotateEvery != "" {
		if e := v.duration(i, label, "rotate_every", raw.RotateEvery, maxRotateEvery); e != 0 {
			if e < MinRotateEvery {
				v.add(i, label, "rotate_every", "%q is shorter than %s: a client needs time to send the sequence", raw.RotateEvery, MinRotateEvery)
			} else {
				d.RotateEvery = e
			}
		}
	}
}

// keyFile reads the key file a door's field names.
func (v *validator) keyFile(i int, label, field, path string) []byte {
	switch {
	case !filepath.IsAbs(path):
		v.add(i, label, field, "%q must be an absolute path", path)
	default:
		key, err := LoadKey(path)
		if err != nil {
			v.add(i, label, field, "%v", err)
		}
		return key
	}
	return nil
}

// LoadKey reads a door key file: root's (CheckPrivate), readable by no one
// else, holding the base64 of 32 random bytes.
func LoadKey(path string) ([]byte, error) {
	if err := CheckPrivate(path); err != nil {
		return nil, err
	}
	return spa.ReadKeyFile(path)
}

// sequence validates a list of knocks.
func (v *validator) sequence(i int, label, field string, raw []string) []Port {
	seq := v.ports(i, label, field, raw, maxSequence, ParseKnock, `list the knocks, e.g. ["7000:tcp", "8000:udp"]`)
	for j := 1; j < len(raw); j++ {
		prev, err1 := ParseKnock(raw[j-1])
		p, err2 := ParseKnock(raw[j])
		if err1 == nil && err2 == nil && p == prev {
			v.add(i, label, fmt.Sprintf("%s[%d]", field, j),
				"%s repeats the knock before it: a repeated knock cannot be told from a retransmitted packet", p)
		}
	}
	return seq
}

// oneTime reads the door's one_time_sequences file and returns the
// sequence due now (none once the file has run out).
func (v *validator) oneTime(i int, label, path string) []Port {
	if !filepath.IsAbs(path) {
		v.add(i, label, "one_time_sequences", "%q must be an absolute path", path)
		return nil
	}
	if err := CheckPrivate(path); err != nil {
		v.add(i, label, "one_time_sequences", "%v", err)
		return nil
	}
	ot, err := LoadOneTime(path)
	if err != nil {
		v.add(i, label, "one_time_sequences", "%v", err)
		return nil
	}
	seq, _, _ := ot.Current()
	return seq
}

// hook validates an on_open/on_close argv: it is run without a shell, so
// argv[0] must be an absolute path (no PATH lookup to surprise anyone).
func (v *validator) hook(i int, label, field string, argv []string) []string {
	if argv == nil {
		return nil
	}
	switch {
	case len(argv) == 0:
		v.add(i, label, field, "empty: give the program and its arguments, e.g. [\"/usr/local/bin/notify\", \"{door}\", \"{src}\"]")
	case len(argv) > maxHookArgs:
		v.add(i, label, field, "%d arguments; at most %d are allowed", len(argv), maxHookArgs)
	case !filepath.IsAbs(argv[0]):
		v.add(i, label, field+"[0]", "%q must be an absolute path: hooks run without a shell or PATH lookup", argv[0])
	default:
		return argv
	}
	return nil
}

// ParseTCPFlags parses knockd's tcpflags: a comma-separated list of fin,
// syn, rst, psh, ack, urg, each of which may be negated with "!".
func ParseTCPFlags(s string) (TCPFlags, error) {
	bits := map[string]uint8{"fin": FlagFIN, "syn": FlagSYN, "rst": FlagRST, "psh": FlagPSH, "ack": FlagACK, "urg": FlagURG}
	var f TCPFlags
	for _, word := range strings.Split(s, ",") {
		word = strings.ToLower(strings.TrimSpace(word))
		name, neg := strings.CutPrefix(word, "!")
		bit, ok := bits[name]
		if !ok {
			return TCPFlags{}, fmt.Errorf("%q: %q is not one of fin, syn, rst, psh, ack, urg (each may be negated with !)", s, word)
		}
		if f.Mask&bit != 0 {
			return TCPFlags{}, fmt.Errorf("%q names %s twice", s, name)
		}
		f.Mask |= bit
		if !neg {
			f.Want |= bit
		}
	}
	return f, nil
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

// ports validates a list of PORT[:proto]; errors name field[j].
func (v *validator) ports(i int, label, field string, raw []string, max int, parse func(string) (Port, error), hint string) []Port {
	switch {
	case len(raw) == 0:
		v.add(i, label, field, "empty: %s", hint)
	case len(raw) > max:
		v.add(i, label, field, "%d entries; at most %d are allowed", len(raw), max)
	}
	ports := make([]Port, 0, len(raw))
	for j, s := range raw {
		p, err := parse(s)
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

// openedPort is a port a door opens.
type openedPort struct {
	port Port
	door string
}

// crossCheck rejects a port that one door knocks on and another (or the
// same) door opens: the opened port's drop rule would swallow the knock,
// or a knock would open the port it is supposed to guard.
func (v *validator) crossCheck(doors []rawDoor) {
	var all []openedPort
	for _, d := range doors {
		for _, s := range d.Open {
			if p, err := ParsePort(s); err == nil {
				all = append(all, openedPort{p, d.Name})
			}
		}
	}
	knocks := map[Port]string{}
	for _, d := range doors {
		for _, s := range append(append([]string(nil), d.Sequence...), d.CloseSequence...) {
			if k, err := ParseKnock(s); err == nil {
				knocks[k] = d.Name
			}
		}
	}
	seenSPA := map[Port]string{}
	for i, d := range doors {
		if d.SPAPort == "" {
			continue
		}
		k, err := ParseKnock(d.SPAPort)
		if err != nil {
			continue
		}
		for _, o := range all {
			if o.port.Covers(k) {
				v.add(i, d.Name, "spa_port", "%s is also opened by door %q (%s): an SPA port must not be an opened port", k, o.door, o.port)
				break
			}
		}
		if other, ok := knocks[k]; ok {
			v.add(i, d.Name, "spa_port", "%s is a knock of door %q: an SPA port must be a port of its own", k, other)
		}
		if other, ok := seenSPA[k]; ok {
			v.add(i, d.Name, "spa_port", "%s is already door %q's SPA port: each SPA door needs its own port", k, other)
		}
		seenSPA[k] = d.Name
	}
	v.crossCheckRotating(doors, all)
	for i, d := range doors {
		for _, list := range []struct {
			field string
			seq   []string
		}{{"sequence", d.Sequence}, {"close_sequence", d.CloseSequence}} {
			field := list.field
			for j, s := range list.seq {
				k, err := ParseKnock(s)
				if err != nil {
					continue // reported already
				}
				for _, o := range all {
					if o.port.Covers(k) {
						v.add(i, d.Name, fmt.Sprintf("%s[%d]", field, j),
							"%s is also opened by door %q (%s): a knock port must not be an opened port", k, o.door, o.port)
						break
					}
				}
			}
		}
	}
}

// crossCheckRotating keeps a rotating door's range to itself: every port
// of it is dropped, so an opened port, another door's knock or SPA port, or
// another range inside it would be swallowed or would confuse the doors.
func (v *validator) crossCheckRotating(doors []rawDoor, opened []openedPort) {
	type span struct {
		ports Port
		door  string
	}
	var ranges []span
	for i, d := range doors {
		if d.SeqKeyFile == "" {
			continue
		}
		s := d.SeqPorts
		if s == "" {
			s = DefaultSequencePorts
		}
		r, err := ParsePort(s)
		if err != nil {
			continue // reported already
		}
		clash := func(what string) {
			v.add(i, d.Name, "sequence_ports", "%s overlaps %s: a rotating door's range must be ports of its own", r, what)
		}
		for _, o := range opened {
			if o.port.Overlaps(r) {
				clash(fmt.Sprintf("%s, which door %q opens", o.port, o.door))
			}
		}
		for _, o := range doors {
			for _, s := range slices.Concat(o.Sequence, o.CloseSequence) {
				if k, err := ParseKnock(s); err == nil && r.Covers(k) {
					clash(fmt.Sprintf("%s, a knock of door %q", k, o.Name))
				}
			}
			if k, err := ParseKnock(o.SPAPort); err == nil && o.SPAPort != "" && r.Covers(k) {
				clash(fmt.Sprintf("%s, door %q's SPA port", k, o.Name))
			}
		}
		for _, o := range ranges {
			if o.ports.Overlaps(r) {
				clash(fmt.Sprintf("%s, door %q's range", o.ports, o.door))
			}
		}
		ranges = append(ranges, span{r, d.Name})
	}
}

// crossCheckOneTime applies crossCheck's rule to the sequence a
// one_time_sequences file has due now.
func (v *validator) crossCheckOneTime(doors []Door) {
	for i, d := range doors {
		if d.OneTime == "" {
			continue
		}
		for _, k := range d.Sequence {
			for _, o := range doors {
				for _, p := range o.Open {
					if p.Covers(k) {
						v.add(i, d.Name, "one_time_sequences",
							"%s: the sequence due now knocks on %s, which door %q opens: a knock port must not be an opened port", d.OneTime, k, o.Name)
					}
				}
				if o.IsRotating() && o.SequencePorts.Covers(k) {
					v.add(i, d.Name, "one_time_sequences",
						"%s: the sequence due now knocks on %s, inside rotating door %q's range %s: a knock port must be a port of its own", d.OneTime, k, o.Name, o.SequencePorts)
				}
			}
		}
	}
}

// ParsePort parses an opened port: "22", "22:tcp", "1194:udp", or a
// range "60000-61000:udp".
func ParsePort(s string) (Port, error) {
	spec, proto, err := splitProto(s)
	if err != nil {
		return Port{}, err
	}
	if proto == ICMP {
		return Port{}, fmt.Errorf("%q: icmp is a knock step, not something a door opens", s)
	}
	first, last, isRange := strings.Cut(spec, "-")
	p := Port{Proto: proto}
	if p.Num, err = portNumber(s, first); err != nil {
		return Port{}, err
	}
	if isRange {
		if p.Last, err = portNumber(s, last); err != nil {
			return Port{}, err
		}
		if p.Last <= p.Num {
			return Port{}, fmt.Errorf("%q: a range runs from the lower port to the higher", s)
		}
	}
	return p, nil
}

// ParseKnock parses one knock step in knockd's notation: "7000",
// "7000:tcp", "8000:udp", or "1000:icmp" — an echo request carrying
// exactly 1000 bytes of payload (ping -s 1000).
func ParseKnock(s string) (Port, error) {
	spec, proto, err := splitProto(s)
	if err != nil {
		return Port{}, err
	}
	if proto == ICMP {
		n, err := strconv.ParseUint(spec, 10, 32)
		if err != nil || n > maxICMPPayload {
			return Port{}, fmt.Errorf("%q: an icmp knock is the payload size of a ping, 0-%d", s, maxICMPPayload)
		}
		return Port{Num: uint16(n), Proto: ICMP}, nil
	}
	p := Port{Proto: proto}
	if p.Num, err = portNumber(s, spec); err != nil {
		return Port{}, err
	}
	return p, nil
}

// ParseSequence parses a knock sequence as knockd's one_time_sequences
// files write it: steps separated by commas and/or spaces.
func ParseSequence(line string) ([]Port, error) {
	fields := strings.FieldsFunc(line, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' })
	if len(fields) == 0 {
		return nil, errors.New("empty sequence")
	}
	if len(fields) > maxSequence {
		return nil, fmt.Errorf("%d knocks; at most %d are allowed", len(fields), maxSequence)
	}
	seq := make([]Port, 0, len(fields))
	for _, f := range fields {
		p, err := ParseKnock(f)
		if err != nil {
			return nil, err
		}
		seq = append(seq, p)
	}
	return seq, nil
}

// maxICMPPayload is the largest echo payload an IPv4 packet can carry.
const maxICMPPayload = 65507

func splitProto(s string) (spec string, proto Proto, err error) {
	spec, name, hasProto := strings.Cut(strings.TrimSpace(s), ":")
	if !hasProto {
		return spec, TCP, nil
	}
	switch strings.ToLower(name) {
	case "tcp":
		return spec, TCP, nil
	case "udp":
		return spec, UDP, nil
	case "icmp":
		return spec, ICMP, nil
	}
	return "", 0, fmt.Errorf("%q: protocol %q is not tcp, udp or icmp", s, name)
}

func portNumber(s, num string) (uint16, error) {
	n, err := strconv.ParseUint(num, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%q: port is not a number: write PORT[:tcp|udp], e.g. \"7000:tcp\"", s)
	}
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("%q: port %d is out of range 1-65535", s, n)
	}
	return uint16(n), nil
}
