package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/nftknock/nftknock/knock/fwknop"
)

// fwknopFlags are migrate's flags for converting fwknopd's configuration
// instead of knockd's.
type fwknopFlags struct {
	fs      *flag.FlagSet
	access  string
	daemon  string
	keysDir string
}

func addFwknopFlags(fs *flag.FlagSet) *fwknopFlags {
	f := &fwknopFlags{fs: fs}
	fs.StringVar(&f.access, "fwknop", "", "convert fwknopd's access.conf `file` instead of a knockd.conf")
	fs.StringVar(&f.daemon, "fwknopd-conf", "", "with -fwknop: fwknopd.conf `file`, for the port and MAX_SPA_PACKET_AGE (fwknopd's defaults without it)")
	fs.StringVar(&f.keysDir, "keys-dir", "", "with -fwknop: `directory` the stanzas' keys are written to, mode 0600 (e.g. /etc/nftknock)")
	return f
}

// given reports whether any of the fwknop flags was set.
func (f *fwknopFlags) given() bool {
	set := false
	f.fs.Visit(func(fl *flag.Flag) {
		set = set || fl.Name == "fwknop" || fl.Name == "fwknopd-conf" || fl.Name == "keys-dir"
	})
	return set
}

// Defaults where fwknopd's files leave a value out: fwknopd's own.
const (
	fwknopDefaultPort    = 62201
	fwknopDefaultMaxAge  = 120 // MAX_SPA_PACKET_AGE
	fwknopDefaultOpenFor = 30  // FW_ACCESS_TIMEOUT
	fwknopDefaultMaxOpen = 300 // MAX_FW_TIMEOUT
	// maxFwknopFile bounds what is read of access.conf and fwknopd.conf:
	// real ones are a few KiB.
	maxFwknopFile = 1 << 20
	// maxFwknopDoors is the most doors a configuration may have, and
	// the most stanzas read.
	maxFwknopDoors = 256
)

func (f *fwknopFlags) run(e *env, args []string) int {
	switch {
	case len(args) != 0:
		return usageErr(e, "migrate", "-fwknop takes no other file: give access.conf as -fwknop FILE")
	case f.access == "":
		return usageErr(e, "migrate", "-fwknopd-conf and -keys-dir go with -fwknop ACCESS_CONF")
	case f.keysDir == "":
		return usageErr(e, "migrate", "-fwknop needs -keys-dir DIR: where the stanzas' keys are written (e.g. /etc/nftknock)")
	}
	keysDir, err := filepath.Abs(f.keysDir)
	if err != nil {
		fail(e, "migrate", err)
		return exitFail
	}
	if !utf8.ValidString(keysDir) || strings.ContainsFunc(keysDir, func(r rune) bool { return r < 0x20 || r == 0x7f || r == '"' || r == '\\' }) {
		return usageErr(e, "migrate", "-keys-dir %q: a directory name with control characters, quotes or backslashes cannot be written into the TOML; choose another", f.keysDir)
	}
	access, err := readBounded(f.access)
	if err != nil {
		fail(e, "migrate", err)
		return exitFail
	}
	var daemon []byte
	if f.daemon != "" {
		if daemon, err = readBounded(f.daemon); err != nil {
			fail(e, "migrate", err)
			return exitFail
		}
	}
	res := migrateFwknop(f.access, access, f.daemon, daemon, keysDir)
	for _, w := range res.warnings {
		fmt.Fprintf(e.stderr, "nftknock migrate: %s\n", w)
	}
	if err := writeKeyFiles(keysDir, res.keys); err != nil {
		fail(e, "migrate", err)
		return exitFail
	}
	e.stdout.Write(res.toml)
	if !res.ok {
		return exitFail
	}
	return exitOK
}

// readBounded reads a configuration file of at most maxFwknopFile bytes.
func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFwknopFile+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(data) > maxFwknopFile {
		return nil, fmt.Errorf("%s: larger than %d bytes: not an fwknop configuration", path, maxFwknopFile)
	}
	return data, nil
}

// keyFile is a key file to write: one base64 line.
type keyFile struct {
	name    string // in the keys directory
	content string
}

