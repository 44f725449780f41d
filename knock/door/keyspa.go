package door

import (
	"encoding/base64"
	"errors"
	"net/netip"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock"
	"github.com/nftknock/nftknock/knock/authkeys"
	"github.com/nftknock/nftknock/knock/spa"
	"github.com/nftknock/nftknock/knock/sshspa"
	"github.com/nftknock/nftknock/nft/plan"
)

// keySPAJobs bounds the datagrams a public-key SPA door has waiting for or
// in verification at once: past that, a datagram is refused (queue full)
// at no cost. The engine's worker verifies 1,400 (RSA-4096) to 13,000
// (forged) a second (see the README), so a knock waits behind at most a
// few milliseconds of others.
const keySPAJobs = 16

// keySPADoor is a public-key single-packet authorization door: a datagram
// sealed to the server's key and signed with an SSH key its
// authorized_keys files list opens it, for the datagram's source.
//
// Verifying costs an X25519 for every datagram and a signature check for
// one sealed right: 80-710 µs, a thousand times a knock's cost. It runs
// on the engine's worker (Deps.Offload), not on the engine goroutine, so
// that a flood to this door's port holds up no other door.
type keySPADoor struct {
	cfg    *config.Door
	k      *config.KeySPA
	deps   Deps
	server *sshspa.ServerKey
	keys   *authkeys.Watcher
	// free are the jobs not out: the engine goroutine's alone.
	free []*keySPAJob
	// poll is the job that looks at the authorized_keys files; polling
	// says it is out.
	poll     keySPAPoll
	polling  bool
	lastPoll time.Time
}

// keySPAPoll looks at the door's authorized_keys files, on the worker: a
// poll stats each file and the directories above it (0.8 ms for ten
// files here, BenchmarkPollUnchanged), and rereads what changed, which is
// no work for the goroutine that reads NFLOG.
type keySPAPoll struct{ d *keySPADoor }

func (p *keySPAPoll) Work()                   { p.d.keys.Poll() }
func (p *keySPAPoll) Done(time.Time, Actions) { p.d.polling = false }

// keySPAJob is one datagram being verified: filled on the engine
// goroutine, verified on the worker (Work), acted on back on the engine
// goroutine (Done).
type keySPAJob struct {
	d        *keySPADoor
	datagram [sshspa.Size]byte
	src      netip.Addr
	at       time.Time
	req      sshspa.Request
	err      error
}

func newKeySPA(file string, d *config.Door, k *config.KeySPA, deps Deps) (*keySPADoor, error) {
	server, err := sshspa.LoadServerKey(k.ServerKeyFile)
	if err != nil {
		return nil, &config.Error{File: file, Field: "server_key_file", Msg: err.Error()}
	}
	s := &keySPADoor{cfg: d, k: k, deps: deps, server: server, lastPoll: deps.Now()}
	s.poll.d = s
	s.keys, err = authkeys.NewWatcher(k.AuthorizedKeys, authkeys.Options{Report: s.report})
	if err != nil {
		return nil, fieldError(file, d, "authorized_keys", err)
	}
	for range keySPAJobs {
		s.free = append(s.free, &keySPAJob{d: s})
	}
	return s, nil
}

// report logs what the authorized_keys files hold that is not trusted (a
// file or line skipped, with its reason) or worth a warning, once each.
func (s *keySPADoor) report(p authkeys.Problem) {
	msg := "authorized_keys: skipped"
	if p.Kept {
		msg = "authorized_keys: warning"
	}
	fields := []zap.Field{zap.String("door", s.cfg.Name), zap.String("file", p.File), zap.Int("line", p.Line), zap.String("reason", p.Reason)}
	if strings.Contains(p.Reason, "permission denied") {
		// Under the systemd unit the daemon has CAP_NET_ADMIN alone: a
		// user's ~/.ssh (mode 0700) is closed to it.
		fields = append(fields, zap.String("hint", "reading files in users' homes needs CAP_DAC_READ_SEARCH (see nftknock.toml(5), authorized_keys)"))
	}
	s.deps.Log.Warn(msg, fields...)
}

func (s *keySPADoor) Config() *config.Door { return s.cfg }

// Plan has the kernel log the door's datagrams, of their one size only,
// and drop them all: the port looks filtered and nothing ever answers. A
// datagram of another size is dropped unseen.
func (s *keySPADoor) Plan(b *plan.Builder) {
	b.SizedDatagram(s.cfg.Name, s.k.Port, sshspa.Size, plan.DoorMatch(s.cfg.Interface, config.TCPFlags{}, config.UDP))
}

// Tick has the authorized_keys files that changed reread, once a second,
// on the worker: a removed line stops working within two seconds, without
// a reload. A poll the worker's queue has no room for is tried again at
// the next Tick.
func (s *keySPADoor) Tick(now time.Time, _ Actions) {
	if s.polling || now.Sub(s.lastPoll) < time.Second-50*time.Millisecond {
		return // one poll out at a time; or a Tick another door asked for
	}
	switch {
	case s.deps.Offload == nil:
		s.poll.Work()
	case s.deps.Offload(s, &s.poll):
		s.polling = true
	default:
		return
	}
	s.lastPoll = now
}

