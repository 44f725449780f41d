package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/nftknock/nftknock/config"
)

var migrateCmd = &command{
	name:     "migrate",
	synopsis: "KNOCKD_CONF | -fwknop ACCESS_CONF [-fwknopd-conf FWKNOPD_CONF] -keys-dir DIR",
	summary:  "print an nftknock TOML for a knockd.conf or an fwknopd access.conf",
	help: `Reads a knockd configuration (such as /etc/knockd.conf) and prints the
equivalent nftknock configuration on stdout. Sequences, seq_timeout,
tcpflags, one_time_sequences and cmd_timeout (as open_for) carry over; the
opened port, its protocol and whether it was opened to the knocking source
(-s %IP%) or to anyone are read from the iptables, nft, ufw or knock_add
command in start_command/command. A pair of sections whose commands add and
delete the same rule ([openSSH]/[closeSSH]) becomes one door with a
close_sequence. What cannot be carried over is named in comments and on
stderr. Check the result with nftknockd -check -config FILE.

With -fwknop, reads fwknopd's access.conf instead (and fwknopd.conf with
-fwknopd-conf, for the UDP port and MAX_SPA_PACKET_AGE): each stanza
becomes an fwknop door, and its KEY_BASE64 and HMAC_KEY_BASE64 are written
to DIR/<door>.key and DIR/<door>.hmac (mode 0600; an existing file that
holds another key is never overwritten). A stanza without an HMAC key, a
GnuPG-only stanza, one without OPEN_PORTS, and one that NATs or expires is
not converted, and says why.

Exit status: 0 converted; 1 a door (or the file) could not be converted —
what could be converted is printed all the same; 2 usage error.`,
	flags: func(fs *flag.FlagSet) func(e *env, args []string) int {
		fw := addFwknopFlags(fs)
		return func(e *env, args []string) int {
			if fw.given() {
				return fw.run(e, args)
			}
			if len(args) != 1 {
				return usageErr(e, "migrate", "give one knockd.conf file")
			}
			data, err := os.ReadFile(args[0])
			if err != nil {
				fail(e, "migrate", err)
				return exitFail
			}
			out, warnings, ok := migrate(args[0], data)
			for _, w := range warnings {
				fmt.Fprintf(e.stderr, "nftknock migrate: %s\n", w)
			}
			e.stdout.Write(out)
			if !ok {
				return exitFail
			}
			return exitOK
		}
	},
}

// Defaults used where knockd's config leaves nftknock without a value.
const (
	knockdSeqTimeout  = "25s" // knockd's own default seq_timeout
	knockdCmdTimeout  = "10s" // knockd's own default cmd_timeout
	singleKnockOpen   = "30s" // start_command alone: open, then rely on established
	untilCloseKnockOp = "1h"  // open/close pair: knockd had no bound at all
)

// knockdSection is one [section] of a knockd.conf, keys lowercased.
type knockdSection struct {
	name string
	line int
	keys map[string]string
	// flags are keys written without "=" (UseSyslog).
	flags []string
	order []string // keys in file order, as written
}

func (s *knockdSection) get(key string) string { return s.keys[key] }

// parseKnockdConf splits a knockd.conf into sections. Lines before the
// first section are reported.
func parseKnockdConf(data []byte) (sections []*knockdSection, warnings []string) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var cur *knockdSection
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			cur = &knockdSection{name: strings.TrimSpace(line[1 : len(line)-1]), line: n, keys: map[string]string{}}
			sections = append(sections, cur)
			continue
		}
		if cur == nil {
			warnings = append(warnings, fmt.Sprintf("line %d: %q is outside any [section]: ignored", n, line))
			continue
		}
		k, v, hasValue := strings.Cut(line, "=")
		k = strings.TrimSpace(k)
		if !hasValue {
			cur.flags = append(cur.flags, k)
			cur.order = append(cur.order, k)
			continue
		}
		cur.keys[strings.ToLower(k)] = strings.TrimSpace(v)
		cur.order = append(cur.order, k)
	}
	return sections, warnings
}

