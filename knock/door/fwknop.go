package door

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock"
	"github.com/nftknock/nftknock/knock/fwknop"
	"github.com/nftknock/nftknock/knock/spa"
	"github.com/nftknock/nftknock/nft/plan"
)

// fwknopDoor is an fwknop door: an access.conf stanza. Several may share
// one port; the first of them (in config order) has the kernel log the
// port's packets under its prefix and tries every sharing door's key on
// each (Shared).
type fwknopDoor struct {
	cfg  *config.Door
	k    *config.Fwknop
	deps Deps
	key  *fwknop.Key
	// group and keys are the doors that share the port, this one among
	// them, and their keys, in config order: what the first door looks
	// through. Made at the first packet (the group is complete by then).
	group []*fwknopDoor
	keys  []*fwknop.Key
	// names are the group's door names, for lines no door's key made.
	names string
}

// fwknopShare is the kind under which fwknop doors share a port.
const fwknopShare = "fwknop"

func newFwknop(file string, d *config.Door, k *config.Fwknop, deps Deps) (*fwknopDoor, error) {
	enc, err := readFwknopKey(k.KeyFile)
	if err != nil {
		return nil, fieldError(file, d, "fwknop_key_file", err)
	}
	mac, err := readFwknopKey(k.HMACKeyFile)
	if err != nil {
		return nil, fieldError(file, d, "fwknop_hmac_key_file", err)
	}
	key, err := fwknop.NewKey(enc, mac)
	if err != nil {
		return nil, fieldError(file, d, "fwknop_key_file", err)
	}
	f := &fwknopDoor{cfg: d, k: k, deps: deps, key: key}
	if deps.Shared != nil {
		before := deps.Shared.doors(fwknopShare, k.Port)
		// One log rule serves the port: its doors must ask the same of
		// a packet (the interface it arrives on).
		if len(before) > 0 && before[0].Config().Interface != d.Interface {
			first := before[0].Config()
			return nil, fieldError(file, d, "interface", fmt.Errorf("door %q shares fwknop_port %s with door %q, whose interface is %q: doors that share a port take its packets on the same interface; give both the same interface, or this door a port of its own",
				d.Name, k.Port, first.Name, first.Interface))
		}
		deps.Shared.join(fwknopShare, k.Port, f)
	}
	return f, nil
}

// readFwknopKey reads a key file: root's (config.CheckPrivate), readable
// by no one else, one base64 value.
func readFwknopKey(path string) ([]byte, error) {
	if err := config.CheckPrivate(path); err != nil {
		return nil, err
	}
	return fwknop.ReadKeyFile(path)
}

func (f *fwknopDoor) Config() *config.Door { return f.cfg }

// Plan has the kernel log datagrams to the door's port, whole (the NFLOG
// copy range, daemon.CopyRange, holds the largest fwknop packet behind any
// IP header), and drop them. Doors that share the port share the rules:
// the first one's prefix logs.
func (f *fwknopDoor) Plan(b *plan.Builder) {
	b.SharedDatagram(f.cfg.Name, f.k.Port, plan.DoorMatch(f.cfg.Interface, config.TCPFlags{}, config.UDP))
}

func (f *fwknopDoor) Tick(time.Time, Actions) {}

// lookup makes the group this door looks through: the doors that share
// its port, or itself alone.
func (f *fwknopDoor) lookup() {
	f.group = []*fwknopDoor{f}
	if f.deps.Shared != nil {
		f.group = f.group[:0]
		for _, d := range f.deps.Shared.doors(fwknopShare, f.k.Port) {
			f.group = append(f.group, d.(*fwknopDoor))
		}
	}
	var names []string
	for _, d := range f.group {
		f.keys = append(f.keys, d.key)
		names = append(names, d.cfg.Name)
	}
	f.names = strings.Join(names, ",")
}