// writeKeyFiles writes each file as mode 0600, creating dir (0700) if
// need be. A file that is there already is left alone when it holds the
// same key (migrate run twice), and is an error when it holds another:
// a key is never overwritten.
func writeKeyFiles(dir string, files []keyFile) error {
	if len(files) == 0 {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("keys directory: %w", err)
	}
	for _, kf := range files {
		path := filepath.Join(dir, kf.name)
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, os.ErrExist) {
			old, rerr := os.ReadFile(path)
			if rerr == nil && string(old) == kf.content {
				continue
			}
			return fmt.Errorf("%s exists and holds another key: migrate does not overwrite a key. Fix: move it away, or give another -keys-dir", path)
		}
		if err != nil {
			return err
		}
		_, err = f.WriteString(kf.content)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	return nil
}

// fwSetting is one "NAME value" line of access.conf or fwknopd.conf.
type fwSetting struct {
	name  string // upper case, without a trailing ':'
	value string // up to the first ';'
	raw   string // the value as written, ';' and all
	line  int
}

// parseFwknopLines reads fwknop's "NAME value" lines, psad's convention:
// '#' starts a comment line, a value ends at ';' (fwknopd.conf writes one
// after each).
func parseFwknopLines(data []byte) (settings []fwSetting, warnings []string) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 4096), 64<<10)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, raw := line, ""
		if i := strings.IndexAny(line, " \t"); i >= 0 {
			name, raw = line[:i], strings.TrimSpace(line[i+1:])
		}
		value, _, _ := strings.Cut(raw, ";")
		settings = append(settings, fwSetting{
			name:  strings.ToUpper(strings.TrimSuffix(name, ":")),
			value: strings.TrimSpace(value), raw: raw, line: n,
		})
	}
	if err := sc.Err(); err != nil {
		warnings = append(warnings, fmt.Sprintf("line %d: %v: the rest of the file is not read", n+1, err))
	}
	return settings, warnings
}

// printable makes s safe for a TOML comment and a terminal: control
// characters become '?', and it is cut at 80 bytes.
func printable(s string) string {
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError {
			return '?'
		}
		return r
	}, s)
}

// fwknopDaemon is what the doors take from fwknopd.conf.
type fwknopDaemon struct {
	port     int
	maxAge   int
	comments []string // for the header
}