// fwRule is what a knockd command does to the firewall, as far as
// nftknock cares: it adds or deletes an accept rule for ports, for the
// knocking source (%IP%) or for anyone.
type fwRule struct {
	del       bool
	ports     []string // "22:tcp", "60000-61000:udp"
	perSource bool
}

func (r fwRule) key() string {
	return fmt.Sprintf("%v %v", r.ports, r.perSource)
}

// parseCommands reads every command of a knockd command line (several may
// be joined by ";" or "&&"). unknown lists the words that were skipped;
// err says why a command could not be read at all.
func parseCommands(cmdline string) (rules []fwRule, unknown []string, err error) {
	repl := strings.NewReplacer("&&", ";", "||", ";", "\n", ";")
	for _, part := range strings.Split(repl.Replace(cmdline), ";") {
		words := strings.Fields(strings.NewReplacer(`"`, " ", `'`, " ", "{", " ", "}", " ").Replace(part))
		if len(words) == 0 {
			continue
		}
		if words[0] == "sudo" {
			words = words[1:]
		}
		if len(words) == 0 {
			continue
		}
		var r fwRule
		var unk []string
		var e error
		switch filepath.Base(words[0]) {
		case "iptables", "ip6tables", "iptables-legacy", "ip6tables-legacy", "iptables-nft", "ip6tables-nft":
			r, unk, e = parseIptables(words[1:])
		case "nft":
			r, unk, e = parseNft(words[1:])
		case "ufw":
			r, unk, e = parseUfw(words[1:])
		case "knock_add":
			r, unk, e = parseKnockAdd(words[1:])
		default:
			e = fmt.Errorf("%q is not an iptables, nft, ufw or knock_add command", strings.TrimSpace(part))
		}
		if e != nil {
			return nil, nil, e
		}
		rules = append(rules, r)
		unknown = append(unknown, unk...)
	}
	if len(rules) == 0 {
		return nil, nil, fmt.Errorf("empty command")
	}
	return rules, unknown, nil
}