// Packet takes a packet to the port. It finds the door whose HMAC key
// made it (one HMAC per door: nothing is decrypted before a key matches),
// has that door decrypt and check it, and opens what it asks for if the
// door allows it all. When a door refuses a request its key authenticated,
// the doors after it are tried (fwknopd tries every stanza, so stanzas
// that share a key and differ in SOURCE or OPEN_PORTS still work); a
// request no door takes is logged with the first door's reason.
//
// The checks, in order, each a reason of its own: the packet's form and
// HMAC, its age, its type (a command and a NAT request are refused), each
// requested port in open (one outside refuses the whole request, as
// fwknopd does), the source in fwknop_source, fwknop_require_source, and
// last the replay cache.
func (f *fwknopDoor) Packet(now time.Time, lg *knock.Logged, a Actions) {
	if f.group == nil {
		f.lookup()
	}
	var p knock.Packet
	if err := knock.ParseIP(lg.Payload, &p); err != nil {
		f.reject(nil, p.Src, fwBadIP, nil)
		return
	}
	payload, err := knock.UDPPayload(lg.Payload)
	if err != nil {
		f.reject(nil, p.Src, fwBadUDP, nil)
		return
	}
	// first is the first refusal by a door whose key made the packet.
	var first struct {
		door   *fwknopDoor
		reason fwknopReason
		req    fwknop.Request
	}
	var matchErr error // why no key (after the last one that matched) made it
	for start := 0; start < len(f.keys); {
		i, err := fwknop.Match(f.keys[start:], payload)
		if err != nil {
			matchErr = err
			break
		}
		d := f.group[start+i]
		start += i + 1
		req, err := fwknop.Open(d.key, payload, now, d.k.MaxAge)
		r, ok := reasonOfFwknop(err), err == nil
		if ok {
			r, ok = d.refuses(&req, p.Src)
		}
		if ok {
			if d != f {
				a = f.deps.Shared.actionsOf(d)
			}
			d.grant(now, &req, p.Src, a)
			return
		}
		if first.door == nil {
			first.door, first.reason, first.req = d, r, req
		}
	}
	if first.door != nil {
		f.reject(first.door, p.Src, first.reason, &first.req)
		return
	}
	// No key made it: Match said why (the packet's form, or the HMAC).
	f.reject(nil, p.Src, reasonOfFwknop(matchErr), nil)
}

// refuses says why the door does not open what req asks for src (ok
// false), if it does not. The replay cache is grant's to consult, last.
func (f *fwknopDoor) refuses(req *fwknop.Request, src netip.Addr) (r fwknopReason, ok bool) {
	for _, acc := range req.Access {
		if !slices.Contains(f.cfg.Open, config.Port{Num: acc.Port, Proto: config.Proto(acc.Proto)}) {
			return fwPort, false
		}
	}
	if !slices.ContainsFunc(f.k.Sources, func(n netip.Prefix) bool { return n.Contains(src.Unmap()) }) {
		return fwSource, false
	}
	if f.k.RequireSource {
		switch {
		case !req.Allow.IsValid():
			return fwNoAddress, false
		case req.Allow != src.Unmap():
			return fwNotSource, false
		}
	}
	return 0, true
}