// parseFwknopd reads the port and the packet age from fwknopd.conf.
// Without the file, fwknopd's defaults. ok is false when the port could
// not be read with certainty.
func parseFwknopd(file string, data []byte) (d fwknopDaemon, warnings []string, ok bool) {
	d = fwknopDaemon{port: fwknopDefaultPort, maxAge: fwknopDefaultMaxAge}
	ok = true
	if file == "" {
		d.comments = append(d.comments, fmt.Sprintf("#   No fwknopd.conf given (-fwknopd-conf): fwknopd's defaults, udp port %d and MAX_SPA_PACKET_AGE %d.", d.port, d.maxAge))
		warnings = append(warnings, fmt.Sprintf("no -fwknopd-conf: assuming fwknopd's defaults (udp port %d, MAX_SPA_PACKET_AGE %d); give -fwknopd-conf if yours differs", d.port, d.maxAge))
		return d, warnings, ok
	}
	settings, warnings := parseFwknopLines(data)
	note := func(format string, a ...any) {
		msg := fmt.Sprintf(format, a...)
		d.comments = append(d.comments, "#   "+msg)
		warnings = append(warnings, "fwknopd.conf "+msg)
	}
	get := map[string]fwSetting{}
	var others []string
	for _, s := range settings {
		get[s.name] = s
		switch s.name {
		case "MAX_SPA_PACKET_AGE", "ENABLE_SPA_PACKET_AGING", "PCAP_FILTER", "ENABLE_UDP_SERVER", "UDPSERV_PORT",
			"PCAP_INTF", "ENABLE_SPA_OVER_HTTP", "ENABLE_TCP_SERVER", "TCPSERV_PORT", "ENABLE_DIGEST_PERSISTENCE":
		default:
			if !slices.Contains(others, s.name) {
				others = append(others, printable(s.name))
			}
		}
	}
	if s, has := get["MAX_SPA_PACKET_AGE"]; has {
		if n, err := strconv.Atoi(s.value); err == nil && n > 0 {
			d.maxAge = n
		} else {
			note("line %d: MAX_SPA_PACKET_AGE %q is not a number of seconds: fwknopd's default %d is used", s.line, printable(s.value), fwknopDefaultMaxAge)
			ok = false
		}
	}
	if s, has := get["ENABLE_SPA_PACKET_AGING"]; has && yes(s.value) == "N" {
		note("line %d: ENABLE_SPA_PACKET_AGING N: not carried over; nftknock always checks a packet's age (the replay cache needs the bound), here %ds", s.line, d.maxAge)
	}
	if s, has := get["ENABLE_UDP_SERVER"]; has && yes(s.value) == "Y" {
		if p, has := get["UDPSERV_PORT"]; has {
			n, err := strconv.Atoi(p.value)
			if err != nil || n < 1 || n > 65535 {
				note("line %d: UDPSERV_PORT %q is not a port: fwknopd's default %d is used; CHECK the door's fwknop_port", p.line, printable(p.value), fwknopDefaultPort)
				ok = false
			} else {
				d.port = n
			}
		}
		d.comments = append(d.comments, fmt.Sprintf("#   ENABLE_UDP_SERVER Y: the port is UDPSERV_PORT, %d.", d.port))
	} else if s, has := get["PCAP_FILTER"]; has {
		port, err := pcapFilterPort(s.value)
		if err != nil {
			note("line %d: PCAP_FILTER %q: %v; udp port %d is used; CHECK the door's fwknop_port", s.line, printable(s.value), err, fwknopDefaultPort)
			ok = false
		} else {
			d.port = port
			d.comments = append(d.comments, fmt.Sprintf("#   PCAP_FILTER %s: the port is %d.", printable(s.value), port))
		}
	}
	if s, has := get["PCAP_INTF"]; has {
		note("line %d: PCAP_INTF %s: not carried over; the door takes packets on every interface", s.line, printable(s.value))
	}
	for _, k := range []string{"ENABLE_SPA_OVER_HTTP", "ENABLE_TCP_SERVER"} {
		if s, has := get[k]; has && yes(s.value) == "Y" {
			note("line %d: %s Y: not carried over; the door reads SPA packets over UDP only", s.line, k)
		}
	}
	if s, has := get["ENABLE_DIGEST_PERSISTENCE"]; has && yes(s.value) == "Y" {
		d.comments = append(d.comments, fmt.Sprintf("#   ENABLE_DIGEST_PERSISTENCE Y (line %d): nftknock's replay cache is in memory and refuses packets older than the daemon, which is as safe across restarts.", s.line))
	}
	if len(others) > 0 {
		msg := "fwknopd's own settings, not carried over (nftknock has no such setting): " + strings.Join(others, ", ")
		d.comments = append(d.comments, "#   "+msg)
		warnings = append(warnings, "fwknopd.conf: "+msg)
	}
	return d, warnings, ok
}

// yes reads fwknop's Y/N: "Y", "N", or "" for anything else.
func yes(v string) string {
	switch strings.ToUpper(v) {
	case "Y", "YES":
		return "Y"
	case "N", "NO":
		return "N"
	}
	return ""
}

// pcapFilterPort reads the UDP port of the filters fwknopd's
// documentation shows: "udp port 62201", "udp dst port 62201".
func pcapFilterPort(filter string) (int, error) {
	var words []string
	for _, w := range strings.Fields(strings.ToLower(filter)) {
		if w != "and" && w != "dst" {
			words = append(words, w)
		}
	}
	if slices.Contains(words, "tcp") || slices.Contains(words, "icmp") {
		return 0, errors.New("takes SPA over TCP or ICMP: the door reads UDP only")
	}
	if slices.Contains(words, "portrange") {
		return 0, errors.New("a port range (for the client's --rand-port): a door listens on one port")
	}
	if len(words) > 0 && words[0] == "udp" {
		words = words[1:]
	}
	if len(words) != 2 || words[0] != "port" {
		return 0, errors.New(`not of the form "udp port N"`)
	}
	n, err := strconv.Atoi(words[1])
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("%q is not a port", words[1])
	}
	return n, nil
}