// Packet hands a datagram of the right size to the worker, or verifies it
// here when there is none (Deps.Offload nil).
func (s *keySPADoor) Packet(now time.Time, lg *knock.Logged, a Actions) {
	var p knock.Packet
	if err := knock.ParseIP(lg.Payload, &p); err != nil {
		s.reject(p.Src, spaTruncated)
		return
	}
	payload, err := knock.UDPPayload(lg.Payload)
	switch {
	case errors.Is(err, knock.ErrTruncated):
		s.reject(p.Src, spaTruncated)
		return
	case err != nil:
		s.reject(p.Src, spaMalformed)
		return
	case len(payload) < sshspa.Size:
		s.reject(p.Src, spaTruncated)
		return
	case len(payload) > sshspa.Size:
		s.reject(p.Src, spaOversized)
		return
	}
	if len(s.free) == 0 {
		s.reject(p.Src, spaQueueFull)
		return
	}
	j := s.free[len(s.free)-1]
	s.free = s.free[:len(s.free)-1]
	copy(j.datagram[:], payload)
	j.src, j.at = p.Src.Unmap(), now
	if s.deps.Offload == nil {
		j.Work()
		j.Done(now, a)
		return
	}
	if !s.deps.Offload(s, j) {
		s.free = append(s.free, j)
		s.reject(p.Src, spaQueueFull)
	}
}

// Work verifies the datagram: seal, form, age, door, key, signature, the
// key's from= and expiry-time, then the replay cache (safe for concurrent
// use). It runs on the worker: it touches nothing of the door's but what
// is safe to share (the server key, the Watcher's current Set).
func (j *keySPAJob) Work() {
	d := j.d
	j.req, j.err = sshspa.Open(d.server, d.cfg.Name, d.keys.Set(), j.datagram[:], j.src, j.at, d.k.MaxAge)
	if j.err == nil {
		j.err = d.deps.Replay.CheckID(j.req.ID, j.req.Time, j.at, d.k.MaxAge)
	}
}

// Done acts on what Work found, on the engine goroutine: a rejection with
// its reason, or the door opened for the datagram's source (or the
// address it sealed, as the door allows).
func (j *keySPAJob) Done(_ time.Time, a Actions) {
	d := j.d
	defer func() {
		j.req = sshspa.Request{}
		d.free = append(d.free, j)
	}()
	if j.err != nil {
		var fields []zap.Field
		switch {
		case j.req.Key != nil:
			fields = append(fields, zap.String("key", KeyLabel(j.req.Key)))
		case j.req.KeyHash != [32]byte{}:
			fields = append(fields, zap.String("claimed_key", "SHA256:"+base64.RawStdEncoding.EncodeToString(j.req.KeyHash[:])))
		}
		d.reject(j.src, keyReasonOf(j.err), fields...)
		return
	}
	by := KeyLabel(j.req.Key)
	addr, err := j.req.OpenFor(j.src, d.k.AllowRequested)
	if err != nil {
		d.reject(j.src, spaRequestedRefused, zap.Stringer("requested", j.req.Requested), zap.String("key", by))
		return
	}
	d.deps.Lines.Info("SPA request authenticated", zap.String("door", d.cfg.Name), zap.Stringer("source", j.src),
		zap.Stringer("for", addr), zap.String("key", by))
	a.Open(addr, j.src, by)
}

func (s *keySPADoor) reject(src netip.Addr, r SPAReason, extra ...zap.Field) {
	rejectSPA(s.deps, s.cfg.Name, src, r, extra...)
}

// keyReasonOf is the reason for an error of sshspa.Open or the replay
// cache.
func keyReasonOf(err error) SPAReason {
	switch err {
	case sshspa.ErrTruncated:
		return spaTruncated
	case sshspa.ErrOversized:
		return spaOversized
	case sshspa.ErrVersion:
		return spaNotSPA
	case sshspa.ErrSeal:
		return spaNotSealed
	case sshspa.ErrMalformed:
		return spaMalformed
	case sshspa.ErrStale:
		return spaStale
	case sshspa.ErrWrongDoor:
		return spaWrongDoor
	case sshspa.ErrUnknownKey:
		return spaUnknownKey
	case sshspa.ErrSignatureAlgorithm:
		return spaSignatureAlgorithm
	case sshspa.ErrBadSignature:
		return spaBadSignature
	case sshspa.ErrFromRefused:
		return spaFromRefused
	case sshspa.ErrKeyExpired:
		return spaKeyExpired
	case spa.ErrReplay:
		return spaReplay
	case spa.ErrBeforeStart:
		return spaBeforeStart
	case spa.ErrBusy:
		return spaBusy
	}
	if errors.Is(err, spa.ErrRequestedRefused) {
		return spaRequestedRefused
	}
	return spaNotSealed
}

// maxLabelComment bounds the comment part of a key's label: the label is
// logged with each grant and kept as its element's comment, which nft
// bounds at 128 bytes; the fingerprint takes 50.
const maxLabelComment = 64

// KeyLabel names a key in the log, in the grant's element comment and in
// `nftknock status`: its authorized_keys comment, quoted, and its
// fingerprint as `ssh-keygen -lf` prints it: `'alice@laptop' SHA256:…`.
// Single quotes: the log writes its fields as JSON strings, and nft's
// comments cannot hold a double quote. The comment is anyone's text (a
// user writes their own file): what is not printable ASCII, a quote or a
// backslash becomes "?", and it is cut to maxLabelComment bytes.
func KeyLabel(k *authkeys.Key) string {
	var b strings.Builder
	b.WriteByte('\'')
	for i := 0; i < len(k.Comment) && i < maxLabelComment; i++ {
		switch c := k.Comment[i]; {
		case c < 0x20 || c > 0x7e || c == '"' || c == '\'' || c == '\\':
			b.WriteByte('?')
		default:
			b.WriteByte(c)
		}
	}
	b.WriteString(`' `)
	b.WriteString(k.Fingerprint)
	return b.String()
}