// portsOf turns a port list as iptables or ufw write it ("22", "22:23",
// "80,443", "22-23") into nftknock's notation.
func portsOf(list, proto string) ([]string, error) {
	var out []string
	for _, p := range strings.Split(list, ",") {
		p = strings.Replace(p, ":", "-", 1)
		s := p + ":" + proto
		if _, err := config.ParsePort(s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func finish(r fwRule, portList, proto, target string, hasAction bool, unknown []string) (fwRule, []string, error) {
	switch {
	case !hasAction:
		return r, nil, fmt.Errorf("neither adds nor deletes a rule")
	case portList == "":
		return r, nil, fmt.Errorf("names no destination port")
	case target != "" && !strings.EqualFold(target, "accept"):
		return r, nil, fmt.Errorf("jumps to %s, not ACCEPT", target)
	}
	if proto == "" {
		proto = "tcp"
	}
	proto = strings.ToLower(proto)
	if proto != "tcp" && proto != "udp" {
		return r, nil, fmt.Errorf("protocol %q is not tcp or udp", proto)
	}
	ports, err := portsOf(portList, proto)
	if err != nil {
		return r, nil, err
	}
	r.ports = ports
	return r, unknown, nil
}

// parseIptables reads `iptables -A|-I|-D CHAIN [-s %IP%] -p tcp --dport 22 -j ACCEPT`.
func parseIptables(w []string) (fwRule, []string, error) {
	var r fwRule
	var unknown []string
	var proto, ports, target string
	hasAction := false
	for i := 0; i < len(w); i++ {
		next := func() string {
			if i+1 < len(w) {
				i++
				return w[i]
			}
			return ""
		}
		switch w[i] {
		case "-A", "--append", "-I", "--insert":
			hasAction = true
			next() // chain
			if i+1 < len(w) {
				if _, err := strconv.Atoi(w[i+1]); err == nil {
					i++ // rule number of -I
				}
			}
		case "-D", "--delete":
			hasAction, r.del = true, true
			next()
		case "-s", "--source", "--src":
			if v := next(); v == "%IP%" || v == "%IP%/32" || v == "%IP%/128" {
				r.perSource = true
			} else {
				return r, nil, fmt.Errorf("source %q is not the knocking address %%IP%%", v)
			}
		case "-p", "--protocol":
			proto = next()
		case "--dport", "--destination-port", "--dports", "--destination-ports":
			ports = next()
		case "-j", "--jump":
			target = next()
		case "-m", "--match":
			if m := next(); m != "tcp" && m != "udp" && m != "multiport" && m != "conntrack" && m != "state" && m != "comment" {
				unknown = append(unknown, "-m "+m)
			}
		case "--ctstate", "--state":
			if v := next(); v != "NEW" {
				unknown = append(unknown, w[i-1]+" "+v)
			}
		case "--comment":
			next()
		case "-w", "--wait":
			if i+1 < len(w) {
				if _, err := strconv.Atoi(w[i+1]); err == nil {
					i++
				}
			}
		case "-t", "--table":
			if v := next(); v != "filter" {
				return r, nil, fmt.Errorf("works on table %q, not filter", v)
			}
		default:
			if strings.HasPrefix(w[i], "-") && i+1 < len(w) && !strings.HasPrefix(w[i+1], "-") {
				unknown = append(unknown, w[i]+" "+w[i+1])
				i++
			} else {
				unknown = append(unknown, w[i])
			}
		}
	}
	return finish(r, ports, proto, target, hasAction, unknown)
}

// parseNft reads `nft add|insert|delete rule FAMILY TABLE CHAIN [ip saddr
// %IP%] tcp dport 22 [ct state new] accept`.
func parseNft(w []string) (fwRule, []string, error) {
	var r fwRule
	var unknown []string
	var proto, ports string
	hasAction, accept := false, false
	if len(w) >= 2 && w[1] == "rule" {
		switch w[0] {
		case "add", "insert", "create":
			hasAction = true
		case "delete":
			hasAction, r.del = true, true
		}
		w = w[2:]
		// family, table, chain; the family is optional.
		skip := 2
		if len(w) > 0 && slices.Contains([]string{"ip", "ip6", "inet", "arp", "bridge", "netdev"}, w[0]) {
			skip = 3
		}
		w = w[min(skip, len(w)):]
	}
	for i := 0; i < len(w); i++ {
		switch {
		case (w[i] == "ip" || w[i] == "ip6") && i+2 < len(w) && w[i+1] == "saddr":
			if w[i+2] != "%IP%" {
				return r, nil, fmt.Errorf("source %q is not the knocking address %%IP%%", w[i+2])
			}
			r.perSource = true
			i += 2
		case (w[i] == "tcp" || w[i] == "udp") && i+2 < len(w) && w[i+1] == "dport":
			proto, ports = w[i], w[i+2]
			i += 2
		case w[i] == "ct" && i+2 < len(w) && w[i+1] == "state":
			i += 2
		case w[i] == "accept":
			accept = true
		case w[i] == "handle" && r.del:
			return r, nil, fmt.Errorf("deletes a rule by handle, which names no port")
		default:
			unknown = append(unknown, w[i])
		}
	}
	if hasAction && !accept {
		return r, nil, fmt.Errorf("does not accept")
	}
	return finish(r, ports, proto, "", hasAction, unknown)
}

// parseUfw reads `ufw [delete] allow [proto tcp] from %IP% to any port 22
// [proto tcp]` and `ufw allow 22/tcp`.
func parseUfw(w []string) (fwRule, []string, error) {
	var r fwRule
	var unknown []string
	var proto, ports string
	hasAction := false
	if len(w) > 0 && w[0] == "delete" {
		r.del = true
		w = w[1:]
	}
	if len(w) > 0 && w[0] == "insert" && len(w) > 1 {
		w = w[2:]
	}
	if len(w) == 0 || w[0] != "allow" {
		return r, nil, fmt.Errorf("is not a ufw allow rule")
	}
	hasAction = true
	for i := 1; i < len(w); i++ {
		switch {
		case w[i] == "from" && i+1 < len(w):
			if w[i+1] != "%IP%" {
				return r, nil, fmt.Errorf("source %q is not the knocking address %%IP%%", w[i+1])
			}
			r.perSource = true
			i++
		case w[i] == "to" && i+1 < len(w):
			if w[i+1] != "any" {
				unknown = append(unknown, "to "+w[i+1])
			}
			i++
		case w[i] == "port" && i+1 < len(w):
			ports = w[i+1]
			i++
		case w[i] == "proto" && i+1 < len(w):
			proto = w[i+1]
			i++
		case w[i] == "in":
		case ports == "" && strings.Trim(w[i], "0123456789/tcpudp,:") == "":
			ports, proto, _ = strings.Cut(w[i], "/")
		default:
			unknown = append(unknown, w[i])
		}
	}
	return finish(r, ports, proto, "", hasAction, unknown)
}

// parseKnockAdd reads knockd's own helper, as Debian's default config uses
// it: `knock_add [-i] [-c CHAIN] [-g TARGET] -p PROTO -d PORT -f %IP%`.
func parseKnockAdd(w []string) (fwRule, []string, error) {
	var r fwRule
	var unknown []string
	var proto, ports, target string
	for i := 0; i < len(w); i++ {
		arg := func() string {
			if i+1 < len(w) {
				i++
				return w[i]
			}
			return ""
		}
		switch w[i] {
		case "-i", "-v":
		case "-c":
			arg()
		case "-g":
			target = arg()
		case "-p":
			proto = arg()
		case "-d":
			ports = arg()
		case "-f":
			if v := arg(); v != "%IP%" {
				return r, nil, fmt.Errorf("source %q is not the knocking address %%IP%%", v)
			}
			r.perSource = true
		default:
			unknown = append(unknown, w[i])
		}
	}
	if !r.perSource {
		return r, nil, fmt.Errorf("names no -f %%IP%%")
	}
	return finish(r, ports, proto, target, true, unknown)
}

// migDoor is a door being converted.
type migDoor struct {
	sec      *knockdSection
	closer   *knockdSection // the section of a two-section open/close pair
	name     string
	comments []string // above the door
	lines    []string // TOML lines, each possibly preceded by "# ..." lines
	dropped  bool
	paired   bool // a close section merged into its opener
	rules    []fwRule
}

// sanitizeName maps a knockd section name onto [a-z0-9_], at most 32.
func sanitizeName(s string) string {
	b := []byte(strings.ToLower(s))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			b[i] = '_'
		}
	}
	if len(b) > 32 {
		b = b[:32]
	}
	if len(b) == 0 {
		return "door"
	}
	return string(b)
}

func quoteList(items []string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// seconds turns knockd's seconds into a duration string.
func seconds(s string) (string, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n <= 0 {
		return "", fmt.Errorf("%q is not a number of seconds", s)
	}
	return fmt.Sprintf("%ds", n), nil
}

// knockSeq turns knockd's "7000,8000:udp,9000" into ["7000:tcp", ...].
func knockSeq(s string) ([]string, error) {
	seq, err := config.ParseSequence(s)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(seq))
	for i, p := range seq {
		out[i] = p.String()
	}
	return out, nil
}

// migrate converts a knockd.conf. It returns the TOML, the warnings for
// stderr, and whether every door was converted.
func migrate(file string, data []byte) (out []byte, warnings []string, ok bool) {
	sections, warnings := parseKnockdConf(data)
	ok = true
	warn := func(format string, a ...any) { warnings = append(warnings, fmt.Sprintf(format, a...)) }

	var header []string
	iface := ""
	var doorSecs []*knockdSection
	for _, s := range sections {
		if !strings.EqualFold(s.name, "options") {
			doorSecs = append(doorSecs, s)
			continue
		}
		for _, k := range s.order {
			lk := strings.ToLower(k)
			v := s.keys[lk]
			switch lk {
			case "interface":
				iface = v
				header = append(header, fmt.Sprintf("#   Interface = %s: carried over as each door's interface", v))
			case "usesyslog":
				header = append(header, "#   UseSyslog: nftknockd logs to stderr, which systemd sends to the journal (journalctl -u nftknockd)")
				warn("[options] UseSyslog: not carried over (nftknockd logs to stderr, i.e. the journal)")
			case "logfile":
				header = append(header, fmt.Sprintf("#   LogFile = %s: not carried over; nftknockd logs to stderr (the journal)", v))
				warn("[options] LogFile = %s: not carried over (nftknockd logs to stderr, i.e. the journal)", v)
			case "pidfile":
				header = append(header, fmt.Sprintf("#   PidFile = %s: not carried over; systemd tracks nftknockd", v))
				warn("[options] PidFile = %s: not carried over (systemd tracks nftknockd)", v)
			default:
				val := ""
				if _, has := s.keys[lk]; has {
					val = " = " + v
				}
				header = append(header, fmt.Sprintf("#   %s%s: not carried over (nftknock has no such setting)", k, val))
				warn("[options] %s%s: not carried over (nftknock has no such setting)", k, val)
			}
		}
	}

	// First pass: read each section's command.
	doors := make([]*migDoor, 0, len(doorSecs))
	for _, s := range doorSecs {
		d := &migDoor{sec: s}
		doors = append(doors, d)
		start := s.get("start_command")
		if start == "" {
			start = s.get("command")
		}
		if start == "" {
			d.dropped = true
			warn("[%s]: no start_command or command: not converted", s.name)
			d.comments = append(d.comments, "# NOT CONVERTED: it has no start_command or command.")
			continue
		}
		rules, unknown, err := parseCommands(start)
		if err != nil {
			d.dropped = true
			warn("[%s]: cannot read what the command opens: %v: door not converted", s.name, err)
			d.comments = append(d.comments, "# NOT CONVERTED: cannot read what this command opens: "+err.Error(),
				"#   "+start)
			continue
		}
		if len(unknown) > 0 {
			warn("[%s]: ignored words in the command: %s", s.name, strings.Join(unknown, " "))
			d.comments = append(d.comments, "# Ignored words in knockd's command: "+strings.Join(unknown, " "))
		}
		d.rules = rules
	}

	// Pair a section that only deletes a rule with the one that adds it.
	for _, closer := range doors {
		if closer.dropped || closer.sec.get("stop_command") != "" || !allDelete(closer.rules) {
			continue
		}
		var opener *migDoor
		for _, o := range doors {
			if o != closer && !o.dropped && o.closer == nil && closer.closer == nil &&
				o.sec.get("stop_command") == "" && o.sec.get("close_sequence") == "" &&
				!allDelete(o.rules) && sameRules(o.rules, closer.rules) {
				opener = o
				break
			}
		}
		if opener == nil {
			closer.dropped = true
			warn("[%s]: only deletes a rule that no other section adds: not converted", closer.sec.name)
			closer.comments = append(closer.comments, "# NOT CONVERTED: it only deletes a rule that no other section adds.")
			continue
		}
		opener.closer = closer.sec
		closer.dropped, closer.paired = true, true
	}

	used := map[string]bool{}
	var body []string
	converted := 0
	for _, d := range doors {
		if d.paired {
			continue
		}
		if d.dropped {
			ok = false
			body = append(body, "", fmt.Sprintf("# knockd [%s]", d.sec.name))
			body = append(body, d.comments...)
			continue
		}
		lines, w := convertDoor(d, iface, used)
		warnings = append(warnings, w...)
		if lines == nil {
			ok = false
			continue
		}
		converted++
		body = append(body, "")
		body = append(body, lines...)
	}
	if converted == 0 {
		ok = false
		warn("no door could be converted")
	}

	var b strings.Builder
	fmt.Fprintf(&b, "# nftknock configuration converted by `nftknock migrate` from %s.\n", file)
	b.WriteString("# Check it with `nftknockd -check -config FILE` before you use it.\n")
	if len(header) > 0 {
		b.WriteString("#\n# From knockd's [options]:\n")
		for _, h := range header {
			b.WriteString(h + "\n")
		}
	}
	for _, l := range body {
		b.WriteString(l + "\n")
	}
	return []byte(b.String()), warnings, ok
}

func allDelete(rules []fwRule) bool {
	for _, r := range rules {
		if !r.del {
			return false
		}
	}
	return len(rules) > 0
}

func sameRules(a, b []fwRule) bool {
	ka, kb := make([]string, len(a)), make([]string, len(b))
	for i := range a {
		ka[i] = a[i].key()
	}
	for i := range b {
		kb[i] = b[i].key()
	}
	slices.Sort(ka)
	slices.Sort(kb)
	return slices.Equal(slices.Compact(ka), slices.Compact(kb))
}

// convertDoor writes one [[door]]; nil lines means it could not be.
func convertDoor(d *migDoor, iface string, used map[string]bool) (lines, warnings []string) {
	s := d.sec
	warn := func(format string, a ...any) {
		warnings = append(warnings, fmt.Sprintf("[%s]: ", s.name)+fmt.Sprintf(format, a...))
	}
	add := func(l ...string) { lines = append(lines, l...) }

	title := fmt.Sprintf("# knockd [%s]", s.name)
	if d.closer != nil {
		title += fmt.Sprintf(" and [%s], its close knock", d.closer.name)
	}
	add(title)
	add(d.comments...)
	add("[[door]]")

	name := sanitizeName(s.name)
	for n := 2; used[name]; n++ {
		suffix := fmt.Sprintf("_%d", n)
		name = sanitizeName(s.name)[:min(len(sanitizeName(s.name)), 32-len(suffix))] + suffix
	}
	used[name] = true
	add("name = " + strconv.Quote(name))

	// The sequences.
	seqText := s.get("sequence")
	if seqText == "" {
		seqText = s.get("open_sequence")
	}
	oneTime := s.get("one_time_sequences")
	switch {
	case oneTime != "":
		if seqText != "" {
			warn("has both a sequence and one_time_sequences: only one_time_sequences is kept")
			add("# knockd's sequence is dropped: a door has either sequence or one_time_sequences.")
		}
		add("# The file is read as knockd writes it; nftknock marks a used line by prepending '#'.")
		add("one_time_sequences = " + strconv.Quote(oneTime))
	case seqText == "":
		warn("has no sequence: not converted")
		return nil, warnings
	default:
		seq, err := knockSeq(seqText)
		if err != nil {
			warn("sequence %q: %v: not converted", seqText, err)
			return nil, warnings
		}
		add("sequence = " + quoteList(seq))
	}
	closeText := s.get("close_sequence")
	if d.closer != nil {
		closeText = d.closer.get("sequence")
		if closeText == "" {
			closeText = d.closer.get("open_sequence")
		}
	}
	if closeText != "" {
		seq, err := knockSeq(closeText)
		if err != nil {
			warn("close sequence %q: %v: not converted", closeText, err)
			return nil, warnings
		}
		add("close_sequence = " + quoteList(seq))
	}

	if v := s.get("seq_timeout"); v != "" {
		dur, err := seconds(v)
		if err != nil {
			warn("seq_timeout %v: using knockd's default %s", err, knockdSeqTimeout)
			dur = knockdSeqTimeout
		}
		add("seq_timeout = " + strconv.Quote(dur))
	} else {
		add("# knockd's default seq_timeout.", "seq_timeout = "+strconv.Quote(knockdSeqTimeout))
	}
	if v := s.get("tcpflags"); v != "" {
		flags := strings.ToLower(strings.ReplaceAll(strings.ReplaceAll(v, " ", ""), "|", ","))
		if _, err := config.ParseTCPFlags(flags); err != nil {
			warn("tcpflags: %v: not carried over (nftknock's default syn,!ack applies)", err)
			add("# knockd's tcpflags = " + v + " is not understood; nftknock's default syn,!ack applies.")
		} else {
			add("tcp_flags = " + strconv.Quote(flags))
		}
	}
	if iface != "" {
		add("# From [options] Interface: knocks count only when they arrive on it.")
		add("interface = " + strconv.Quote(iface))
	}

	// What it opens.
	var ports []string
	perSource, anyone := false, false
	for _, r := range d.rules {
		for _, p := range r.ports {
			if !slices.Contains(ports, p) {
				ports = append(ports, p)
			}
		}
		perSource = perSource || r.perSource
		anyone = anyone || !r.perSource
	}
	add("open = " + quoteList(ports))
	switch {
	case perSource && anyone:
		warn("some commands open to %%IP%% and some to anyone: opening to the knocking source only")
		add("# knockd's commands opened some ports to anyone; nftknock opens them all to the knocking source.")
		add(`open_to = "source"`)
	case anyone:
		add("# knockd's command had no -s %IP%: the port opens to every address.")
		add(`open_to = "anyone"`)
	default:
		add(`open_to = "source"`)
	}

	// How long.
	stop := s.get("stop_command")
	cmdTimeout := s.get("cmd_timeout")
	if cmdTimeout != "" {
		dur, err := seconds(cmdTimeout)
		if err != nil {
			warn("cmd_timeout %v: using knockd's default %s", err, knockdCmdTimeout)
			dur = knockdCmdTimeout
		}
		if stop == "" && d.closer == nil && closeText == "" {
			add("# knockd's cmd_timeout; it has no effect in knockd without a stop_command.")
		} else if stop != "" {
			add("# knockd's cmd_timeout: its stop_command closed the port then.")
		}
		add("open_for = " + strconv.Quote(dur))
	} else {
		switch {
		case d.closer != nil || closeText != "":
			add("# knockd kept the port open until the close knock; nftknock needs a bound:",
				"# the grant ends at the close knock or after open_for, whichever comes first.")
			add("open_for = " + strconv.Quote(untilCloseKnockOp))
		case stop != "":
			add("# knockd's default cmd_timeout: stop_command ran 10s after start_command.")
			add("open_for = " + strconv.Quote(knockdCmdTimeout))
		default:
			add("# knockd's command opened the port and nothing closed it (\"open, then rely on",
				"# established connections\"); nftknock's grant needs a bound, and connections",
				"# made while it is open stay up after it ends.")
			add("open_for = " + strconv.Quote(singleKnockOpen))
		}
	}
	if stop != "" {
		rules, _, err := parseCommands(stop)
		switch {
		case err != nil:
			warn("stop_command is not carried over (%v); nftknock closes the port itself after open_for", err)
			add("# knockd's stop_command is not carried over: " + stop)
		case !allDelete(rules) || !sameRules(rules, d.rules):
			warn("stop_command does not delete what start_command added; nftknock closes the port itself after open_for")
			add("# knockd's stop_command is not carried over: " + stop)
		}
	}
	if t := s.get("target"); t != "" {
		warn("target = %s: not carried over (nftknock knocks on the host's own ports)", t)
		add("# knockd's target = " + t + " is not carried over.")
	}
	for _, k := range s.order {
		lk := strings.ToLower(k)
		switch lk {
		case "sequence", "open_sequence", "close_sequence", "one_time_sequences", "seq_timeout", "tcpflags",
			"start_command", "command", "stop_command", "cmd_timeout", "target":
			continue
		}
		warn("%s: not carried over (nftknock has no such setting)", k)
		add("# knockd's " + k + " is not carried over.")
	}
	return lines, warnings
}