// fwStanza is one access.conf stanza: SOURCE and the lines after it.
type fwStanza struct {
	n        int // 1-based
	line     int
	settings []fwSetting
}

func (s *fwStanza) get(name string) (fwSetting, bool) {
	var found fwSetting
	has := false
	for _, st := range s.settings {
		if st.name == name {
			found, has = st, true
		}
	}
	return found, has
}

// fwknopResult is what migrateFwknop makes.
type fwknopResult struct {
	toml     []byte
	keys     []keyFile
	warnings []string
	ok       bool // every stanza converted, every value read
}

// migrateFwknop converts an access.conf (and fwknopd.conf, if daemonFile
// is not empty) into doors whose key files are in keysDir, an absolute
// path. It writes nothing: the caller writes res.keys.
func migrateFwknop(accessFile string, access []byte, daemonFile string, daemon []byte, keysDir string) fwknopResult {
	res := fwknopResult{ok: true}
	warn := func(format string, a ...any) { res.warnings = append(res.warnings, fmt.Sprintf(format, a...)) }

	d, w, ok := parseFwknopd(daemonFile, daemon)
	res.warnings = append(res.warnings, w...)
	res.ok = res.ok && ok

	settings, w := parseFwknopLines(access)
	for _, x := range w {
		warn("%s: %s", accessFile, x)
		res.ok = false
	}
	var header []string
	var stanzas []*fwStanza
	for _, s := range settings {
		switch {
		case s.name == "SOURCE":
			stanzas = append(stanzas, &fwStanza{n: len(stanzas) + 1, line: s.line})
			stanzas[len(stanzas)-1].settings = append(stanzas[len(stanzas)-1].settings, s)
		case s.name == "%INCLUDE" || s.name == "%INCLUDE_FOLDER":
			msg := fmt.Sprintf("line %d: %s %s: not followed; convert that file with its own nftknock migrate -fwknop run", s.line, strings.ToLower(s.name), printable(s.value))
			header = append(header, "#   "+msg)
			warn("%s", msg)
			res.ok = false
		case len(stanzas) == 0:
			msg := fmt.Sprintf("line %d: %s before the first SOURCE: ignored (fwknopd starts each stanza with SOURCE)", s.line, printable(s.name))
			header = append(header, "#   "+msg)
			warn("%s", msg)
		default:
			st := stanzas[len(stanzas)-1]
			st.settings = append(st.settings, s)
		}
	}

	type converted struct {
		st    *fwStanza
		lines []string
		keys  []keyFile // nil: not converted
	}
	var doors []converted
	n := 0
	for _, st := range stanzas {
		if len(doors) >= maxFwknopDoors {
			warn("stanza %d (line %d) and those after it: not converted: a configuration has at most %d doors", st.n, st.line, maxFwknopDoors)
			res.ok = false
			break
		}
		name := "fw"
		if st.n > 1 {
			name = fmt.Sprintf("fw_%d", st.n)
		}
		lines, keys, w := convertStanza(st, name, d, keysDir)
		for _, x := range w {
			warn("stanza %d (line %d): %s", st.n, st.line, x)
		}
		if keys == nil {
			res.ok = false
		} else {
			n++
		}
		doors = append(doors, converted{st, lines, keys})
	}
	if n == 0 {
		res.ok = false
		warn("no stanza could be converted")
	}
	// fwknopd tells stanzas with one key apart by SOURCE; a door is
	// found by its HMAC key.
	firstWith := map[string]int{}
	var body []string
	for _, c := range doors {
		lines := c.lines
		if c.keys != nil {
			res.keys = append(res.keys, c.keys...)
			hmacKey := c.keys[1].content
			if first, dup := firstWith[hmacKey]; dup {
				msg := fmt.Sprintf("stanza %d has the HMAC key of stanza %d: a packet is matched to a door by its key, so these doors cannot be told apart; give each stanza its own keys (fwknop --key-gen)", c.st.n, first)
				warn("%s", msg)
				lines = slices.Insert(slices.Clone(lines), 1, "# "+msg)
			} else {
				firstWith[hmacKey] = c.st.n
			}
		}
		body = append(body, "")
		body = append(body, lines...)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "# nftknock configuration converted by `nftknock migrate -fwknop` from %s", printable(accessFile))
	if daemonFile != "" {
		fmt.Fprintf(&b, " and %s", printable(daemonFile))
	}
	b.WriteString(".\n# Check it with `nftknockd -check -config FILE` before you use it.\n")
	fmt.Fprintf(&b, "# Each door's keys are in %s/<door>.key and <door>.hmac (mode 0600).\n", keysDir)
	b.WriteString("# The doors share fwknopd's one port: a packet opens the door whose HMAC key\n# made it.\n")
	b.WriteString("#\n# From fwknopd.conf:\n")
	for _, c := range d.comments {
		b.WriteString(c + "\n")
	}
	if len(header) > 0 {
		b.WriteString("#\n# From access.conf:\n")
		for _, h := range header {
			b.WriteString(h + "\n")
		}
	}
	for _, l := range body {
		b.WriteString(l + "\n")
	}
	res.toml = []byte(b.String())
	return res
}

