package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/nftknock/nftknock/config"
)

// The client file, ~/.config/nftknock/client.toml: one [[server]] table
// per server, saying how to knock on it, so that `nftknock open HOST` and
// `nftknock proxy HOST PORT` (ssh's ProxyCommand) need nothing else.
//
//	[[server]]
//	host = "web1.example.org"   # what you type, and what ssh passes as %h
//	door = "team"
//	spa_port = "62203:udp"
//	server_key_file = "~/.config/nftknock/web1.pub"   # or known_hosts = true
//	identity = "agent"                                  # or a key file
//
// A server's door is of one kind, given by the keys it has:
//
//   - a plain sequence: sequence = ["7000:tcp", "8000:udp", "9000"], and
//     delay between knocks (default none);
//   - a shared-key SPA door: door, key_file, spa_port;
//   - a rotating door: door, sequence_key_file, and sequence_length,
//     sequence_ports and rotate_every when the door's are not the
//     defaults; delay;
//   - a public-key SPA door: door, spa_port, server_key_file or
//     known_hosts = true (then ssh_port, default 22, says which
//     known_hosts entry), identity (default "agent").
//
// The SPA kinds take allow = "ADDRESS" or nat = true as nftknock spa
// takes -allow and -nat. Paths may start with ~/.

// defaultClientFile is the client file's path under $HOME.
const defaultClientFile = ".config/nftknock/client.toml"

// maxClientFile bounds what is read of a client file.
const maxClientFile = 1 << 20

type rawClientFile struct {
	Servers []rawServer `toml:"server"`
}

type rawServer struct {
	Host          string   `toml:"host"`
	Door          string   `toml:"door"`
	Sequence      []string `toml:"sequence"`
	Delay         string   `toml:"delay"`
	SPAPort       string   `toml:"spa_port"`
	KeyFile       string   `toml:"key_file"`
	SeqKeyFile    string   `toml:"sequence_key_file"`
	SeqLength     *int64   `toml:"sequence_length"`
	SeqPorts      string   `toml:"sequence_ports"`
	RotateEvery   string   `toml:"rotate_every"`
	ServerKeyFile string   `toml:"server_key_file"`
	KnownHosts    bool     `toml:"known_hosts"`
	SSHPort       *int64   `toml:"ssh_port"`
	Identity      string   `toml:"identity"`
	Allow         string   `toml:"allow"`
	NAT           bool     `toml:"nat"`
}

const serverKeys = "host, door, sequence, delay, spa_port, key_file, sequence_key_file, sequence_length, sequence_ports, rotate_every, server_key_file, known_hosts, ssh_port, identity, allow, nat"

// clientFileError is one problem in a client file, naming where.
type clientFileError struct {
	file  string
	line  int
	host  string
	field string
	msg   string
}

func (e *clientFileError) Error() string {
	var b strings.Builder
	b.WriteString(e.file)
	if e.line > 0 {
		fmt.Fprintf(&b, ":%d", e.line)
	}
	b.WriteString(": ")
	if e.host != "" {
		fmt.Fprintf(&b, "server %q: ", e.host)
	}
	if e.field != "" {
		fmt.Fprintf(&b, "%s: ", e.field)
	}
	b.WriteString(e.msg)
	return b.String()
}

// decodeErrRE picks the line and key out of the decoder's type errors,
// which carry them only in their text.
var decodeErrRE = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)

// loadClientFile reads and checks a client file.
func loadClientFile(path string) ([]*knockPlan, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("client file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxClientFile+1))
	if err != nil {
		return nil, fmt.Errorf("client file %s: %w", path, err)
	}
	if len(data) > maxClientFile {
		return nil, &clientFileError{file: path, msg: fmt.Sprintf("larger than %d bytes", maxClientFile)}
	}
	return parseClientFile(path, data)
}

// parseClientFile checks a client file's TOML strictly: an unknown key, a
// value of the wrong type or a server of no (or two) door kinds is an
// error naming the file, line and key. Every problem is reported at once.
func parseClientFile(file string, data []byte) ([]*knockPlan, error) {
	var raw rawClientFile
	md, err := toml.Decode(string(data), &raw)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, &clientFileError{file: file, line: pe.Position.Line, msg: pe.Message}
		}
		if m := decodeErrRE.FindStringSubmatch(err.Error()); m != nil {
			line, _ := strconv.Atoi(m[1])
			return nil, &clientFileError{file: file, line: line, field: strings.TrimPrefix(m[2], "server."), msg: m[3]}
		}
		return nil, &clientFileError{file: file, msg: err.Error()}
	}
	v := &clientValidator{file: file, lines: newServerLocator(data)}
	for _, k := range md.Undecoded() {
		if len(k) >= 2 && k[0] == "server" {
			i := v.lines.serverWith(k[1])
			v.add(i, "", k[1], "unknown key in [[server]] (known: %s)", serverKeys)
		} else {
			v.add(-1, "", k.String(), "unknown key (a client file has [[server]] tables only)")
		}
	}
	var plans []*knockPlan
	seen := map[string]int{}
	for i := range raw.Servers {
		p := v.server(i, &raw.Servers[i])
		if p == nil {
			continue
		}
		key := strings.ToLower(p.host)
		if j, dup := seen[key]; dup {
			v.add(i, p.host, "host", "given twice (first on line %d)", v.lines.line(j, "host"))
			continue
		}
		seen[key] = i
		plans = append(plans, p)
	}
	if len(v.errs) > 0 {
		return nil, errors.Join(v.errs...)
	}
	return plans, nil
}

