package door

import (
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock"
	"github.com/nftknock/nftknock/knock/spa"
	"github.com/nftknock/nftknock/nft/plan"
)

// The NFLOG copy range must hold a whole SPA datagram behind the largest
// IPv4 (60) or plain IPv6 (40) header and the UDP header: knock's default
// of 256 bytes does. This fails to compile if the format ever outgrows it.
const spaCopyNeed = 60 + 8 + spa.Size

var _ [256 - spaCopyNeed]struct{}

// spaDoor is a single-packet authorization door: one datagram sealed with
// the door's key opens it.
type spaDoor struct {
	cfg  *config.Door
	k    *config.SPA
	deps Deps
	key  *spa.Key
}

func newSPA(file string, d *config.Door, k *config.SPA, deps Deps) (*spaDoor, error) {
	raw, err := readKey(k.KeyFile)
	if err != nil {
		return nil, fieldError(file, d, "key_file", err)
	}
	key, err := spa.NewKey(raw)
	if err != nil {
		return nil, fieldError(file, d, "key_file", err)
	}
	return &spaDoor{cfg: d, k: k, deps: deps, key: key}, nil
}

func (s *spaDoor) Config() *config.Door { return s.cfg }

// Plan has the kernel log datagrams to the door's port, whole (the NFLOG
// copy range covers them: spaCopyNeed), and drop them: the port looks
// filtered and nothing ever answers.
func (s *spaDoor) Plan(b *plan.Builder) {
	b.Datagram(s.cfg.Name, s.k.Port, plan.DoorMatch(s.cfg.Interface, config.TCPFlags{}, config.UDP))
}

func (s *spaDoor) Tick(time.Time, Actions) {}

// Packet verifies a datagram (a forged one costs a fraction of a
// microsecond) and opens the door for an authentic, fresh, unreplayed
// one: for its source, or the address it asks for when that is its
// source or spa_allow_requested allows it.
func (s *spaDoor) Packet(now time.Time, lg *knock.Logged, a Actions) {
	var p knock.Packet
	if err := knock.ParseIP(lg.Payload, &p); err != nil {
		s.reject(p.Src, spaTruncated)
		return
	}
	payload, err := knock.UDPPayload(lg.Payload)
	if err != nil {
		s.reject(p.Src, reasonOf(err))
		return
	}
	req, err := spa.Open(s.key, s.cfg.Name, payload, now, s.k.MaxAge)
	if err == nil {
		err = s.deps.Replay.Check(&req, now, s.k.MaxAge)
	}
	if err != nil {
		s.reject(p.Src, reasonOf(err))
		return
	}
	addr, err := req.OpenFor(p.Src, s.k.AllowRequested)
	if err != nil {
		s.reject(p.Src, spaRequestedRefused, zap.Stringer("requested", req.Requested))
		return
	}
	s.deps.Lines.Info("SPA request authenticated", zap.String("door", s.cfg.Name), zap.Stringer("source", p.Src), zap.Stringer("for", addr))
	a.Open(addr, p.Src, "")
}

func (s *spaDoor) reject(src netip.Addr, r SPAReason, extra ...zap.Field) {
	rejectSPA(s.deps, s.cfg.Name, src, r, extra...)
}

// rejectSPA counts a datagram an SPA door refused and logs it with its
// reason through the line limiter: a flood of forged datagrams is a
// summary line a second, and a line held back builds no fields.
func rejectSPA(deps Deps, door string, src netip.Addr, r SPAReason, extra ...zap.Field) {
	if deps.Rejected != nil {
		deps.Rejected(r)
	}
	msg := spaRejected[r]
	if !deps.Lines.Admit(zap.InfoLevel, msg, msg) {
		return
	}
	deps.Log.Info(msg, append([]zap.Field{zap.String("door", door), zap.Stringer("source", src), zap.String("reason", r.String())}, extra...)...)
}

// spaRejected are the rejection lines, made once: a string built per
// datagram would be garbage per datagram of a flood.
var spaRejected = func() (m [NumSPAReasons]string) {
	for r := range NumSPAReasons {
		m[r] = "SPA datagram rejected: " + r.String()
	}
	return m
}()

// SPAReason is why a datagram was refused: a log reason and a counter.
type SPAReason int

// The reasons.
const (
	spaTruncated SPAReason = iota
	spaOversized
	spaNotSPA
	spaNotAuthentic
	spaMalformed
	spaStale
	spaWrongDoor
	spaReplay
	spaBeforeStart
	spaBusy
	spaRequestedRefused
	// The public-key doors' own (keyspa.go).
	spaNotSealed
	spaUnknownKey
	spaSignatureAlgorithm
	spaBadSignature
	spaFromRefused
	spaKeyExpired
	spaQueueFull
	NumSPAReasons
)

var spaReasonText = [NumSPAReasons]string{
	spaTruncated:          "truncated",
	spaOversized:          "oversized",
	spaNotSPA:             "not an SPA datagram (unknown format or version)",
	spaNotAuthentic:       "not authentic (wrong key or changed byte)",
	spaMalformed:          "malformed payload",
	spaStale:              "stale (timestamp outside spa_max_age)",
	spaWrongDoor:          "sealed for another door",
	spaReplay:             "replay",
	spaBeforeStart:        "sealed before the daemon started (a replay cannot be ruled out)",
	spaBusy:               "replay cache full",
	spaRequestedRefused:   "requested address not allowed (spa_allow_requested = false)",
	spaNotSealed:          "not sealed to this server's key (another server's key, or a changed byte)",
	spaUnknownKey:         "unknown key (no authorized_keys line of the door lists it)",
	spaSignatureAlgorithm: "signature algorithm not accepted (SHA-1 ssh-rsa)",
	spaBadSignature:       "bad signature",
	spaFromRefused:        "from= refused (the key may not knock from this address)",
	spaKeyExpired:         "expired key (past its expiry-time)",
	spaQueueFull:          "verification queue full (a flood?)",
}

func (r SPAReason) String() string { return spaReasonText[r] }

// Key is the reason as a counter's name: spa_rejected_<key>.
func (r SPAReason) Key() string {
	return [NumSPAReasons]string{"truncated", "oversized", "not_spa", "not_authentic", "malformed", "stale",
		"wrong_door", "replay", "before_start", "busy", "requested_refused",
		"not_sealed", "unknown_key", "signature_algorithm", "bad_signature", "from_refused", "expired_key", "queue_full"}[r]
}

func reasonOf(err error) SPAReason {
	switch err {
	case spa.ErrTruncated, knock.ErrTruncated:
		return spaTruncated
	case spa.ErrOversized:
		return spaOversized
	case spa.ErrVersion:
		return spaNotSPA
	case spa.ErrMalformed:
		return spaMalformed
	case spa.ErrStale:
		return spaStale
	case spa.ErrWrongDoor:
		return spaWrongDoor
	case spa.ErrReplay:
		return spaReplay
	case spa.ErrBeforeStart:
		return spaBeforeStart
	case spa.ErrBusy:
		return spaBusy
	}
	return spaNotAuthentic
}