// What convertStanza does with each access.conf setting it does not turn
// into a door key.
var (
	// fwStanzaRefused make a stanza unconvertible: carrying it over
	// without them would open what fwknopd did not, or the wrong thing.
	fwStanzaRefused = map[string]string{
		"FORCE_NAT":           "NAT (FORCE_NAT and its kin) is not supported yet: the door would open the local port instead of forwarding",
		"FORCE_SNAT":          "NAT (FORCE_NAT and its kin) is not supported yet: the door would open the local port instead of forwarding",
		"FORCE_MASQUERADE":    "NAT (FORCE_NAT and its kin) is not supported yet: the door would open the local port instead of forwarding",
		"FORWARD_ALL":         "NAT (FORCE_NAT and its kin) is not supported yet: the door would open the local port instead of forwarding",
		"DISABLE_DNAT":        "NAT (FORCE_NAT and its kin) is not supported yet: the door would open the local port instead of forwarding",
		"ACCESS_EXPIRE":       "a door does not expire; remove the stanza when its access should end, or this line to convert it without the expiry",
		"ACCESS_EXPIRE_EPOCH": "a door does not expire; remove the stanza when its access should end, or this line to convert it without the expiry",
		"REQUIRE_USERNAME":    "the door does not check the user name (the client's claim: any key holder can send -U); remove this line to convert the stanza without it",
		"%INCLUDE_KEYS":       "its keys are in another file: put KEY_BASE64 and HMAC_KEY_BASE64 in the stanza and run migrate again",
	}
	// fwStanzaDropped are named and left out; the stanza converts.
	fwStanzaDropped = map[string]string{
		"ENABLE_CMD_EXEC":      "nftknock never runs a command a packet names: command messages (--server-cmd) are refused",
		"ENABLE_CMD_SUDO_EXEC": "nftknock never runs a command a packet names: command messages (--server-cmd) are refused",
		"CMD_EXEC_USER":        "nftknock never runs a command a packet names: command messages (--server-cmd) are refused",
		"CMD_EXEC_GROUP":       "nftknock never runs a command a packet names: command messages (--server-cmd) are refused",
		"CMD_SUDO_EXEC_USER":   "nftknock never runs a command a packet names: command messages (--server-cmd) are refused",
		"CMD_SUDO_EXEC_GROUP":  "nftknock never runs a command a packet names: command messages (--server-cmd) are refused",
		"CMD_CYCLE_OPEN":       "nftknock opens OPEN_PORTS in nftables itself; a door's on_open/on_close hooks run a program (no shell, no $IP substitution) if more is needed",
		"CMD_CYCLE_CLOSE":      "nftknock opens OPEN_PORTS in nftables itself; a door's on_open/on_close hooks run a program (no shell, no $IP substitution) if more is needed",
		"CMD_CYCLE_TIMER":      "nftknock opens OPEN_PORTS in nftables itself; a door's on_open/on_close hooks run a program (no shell, no $IP substitution) if more is needed",
	}
)