type clientValidator struct {
	file  string
	lines serverLocator
	errs  []error
}

func (v *clientValidator) add(server int, host, field, format string, a ...any) {
	v.errs = append(v.errs, &clientFileError{file: v.file, line: v.lines.line(server, field), host: host,
		field: field, msg: fmt.Sprintf(format, a...)})
}

// server checks one [[server]] table; nil if it has errors.
func (v *clientValidator) server(i int, r *rawServer) *knockPlan {
	before := len(v.errs)
	p := &knockPlan{host: r.Host, door: r.Door, keyFile: r.KeyFile, serverKeyFile: r.ServerKeyFile,
		knownHosts: r.KnownHosts, identity: r.Identity, nat: r.NAT, sshPort: 22}
	name := r.Host
	if r.Host == "" {
		v.add(i, "", "host", "missing: the name you give nftknock open and proxy (ssh's %%h)")
	}
	var kinds []string
	if len(r.Sequence) > 0 {
		kinds = append(kinds, "sequence")
		p.kind = kindSequence
	}
	if r.KeyFile != "" {
		kinds = append(kinds, "key_file")
		p.kind = kindSharedSPA
	}
	if r.SeqKeyFile != "" {
		kinds = append(kinds, "sequence_key_file")
		p.kind = kindRotating
	}
	if r.ServerKeyFile != "" || r.KnownHosts {
		kinds = append(kinds, "server_key_file/known_hosts")
		p.kind = kindKeySPA
	}
	switch len(kinds) {
	case 0:
		v.add(i, name, "", "no door: give sequence, key_file (shared-key SPA), sequence_key_file (rotating) or server_key_file / known_hosts = true (public-key SPA)")
		return nil
	case 1:
	default:
		v.add(i, name, "", "a server's door is of one kind, this one has %s", strings.Join(kinds, " and "))
		return nil
	}
	if r.ServerKeyFile != "" && r.KnownHosts {
		v.add(i, name, "known_hosts", "give server_key_file or known_hosts = true, not both")
	}
	isSPA := p.kind == kindSharedSPA || p.kind == kindKeySPA
	needDoor := p.kind != kindSequence
	switch {
	case needDoor && r.Door == "":
		v.add(i, name, "door", "missing: the door's name")
	case !needDoor && r.Door != "":
		v.add(i, name, "door", "a plain sequence has no door name here")
	}
	if isSPA {
		p.spaPort = defaultSPAPort
		if r.SPAPort != "" {
			port, err := config.ParsePort(r.SPAPort)
			switch {
			case err != nil:
				v.add(i, name, "spa_port", "%v", err)
			case port.Proto != config.UDP || port.Last != 0:
				v.add(i, name, "spa_port", "%q: an SPA port is one PORT:udp", r.SPAPort)
			default:
				p.spaPort = int(port.Num)
			}
		}
		if r.Allow != "" {
			a, err := netip.ParseAddr(r.Allow)
			if err != nil || a.Zone() != "" {
				v.add(i, name, "allow", "%q is not an IPv4 or IPv6 address", r.Allow)
			}
			p.allow = a
			if r.NAT {
				v.add(i, name, "nat", "give allow or nat = true, not both")
			}
		}
	} else {
		for field, set := range map[string]bool{"spa_port": r.SPAPort != "", "allow": r.Allow != "", "nat": r.NAT} {
			if set {
				v.add(i, name, field, "only for SPA doors (key_file, server_key_file, known_hosts)")
			}
		}
	}
	if p.kind != kindKeySPA {
		for field, set := range map[string]bool{"identity": r.Identity != "", "ssh_port": r.SSHPort != nil} {
			if set {
				v.add(i, name, field, "only for public-key SPA doors (server_key_file, known_hosts)")
			}
		}
	} else if r.SSHPort != nil {
		if n := *r.SSHPort; n < 1 || n > 65535 {
			v.add(i, name, "ssh_port", "%d is out of range 1-65535", n)
		} else {
			p.sshPort = int(n)
		}
	}
	if p.kind != kindRotating {
		for field, set := range map[string]bool{"sequence_length": r.SeqLength != nil, "sequence_ports": r.SeqPorts != "", "rotate_every": r.RotateEvery != ""} {
			if set {
				v.add(i, name, field, "only for rotating doors (sequence_key_file)")
			}
		}
	}
	if r.Delay != "" {
		if isSPA {
			v.add(i, name, "delay", "only for knock sequences (sequence, sequence_key_file)")
		} else if d, err := time.ParseDuration(r.Delay); err != nil || d < 0 || d > maxKnockDelay {
			v.add(i, name, "delay", "%q: a duration of 0 to %s, like \"100ms\"", r.Delay, maxKnockDelay)
		} else {
			p.delay = d
		}
	}
	switch p.kind {
	case kindSequence:
		for j, s := range r.Sequence {
			port, err := config.ParseKnock(s)
			if err != nil {
				v.add(i, name, fmt.Sprintf("sequence[%d]", j), "%v", err)
				continue
			}
			p.steps = append(p.steps, port)
		}
	case kindRotating:
		p.rot = rotatingFlags{door: r.Door, keyFile: r.SeqKeyFile, length: config.DefaultSequenceLength,
			ports: config.DefaultSequencePorts, every: config.DefaultRotateEvery}
		if r.SeqLength != nil {
			if n := *r.SeqLength; n < config.MinRotatingLength || n > config.MaxRotatingLength {
				v.add(i, name, "sequence_length", "%d is out of range %d-%d", n, config.MinRotatingLength, config.MaxRotatingLength)
			} else {
				p.rot.length = int(n)
			}
		}
		if r.SeqPorts != "" {
			if port, err := config.ParsePort(r.SeqPorts); err != nil || port.Last <= port.Num {
				v.add(i, name, "sequence_ports", "%q: give the door's range, FIRST-LAST[:tcp|udp]", r.SeqPorts)
			} else {
				p.rot.ports = r.SeqPorts
			}
		}
		if r.RotateEvery != "" {
			if d, err := time.ParseDuration(r.RotateEvery); err != nil || d < config.MinRotateEvery {
				v.add(i, name, "rotate_every", "%q: a duration of at least %s, like \"30s\"", r.RotateEvery, config.MinRotateEvery)
			} else {
				p.rot.every = d
			}
		}
	}
	if len(v.errs) > before {
		return nil
	}
	return p
}