// grant opens what an authentic request the door allows asks for, unless
// it is a replay: for the address it names (-a) or its source (-s), for
// the client's -f capped at fwknop_max_open_for, else open_for.
func (f *fwknopDoor) grant(now time.Time, req *fwknop.Request, src netip.Addr, a Actions) {
	switch err := f.deps.Replay.CheckID(fwknopReplayID(req.Digest), req.Time, now, f.k.MaxAge); err {
	case nil:
	case spa.ErrReplay:
		f.reject(f, src, fwReplay, req)
		return
	case spa.ErrBeforeStart:
		f.reject(f, src, fwBeforeStart, req)
		return
	default:
		f.reject(f, src, fwReplayFull, req)
		return
	}
	addr := req.Allow
	if !addr.IsValid() {
		addr = src.Unmap()
	}
	var ports []config.Port
	for _, acc := range req.Access {
		if p := (config.Port{Num: acc.Port, Proto: config.Proto(acc.Proto)}); !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	var d time.Duration // open_for
	if req.Type == fwknop.TypeClientTimeoutAccess {
		d = min(req.ClientTimeout, f.k.MaxOpenFor)
	}
	f.deps.Lines.Info("fwknop SPA request accepted", zap.String("door", f.cfg.Name), zap.Stringer("source", src),
		zap.String("user", req.User), zap.Stringer("for", addr), zap.Stringers("ports", ports),
		zap.Duration("open_for", cmp.Or(d, f.cfg.OpenFor)), zap.Stringer("type", req.Type))
	a.OpenPorts(addr, src, "", ports, d)
}

// fwknopReplayID is the replay cache's id of an fwknop packet: the first
// 16 bytes of the SHA-256 of its payload, which fwknopd keeps whole.
// Truncating is sound: a replay is the same payload, so the same digest
// and the same id, always refused; two different payloads share an id
// with odds of about n²/2¹²⁹ for n packets in the cache, and then the
// second is refused, never let through: the worst a collision does is
// turn one packet away. Only an authentic packet reaches the cache, so
// making a collision on purpose takes a door's key and some 2⁶⁴ work, to
// lock out one packet. The ids of nftknock's own SPA formats are 16
// random bytes their sender picks: a key holder of such a door could pick
// the id of another door's fwknop packet, but only after seeing that
// packet, which by then is in the cache already.
func fwknopReplayID(digest [32]byte) (id [16]byte) {
	copy(id[:], digest[:16])
	return id
}

// reject logs a refused packet in fwknop's terms: the door whose key made
// it (or every door of the port, when none did), the user and what it
// asked for when it was authentic, and the reason. The fields are built
// only for a line the limiter lets through (each reason has its own
// budget): a flood of junk costs no allocation.
func (f *fwknopDoor) reject(by *fwknopDoor, src netip.Addr, r fwknopReason, req *fwknop.Request) {
	msg := fwknopRejected[r]
	if !f.deps.Lines.Admit(zap.InfoLevel, msg, msg) {
		return
	}
	door := f.names
	if by != nil {
		door = by.cfg.Name
	}
	fields := []zap.Field{zap.String("door", door), zap.Stringer("source", src), zap.String("reason", fwknopReasonText[r])}
	if req != nil && req.User != "" {
		// What an authentic packet said of itself: its user; for one
		// refused for its age, its time; for one refused for what it
		// asks, what it asks.
		fields = append(fields, zap.String("user", req.User))
		if r == fwStale {
			fields = append(fields, zap.Time("sent", req.Time))
		}
		if len(req.Access) > 0 {
			fields = append(fields, zap.Stringers("requested", req.Access))
		}
		if req.Allow.IsValid() {
			fields = append(fields, zap.Stringer("allow", req.Allow))
		}
	}
	f.deps.Log.Info(msg, fields...)
}

// fwknopReason is why an fwknop door refused a packet.
type fwknopReason uint8

// The reasons: the decoder's (package fwknop's errors), then the door's.
const (
	fwBadIP fwknopReason = iota
	fwBadUDP
	fwTooShort
	fwTooLong
	fwReprefixed
	fwGPG
	fwNotFwknop
	fwHMAC
	fwCiphertext
	fwPadding
	fwMalformed
	fwDigestType
	fwDigest
	fwVersion
	fwStale
	fwCommand
	fwNAT
	fwServerAuth
	fwPort
	fwSource
	fwNoAddress
	fwNotSource
	fwReplay
	fwBeforeStart
	fwReplayFull
	numFwknopReasons
)

var fwknopReasonText = [numFwknopReasons]string{
	fwBadIP:       "truncated or malformed IP packet",
	fwBadUDP:      "truncated or malformed UDP datagram",
	fwTooShort:    errText(fwknop.ErrTooShort),
	fwTooLong:     errText(fwknop.ErrTooLong),
	fwReprefixed:  errText(fwknop.ErrReprefixed),
	fwGPG:         errText(fwknop.ErrGPG),
	fwNotFwknop:   errText(fwknop.ErrNotFwknop),
	fwHMAC:        errText(fwknop.ErrHMAC),
	fwCiphertext:  errText(fwknop.ErrCiphertext),
	fwPadding:     errText(fwknop.ErrPadding),
	fwMalformed:   errText(fwknop.ErrMalformed),
	fwDigestType:  errText(fwknop.ErrDigestType),
	fwDigest:      errText(fwknop.ErrDigest),
	fwVersion:     errText(fwknop.ErrVersion),
	fwStale:       "stale: timestamp outside fwknop_max_age (MAX_SPA_PACKET_AGE: the client's clock, or --time-offset)",
	fwCommand:     errText(fwknop.ErrCommand),
	fwNAT:         errText(fwknop.ErrNAT),
	fwServerAuth:  errText(fwknop.ErrServerAuth),
	fwPort:        "port not in open (OPEN_PORTS): the whole request is refused",
	fwSource:      "source not in fwknop_source (SOURCE)",
	fwNoAddress:   "no address in the request (-s) and fwknop_require_source is set: the client must name its address (-a)",
	fwNotSource:   "the requested address (-a) is not the packet's source, and fwknop_require_source is set",
	fwReplay:      "replay: this packet was seen before",
	fwBeforeStart: "sent before the daemon started (a replay cannot be ruled out)",
	fwReplayFull:  "replay cache full",
}

// fwknopRejected are the log messages, one a reason, made once: a
// message made per packet would be garbage per packet.
var fwknopRejected = func() (m [numFwknopReasons]string) {
	for r, text := range fwknopReasonText {
		m[r] = "fwknop SPA packet rejected: " + text
	}
	return m
}()

func errText(err error) string { return strings.TrimPrefix(err.Error(), "fwknop: ") }

func (r fwknopReason) String() string { return fwknopReasonText[r] }

// reasonOfFwknop is a decoder error's reason.
func reasonOfFwknop(err error) fwknopReason {
	switch err {
	case fwknop.ErrTooShort:
		return fwTooShort
	case fwknop.ErrTooLong:
		return fwTooLong
	case fwknop.ErrReprefixed:
		return fwReprefixed
	case fwknop.ErrGPG:
		return fwGPG
	case fwknop.ErrNotFwknop:
		return fwNotFwknop
	case fwknop.ErrHMAC:
		return fwHMAC
	case fwknop.ErrCiphertext:
		return fwCiphertext
	case fwknop.ErrPadding:
		return fwPadding
	case fwknop.ErrDigestType:
		return fwDigestType
	case fwknop.ErrDigest:
		return fwDigest
	case fwknop.ErrVersion:
		return fwVersion
	case fwknop.ErrStale:
		return fwStale
	case fwknop.ErrCommand:
		return fwCommand
	case fwknop.ErrNAT:
		return fwNAT
	case fwknop.ErrServerAuth:
		return fwServerAuth
	}
	return fwMalformed
}