// convertStanza writes one [[door]]. keys is nil when the stanza could
// not be converted; lines then say why.
func convertStanza(st *fwStanza, name string, d fwknopDaemon, keysDir string) (lines []string, keys []keyFile, warnings []string) {
	src, _ := st.get("SOURCE")
	title := fmt.Sprintf("# access.conf stanza %d (line %d): SOURCE %s", st.n, st.line, printable(src.value))
	var notes []string // comments above the door
	var reasons []string
	refuse := func(format string, a ...any) {
		msg := fmt.Sprintf(format, a...)
		reasons = append(reasons, msg)
		warnings = append(warnings, msg+": not converted")
	}
	drop := func(format string, a ...any) {
		msg := fmt.Sprintf(format, a...)
		notes = append(notes, "# Not carried over: "+msg)
		warnings = append(warnings, "not carried over: "+msg)
	}

	// Settings that are not door keys.
	seen := map[string]bool{}
	gpg := false
	for _, s := range st.settings {
		if seen[s.name] && s.name != "SOURCE" {
			warnings = append(warnings, fmt.Sprintf("line %d: %s given again: the last one is used", s.line, printable(s.name)))
		}
		seen[s.name] = true
		switch {
		case fwStanzaRefused[s.name] != "":
			refuse("line %d: %s: %s", s.line, s.name, fwStanzaRefused[s.name])
		case (s.name == "ENABLE_CMD_EXEC" || s.name == "ENABLE_CMD_SUDO_EXEC") && yes(s.value) == "N":
		case fwStanzaDropped[s.name] != "":
			drop("line %d: %s: %s", s.line, s.name, fwStanzaDropped[s.name])
		case strings.HasPrefix(s.name, "GPG_"):
			gpg = true
		case s.name == "DESTINATION":
			if !strings.EqualFold(s.value, "ANY") {
				refuse("line %d: DESTINATION %s: the door takes packets sent to any of the host's addresses; remove this line to convert the stanza without it", s.line, printable(s.value))
			}
		case slices.Contains([]string{"SOURCE", "OPEN_PORTS", "RESTRICT_PORTS", "KEY", "KEY_BASE64", "HMAC_KEY", "HMAC_KEY_BASE64",
			"HMAC_DIGEST_TYPE", "ENCRYPTION_MODE", "FW_ACCESS_TIMEOUT", "MAX_FW_TIMEOUT", "REQUIRE_SOURCE_ADDRESS", "REQUIRE_SOURCE"}, s.name):
		default:
			// The value is not shown: it may be a secret.
			drop("line %d: %s (nftknock has no such setting)", s.line, printable(s.name))
		}
	}

	// SOURCE.
	var sources []string
	if strings.EqualFold(src.value, "ANY") {
		sources = []string{"0.0.0.0/0", "::/0"}
	} else {
		for _, item := range strings.Split(src.value, ",") {
			item = strings.TrimSpace(item)
			p, err := parseSource(item)
			if err != nil {
				refuse("SOURCE %q: %v", printable(item), err)
				continue
			}
			if !slices.Contains(sources, p) {
				sources = append(sources, p)
			}
		}
	}

	// The ports.
	var open []string
	if s, has := st.get("OPEN_PORTS"); !has {
		refuse("no OPEN_PORTS: fwknopd lets such a stanza open any port a client asks for; a door needs the list: add OPEN_PORTS (e.g. tcp/22) and run migrate again")
	} else {
		ports, err := fwknopPorts(s.value)
		if err != nil {
			refuse("line %d: OPEN_PORTS: %v", s.line, err)
		}
		open = ports
		if r, has := st.get("RESTRICT_PORTS"); has {
			restricted, err := fwknopPorts(r.value)
			if err != nil {
				refuse("line %d: RESTRICT_PORTS: %v", r.line, err)
			}
			kept := open[:0:0]
			for _, p := range open {
				if !slices.Contains(restricted, p) {
					kept = append(kept, p)
				}
			}
			if len(kept) != len(open) {
				notes = append(notes, "# RESTRICT_PORTS "+printable(r.value)+" is taken out of OPEN_PORTS.")
			}
			open = kept
			if len(open) == 0 && err == nil {
				refuse("RESTRICT_PORTS takes out every port of OPEN_PORTS: nothing is left to open")
			}
		}
	}

	// The keys.
	encKey, encNote, encErr := stanzaKey(st, "KEY_BASE64", "KEY", fwknop.MaxEncKey)
	hmacKey, hmacNote, hmacErr := stanzaKey(st, "HMAC_KEY_BASE64", "HMAC_KEY", fwknop.MaxHMACKey)
	switch {
	case encKey == nil && encErr == nil && gpg:
		refuse("GPG_*: a GnuPG stanza: the door reads Rijndael packets (KEY_BASE64) with an HMAC only; give the stanza --key-gen keys and the clients --key-base64-rijndael --use-hmac")
	case encKey == nil && encErr == nil:
		refuse("no KEY_BASE64 or KEY")
	case encErr != nil:
		refuse("%v", encErr)
	case hmacErr != nil:
		refuse("%v", hmacErr)
	case hmacKey == nil && encNote != "":
		refuse("KEY is a passphrase without an HMAC key: fwknopd decrypts such a packet before anything proves it authentic, and a passphrase can be guessed offline from one captured packet; the door authenticates every packet (HMAC) before it decrypts it: add HMAC_KEY_BASE64 (fwknop --key-gen), better with a KEY_BASE64, and give the clients --use-hmac")
	case hmacKey == nil:
		refuse("no HMAC_KEY_BASE64: fwknopd decrypts such a packet before anything proves it authentic; the door authenticates every packet (HMAC) before it decrypts it: add HMAC_KEY_BASE64 (fwknop --key-gen) and give the clients --use-hmac")
	case gpg:
		drop("GPG_*: the door reads Rijndael packets only; clients that send GnuPG packets to this stanza are refused")
	}
	for _, n := range []string{encNote, hmacNote} {
		if n != "" && encKey != nil && hmacKey != nil {
			notes = append(notes, "# "+n)
			warnings = append(warnings, n)
		}
	}
	if s, has := st.get("HMAC_DIGEST_TYPE"); has && !strings.EqualFold(s.value, "SHA256") {
		refuse("line %d: HMAC_DIGEST_TYPE %s: the door checks HMAC-SHA256 only (fwknop's default)", s.line, printable(s.value))
	}
	if s, has := st.get("ENCRYPTION_MODE"); has && !strings.EqualFold(s.value, "CBC") {
		refuse("line %d: ENCRYPTION_MODE %s: the door decrypts CBC only (fwknop's default since 2.5)", s.line, printable(s.value))
	}

	// How long.
	openFor, err := stanzaSeconds(st, "FW_ACCESS_TIMEOUT", fwknopDefaultOpenFor)
	if err != nil {
		refuse("%v", err)
	}
	maxOpen, err := stanzaSeconds(st, "MAX_FW_TIMEOUT", fwknopDefaultMaxOpen)
	if err != nil {
		refuse("%v", err)
	}
	requireSource := false
	for _, k := range []string{"REQUIRE_SOURCE_ADDRESS", "REQUIRE_SOURCE"} {
		if s, has := st.get(k); has {
			switch yes(s.value) {
			case "Y":
				requireSource = true
			case "N":
			default:
				refuse("line %d: %s %q is not Y or N", s.line, k, printable(s.value))
			}
		}
	}

	lines = append(lines, title)
	if len(reasons) > 0 {
		for _, r := range reasons {
			lines = append(lines, "# NOT CONVERTED: "+r)
		}
		lines = append(lines, notes...)
		return lines, nil, warnings
	}
	lines = append(lines, notes...)
	keyPath := filepath.Join(keysDir, name+".key")
	hmacPath := filepath.Join(keysDir, name+".hmac")
	lines = append(lines,
		"[[door]]",
		"name = "+strconv.Quote(name),
		"fwknop_port = "+strconv.Quote(fmt.Sprintf("%d:udp", d.port)),
		"fwknop_key_file = "+strconv.Quote(keyPath),
		"fwknop_hmac_key_file = "+strconv.Quote(hmacPath),
		"fwknop_max_age = "+strconv.Quote(fmt.Sprintf("%ds", d.maxAge)),
		"open = "+quoteList(open))
	if _, has := st.get("FW_ACCESS_TIMEOUT"); !has {
		lines = append(lines, "# fwknopd's default FW_ACCESS_TIMEOUT.")
	}
	lines = append(lines, "open_for = "+strconv.Quote(fmt.Sprintf("%ds", openFor)))
	if _, has := st.get("MAX_FW_TIMEOUT"); !has {
		lines = append(lines, "# fwknopd's default MAX_FW_TIMEOUT: the cap on a client's -f.")
	}
	lines = append(lines,
		"fwknop_max_open_for = "+strconv.Quote(fmt.Sprintf("%ds", maxOpen)),
		"fwknop_source = "+quoteList(sources),
		"fwknop_require_source = "+strconv.FormatBool(requireSource))
	keys = []keyFile{
		{name: name + ".key", content: base64.StdEncoding.EncodeToString(encKey) + "\n"},
		{name: name + ".hmac", content: base64.StdEncoding.EncodeToString(hmacKey) + "\n"},
	}
	return lines, keys, warnings
}