// serverLocator finds the line of a key in the i-th [[server]] table, so
// that errors point at it: the TOML decoder reports lines for syntax
// errors only.
type serverLocator struct {
	// keys[i] maps a key of the i-th [[server]] to its line; tables[i] is
	// the line of its [[server]] header.
	keys   []map[string]int
	tables []int
}

func newServerLocator(data []byte) serverLocator {
	var l serverLocator
	for n, line := range bytes.Split(data, []byte("\n")) {
		s := strings.TrimSpace(string(line))
		if strings.ReplaceAll(s, " ", "") == "[[server]]" {
			l.keys = append(l.keys, map[string]int{})
			l.tables = append(l.tables, n+1)
			continue
		}
		key, _, ok := strings.Cut(s, "=")
		if !ok || strings.HasPrefix(s, "#") || len(l.keys) == 0 {
			continue
		}
		key = strings.Trim(strings.TrimSpace(key), `"'`)
		if _, seen := l.keys[len(l.keys)-1][key]; !seen {
			l.keys[len(l.keys)-1][key] = n + 1
		}
	}
	return l
}

// line is the line of field in server i (-1: none), or of the server's
// [[server]] header when the field is not there, or 0.
func (l serverLocator) line(i int, field string) int {
	if i < 0 || i >= len(l.keys) {
		return 0
	}
	if j := strings.IndexByte(field, '['); j >= 0 {
		field = field[:j]
	}
	if n, ok := l.keys[i][field]; ok {
		return n
	}
	return l.tables[i]
}

// serverWith is the first server that sets key, or -1.
func (l serverLocator) serverWith(key string) int {
	for i, keys := range l.keys {
		if _, ok := keys[key]; ok {
			return i
		}
	}
	return -1
}

// clientFilePath is -config's value, or the default under $HOME.
func clientFilePath(e *env, flagValue string) (string, error) {
	if flagValue != "" {
		return expandHome(e, flagValue), nil
	}
	if xdg := e.env("XDG_CONFIG_HOME"); xdg != "" && filepath.IsAbs(xdg) {
		return filepath.Join(xdg, "nftknock", "client.toml"), nil
	}
	home := e.env("HOME")
	if home == "" {
		return "", errors.New("$HOME is not set: give -config FILE")
	}
	return filepath.Join(home, defaultClientFile), nil
}

// findServer returns the plan for host in the client file.
func findServer(plans []*knockPlan, file, host string) (*knockPlan, error) {
	for _, p := range plans {
		if strings.EqualFold(p.host, host) {
			return p, nil
		}
	}
	return nil, fmt.Errorf("%s has no [[server]] with host = %q", file, host)
}
