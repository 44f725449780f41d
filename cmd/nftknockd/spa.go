package main

import (
	"net/netip"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock"
	"github.com/nftknock/nftknock/knock/spa"
)

// The NFLOG copy range must hold a whole SPA datagram behind the largest
// IPv4 (60) or plain IPv6 (40) header and the UDP header: knock's default
// of 256 bytes does. This fails to compile if the format ever outgrows it.
const spaCopyNeed = 60 + 8 + spa.Size

var _ [256 - spaCopyNeed]struct{}

// spaReason is why an SPA datagram was refused: a log reason and a counter.
type spaReason int

const (
	spaTruncated spaReason = iota
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
	spaQueueFull
	numSPAReasons
)

var spaReasonText = [numSPAReasons]string{
	spaTruncated:        "truncated",
	spaOversized:        "oversized",
	spaNotSPA:           "not an SPA datagram (unknown format or version)",
	spaNotAuthentic:     "not authentic (wrong key or changed byte)",
	spaMalformed:        "malformed payload",
	spaStale:            "stale (timestamp outside spa_max_age)",
	spaWrongDoor:        "sealed for another door",
	spaReplay:           "replay",
	spaBeforeStart:      "sealed before the daemon started (a replay cannot be ruled out)",
	spaBusy:             "replay cache full",
	spaRequestedRefused: "requested address not allowed (spa_allow_requested = false)",
	spaQueueFull:        "dropped: the daemon fell behind",
}

func spaReasonOf(err error) spaReason {
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

// spaDoor is what the reader goroutine needs of an SPA door.
type spaDoor struct {
	name           string
	key            *spa.Key
	maxAge         time.Duration
	allowRequested bool
}

// spaGrant is an authentic, fresh, unreplayed request, for the loop to
// grant.
type spaGrant struct {
	door      string
	src, addr netip.Addr
}

// spaState is the SPA side of the server. Keys are derived at start and
// on every reload; the replay cache outlives reloads, or a reload would
// let a datagram seen before it through again.
type spaState struct {
	doors atomic.Pointer[map[string]*spaDoor]
	// replay begins empty at the daemon's start, and refuses what was
	// sealed before (a daemon that ran then may have taken it). Clients
	// seal afresh each time, so only a replay, or a client whose clock is
	// behind, in the spa_max_age after a start, meets this.
	replay  *spa.Replay
	grants  chan spaGrant
	rejects [numSPAReasons]atomic.Uint64
	// lines counts the rejection lines logged since the last housekeep,
	// per reason; reported is each reason's count at that housekeep.
	lines    [numSPAReasons]atomic.Uint64
	reported [numSPAReasons]uint64
}

// spaLinesPerSweep bounds the rejection lines per reason between two
// housekeeps (a second): a flood of forged datagrams from spoofed sources
// would otherwise be a line each, and a write to the journal each, on the
// reader goroutine. The rest are counted and summed up once a second.
const spaLinesPerSweep = 10

func newSPAState(now time.Time) *spaState {
	return &spaState{replay: spa.NewReplay(spa.DefaultReplayCap, now), grants: make(chan spaGrant, 64)}
}

// load derives the keys of cfg's SPA doors.
func (st *spaState) load(cfg *config.Config) error {
	doors := map[string]*spaDoor{}
	for _, d := range cfg.Doors {
		if !d.IsSPA() {
			continue
		}
		k, err := spa.NewKey(d.Key)
		if err != nil {
			return err
		}
		doors[d.Name] = &spaDoor{name: d.Name, key: k, maxAge: d.SPAMaxAge, allowRequested: d.SPAAllowRequested}
	}
	st.doors.Store(&doors)
	return nil
}

// forwardSPA runs on the reader goroutine for a packet an SPA door's rule
// logged: it verifies the datagram there (a forged one costs a fraction of
// a microsecond and never reaches the loop) and queues only grants. It
// reports whether prefix named an SPA door.
func (s *server) forwardSPA(lg knock.Logged, now time.Time) bool {
	st := s.spa
	d, ok := (*st.doors.Load())[string(lg.Prefix)]
	if !ok {
		return false
	}
	var p knock.Packet
	if err := knock.ParseIP(lg.Payload, &p); err != nil {
		s.parseErrors.Add(1)
		return true
	}
	payload, err := knock.UDPPayload(lg.Payload)
	if err != nil {
		s.spaReject(d.name, p.Src, spaReasonOf(err))
		return true
	}
	req, err := spa.Open(d.key, d.name, payload, now, d.maxAge)
	if err == nil {
		err = st.replay.Check(&req, now, d.maxAge)
	}
	if err != nil {
		s.spaReject(d.name, p.Src, spaReasonOf(err))
		return true
	}
	addr := p.Src
	if req.Requested.IsValid() {
		if !d.allowRequested {
			s.spaReject(d.name, p.Src, spaRequestedRefused, zap.Stringer("requested", req.Requested))
			return true
		}
		addr = req.Requested
	}
	select {
	case st.grants <- spaGrant{door: d.name, src: p.Src, addr: addr}:
	default:
		s.spaReject(d.name, p.Src, spaQueueFull)
	}
	return true
}

// spaReject counts one refused datagram and logs it, unless this reason
// has had its spaLinesPerSweep lines this second.
func (s *server) spaReject(door string, src netip.Addr, r spaReason, extra ...zap.Field) {
	n := s.spa.rejects[r].Add(1)
	if s.spa.lines[r].Add(1) > spaLinesPerSweep {
		return
	}
	fields := append([]zap.Field{zap.String("door", door), zap.Stringer("source", src),
		zap.String("reason", spaReasonText[r]), zap.Uint64("count", n)}, extra...)
	s.log.Info("SPA datagram rejected: "+spaReasonText[r], fields...)
}

// spaOpen grants an authentic request, on the loop goroutine.
func (s *server) spaOpen(g spaGrant) {
	i, ok := (*s.doors.Load())[g.door]
	if !ok || i < 0 || !s.cfg.Doors[i].IsSPA() {
		return // the door went away in a reload
	}
	s.log.Info("SPA request authenticated", zap.String("door", g.door), zap.Stringer("source", g.src), zap.Stringer("for", g.addr))
	s.open(i, g.addr)
}

// spaSummary runs on the loop's housekeeping tick: it logs how many
// rejections of each reason went unlogged, and opens a new second.
func (s *server) spaSummary() {
	for r := range numSPAReasons {
		lines := s.spa.lines[r].Swap(0)
		total := s.spa.rejects[r].Load()
		if lines > spaLinesPerSweep {
			s.log.Warn("SPA datagrams rejected, more than are logged one by one (a flood of forged datagrams?)",
				zap.String("reason", spaReasonText[r]), zap.Uint64("since_last", total-s.spa.reported[r]), zap.Uint64("total", total))
		}
		s.spa.reported[r] = total
	}
}

// spaRejectCounts is every reason's count, for the stop message.
func (s *server) spaRejectCounts() []zap.Field {
	var f []zap.Field
	for r := range numSPAReasons {
		if n := s.spa.rejects[r].Load(); n > 0 {
			f = append(f, zap.Uint64("spa_rejected_"+spaReasonKey(r), n))
		}
	}
	return f
}

func spaReasonKey(r spaReason) string {
	return [numSPAReasons]string{"truncated", "oversized", "not_spa", "not_authentic", "malformed", "stale",
		"wrong_door", "replay", "before_start", "busy", "requested_refused", "queue_full"}[r]
}