// parseSource reads a SOURCE item, an address or a network, into CIDR.
func parseSource(s string) (string, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked().String(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return "", errors.New("not an address or a network (CIDR) nor ANY")
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()).String(), nil
}

// fwknopPorts turns "tcp/22, udp/53" into ["22:tcp", "53:udp"].
func fwknopPorts(list string) ([]string, error) {
	var out []string
	for _, item := range strings.Split(list, ",") {
		item = strings.TrimSpace(item)
		proto, port, ok := strings.Cut(item, "/")
		proto = strings.ToLower(proto)
		n, err := strconv.Atoi(port)
		if !ok || (proto != "tcp" && proto != "udp") || err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("%q is not proto/port (tcp/22, udp/53)", printable(item))
		}
		p := fmt.Sprintf("%d:%s", n, proto)
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// stanzaKey reads a stanza's key: the base64 setting, or the plain one
// (a passphrase's bytes, with a note on its weakness). nil, "", nil when
// neither is set.
func stanzaKey(st *fwStanza, b64Name, plainName string, max int) (key []byte, note string, err error) {
	b, hasB := st.get(b64Name)
	p, hasP := st.get(plainName)
	switch {
	case hasB && hasP:
		return nil, "", fmt.Errorf("both %s and %s: fwknopd would use one; keep the one the clients use", b64Name, plainName)
	case hasB:
		if b.value == "__CHANGEME__" {
			return nil, "", fmt.Errorf("line %d: %s is the sample's __CHANGEME__: put the key fwknop --key-gen made", b.line, b64Name)
		}
		raw, err := fwknop.ParseKey([]byte(b.value))
		if err != nil {
			return nil, "", fmt.Errorf("line %d: %s: %v", b.line, b64Name, err)
		}
		if len(raw) > max {
			return nil, "", fmt.Errorf("line %d: %s holds %d bytes; fwknop takes at most %d", b.line, b64Name, len(raw), max)
		}
		return raw, "", nil
	case hasP:
		switch {
		case p.value == "__CHANGEME__":
			return nil, "", fmt.Errorf("line %d: %s is the sample's __CHANGEME__: put the key fwknop --key-gen made", p.line, plainName)
		case p.raw != p.value:
			// Whether fwknopd ends the value at ';' is not certain
			// enough to guess a key on it.
			return nil, "", fmt.Errorf("line %d: %s holds a ';': write it as %s (base64 of the passphrase) instead", p.line, plainName, b64Name)
		case len(p.value) == 0 || len(p.value) > max:
			return nil, "", fmt.Errorf("line %d: %s is %d bytes; fwknop takes 1-%d", p.line, plainName, len(p.value), max)
		}
		note = fmt.Sprintf("line %d: %s is a passphrase: one captured packet lets anyone test guesses at it offline; replace it with fwknop --key-gen keys when you can", p.line, plainName)
		return []byte(p.value), note, nil
	}
	return nil, "", nil
}

// stanzaSeconds reads a positive number of seconds, or def if absent.
func stanzaSeconds(st *fwStanza, name string, def int) (int, error) {
	s, has := st.get(name)
	if !has {
		return def, nil
	}
	n, err := strconv.Atoi(s.value)
	if err != nil || n <= 0 || n > 30*24*3600 {
		return 0, fmt.Errorf("line %d: %s %q is not a number of seconds (1 to 30 days)", s.line, name, printable(s.value))
	}
	return n, nil
}
