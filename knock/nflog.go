package knock

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/mdlayher/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// nfnetlink_log protocol numbers from linux/netfilter/nfnetlink_log.h that
// golang.org/x/sys/unix does not define.
const (
	nfulnlMsgPacket = 0 // NFULNL_MSG_PACKET: kernel -> us, one logged packet
	nfulnlMsgConfig = 1 // NFULNL_MSG_CONFIG: us -> kernel

	// enum nfulnl_attr_config. NFULA_CFG_NLBUFSIZ (3) sits before TIMEOUT
	// and QTHRESH; sending TIMEOUT as 3 sets the batch buffer size instead.
	nfulaCfgCmd     = 1 // NFULA_CFG_CMD: u8 command
	nfulaCfgMode    = 2 // NFULA_CFG_MODE: struct nfulnl_msg_config_mode
	nfulaCfgTimeout = 4 // NFULA_CFG_TIMEOUT: be32, in 1/100 s
	nfulaCfgQthresh = 5 // NFULA_CFG_QTHRESH: be32, packets per batch

	nfulnlCfgCmdBind   = 1
	nfulnlCfgCmdUnbind = 2
	nfulnlCopyPacket   = 2

	nfulaIfindexIndev = 4  // NFULA_IFINDEX_INDEV: be32
	nfulaPayload      = 9  // NFULA_PAYLOAD: packet bytes from the network header
	nfulaPrefix       = 10 // NFULA_PREFIX: the log rule's prefix, NUL-terminated

	nfgenmsgLen = 4 // struct nfgenmsg: family, version, be16 res_id (the group)

	nflogPacketType = netlink.HeaderType(unix.NFNL_SUBSYS_ULOG<<8 | nfulnlMsgPacket)
	nflogConfigType = netlink.HeaderType(unix.NFNL_SUBSYS_ULOG<<8 | nfulnlMsgConfig)
)

// NFLOG reads packets logged to one nfnetlink_log group.
type NFLOG struct {
	conn      *netlink.Conn
	group     uint16
	overruns  atomic.Uint64
	malformed atomic.Uint64
	closed    atomic.Bool
	woken     atomic.Bool
	log       *zap.Logger
	// buf receives one datagram at a time: a netlink message of a logged
	// packet is at most the copy range and some attributes.
	buf            []byte
	lastOverrunLog time.Time
	// recv reads one datagram into buf, its length to n and its error to
	// rerr: Read's, on the one goroutine that reads.
	recv func(fd uintptr) bool
	n    int
	rerr error
}

// NFLOGConfig configures ListenNFLOG.
type NFLOGConfig struct {
	Group      uint16
	CopyRange  uint32      // bytes of each packet to copy, from its network header; 0 means 256; the kernel caps it at 65531
	ReadBuffer int         // socket receive buffer in bytes; 0 means 8 MiB
	NetNS      int         // network namespace fd for netlink.Config.NetNS; 0 = current
	Logger     *zap.Logger // overruns are logged here; nil = zap.NewNop()
}

// ListenNFLOG binds the group. The kernel answers EPERM both when another
// socket has the group bound and when the caller lacks CAP_NET_ADMIN; the
// error says which, and wraps the errno.
func ListenNFLOG(cfg NFLOGConfig) (*NFLOG, error) {
	if cfg.CopyRange == 0 {
		cfg.CopyRange = 256 // IP + TCP/UDP headers with options and extension headers
	}
	if cfg.ReadBuffer == 0 {
		cfg.ReadBuffer = 8 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: cfg.NetNS})
	if err != nil {
		return nil, fmt.Errorf("open netfilter netlink socket: %w", err)
	}
	l := &NFLOG{conn: conn, group: cfg.Group, log: cfg.Logger.With(zap.Uint16("nflog_group", cfg.Group)), buf: make([]byte, max(64<<10, int(cfg.CopyRange)+4096))}

	// Enlarge the buffer before binding so a burst at startup fits. SetReadBuffer
	// tries SO_RCVBUFFORCE (ignores net.core.rmem_max; needs CAP_NET_ADMIN) and
	// falls back to SO_RCVBUF, which the kernel silently caps at rmem_max.
	if err := conn.SetReadBuffer(cfg.ReadBuffer); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("set NFLOG receive buffer to %d bytes: %w", cfg.ReadBuffer, err)
	}
	// The kernel doubles the request for bookkeeping overhead; less than that means capped.
	if got, err := conn.ReadBuffer(); err == nil {
		lvl := zap.DebugLevel
		if got < 2*cfg.ReadBuffer {
			lvl = zap.WarnLevel // SO_RCVBUFFORCE was refused: raise net.core.rmem_max
		}
		l.log.Log(lvl, "NFLOG receive buffer", zap.Int("requested", cfg.ReadBuffer), zap.Int("obtained", got))
	}

	// One message, so the instance never runs with the kernel defaults. QTHRESH=1
	// and TIMEOUT=0 make the kernel send every packet at once: the defaults batch
	// up to 100 packets for up to a second, far too slow to open a door.
	err = l.configure(netlink.Request|netlink.Acknowledge, func(ae *netlink.AttributeEncoder) {
		ae.Uint8(nfulaCfgCmd, nfulnlCfgCmdBind)
		mode := binary.BigEndian.AppendUint32(nil, cfg.CopyRange)
		ae.Bytes(nfulaCfgMode, append(mode, nfulnlCopyPacket, 0))
		ae.Uint32(nfulaCfgQthresh, 1)
		ae.Uint32(nfulaCfgTimeout, 0)
	})
	if err != nil {
		_ = conn.Close()
		if errors.Is(err, unix.EPERM) {
			if !hasCapNetAdmin() {
				return nil, fmt.Errorf("bind NFLOG group %d: CAP_NET_ADMIN is required (run as root): %w", cfg.Group, err)
			}
			return nil, fmt.Errorf("NFLOG group %d is already bound by another process (another nftknockd?): %w", cfg.Group, err)
		}
		return nil, fmt.Errorf("bind NFLOG group %d: %w", cfg.Group, err)
	}
	return l, nil
}

// configure sends one NFULNL_MSG_CONFIG. With Acknowledge it waits for the ack
// itself instead of using Conn.Execute: once bound, a packet can reach the
// socket before the ack, and Execute would fail on its sequence number.
func (l *NFLOG) configure(flags netlink.HeaderFlags, attrs func(*netlink.AttributeEncoder)) error {
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian // nfnetlink attribute values are big-endian
	attrs(ae)
	b, err := ae.Encode()
	if err != nil {
		return err
	}
	nfgen := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, byte(l.group >> 8), byte(l.group)}
	req, err := l.conn.Send(netlink.Message{
		Header: netlink.Header{Type: nflogConfigType, Flags: flags},
		Data:   append(nfgen, b...),
	})
	if err != nil || flags&netlink.Acknowledge == 0 {
		return err
	}
	// Don't wait forever if the ack is lost to an overrun.
	if err := l.conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return err
	}
	defer l.conn.SetReadDeadline(time.Time{})
	for {
		msgs, err := l.conn.Receive() // an error ack (EPERM...) comes back as err
		if errors.Is(err, unix.ENOBUFS) {
			l.overruns.Add(1)
			continue
		}
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Type == netlink.Error && m.Header.Sequence == req.Header.Sequence {
				return nil
			}
		}
	}
}

// hasCapNetAdmin reports whether the calling thread may configure nfnetlink,
// to tell "not root" from "group taken": the kernel answers EPERM to both.
func hasCapNetAdmin() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	return unix.Capget(&hdr, &data[0]) == nil && data[0].Effective&(1<<unix.CAP_NET_ADMIN) != 0
}

// Logged is one packet as NFLOG delivers it. Its slices alias the received
// message and are only valid during the handler's call.
type Logged struct {
	// Payload is the copied packet, from its network header on.
	Payload []byte
	// Prefix is the `log prefix` of the rule that logged it, without the
	// NUL: it tells which rule, and so which door, the packet matched.
	Prefix []byte
	// InIfindex is the input interface index, 0 if absent.
	InIfindex uint32
}

// Run reads until ctx is done (returns nil), Close is called (returns nil)
// or a fatal error, calling handle for each logged packet.
func (l *NFLOG) Run(ctx context.Context, handle func(Logged)) error {
	stop := context.AfterFunc(ctx, l.Wake)
	defer stop()
	for ctx.Err() == nil && !l.closed.Load() {
		if err := l.Read(time.Time{}, handle); err != nil {
			return err
		}
	}
	return nil
}

// Read hands handle each logged packet that arrives until deadline (the
// zero time: none), Wake is called, or Close is: then it returns nil. Its
// packets alias one buffer that it reuses, so reading allocates nothing;
// handle must copy what it keeps. ENOBUFS (the socket buffer overran: the
// kernel dropped log messages) is counted, logged at most once a second
// with the running total, and is never fatal. It is meant for one
// goroutine, the socket's owner.
func (l *NFLOG) Read(deadline time.Time, handle func(Logged)) error {
	if err := l.conn.SetReadDeadline(deadline); err != nil {
		if l.closed.Load() {
			return nil
		}
		return fmt.Errorf("NFLOG group %d: %w", l.group, err)
	}
	if l.woken.Swap(false) {
		return nil
	}
	rc, err := l.conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("NFLOG group %d: %w", l.group, err)
	}
	if l.recv == nil {
		// Made once: a closure made per datagram would be garbage per
		// packet. read(2), not recvfrom(2): x/sys's Recvfrom makes a
		// Sockaddr of the sender for every datagram. The socket is
		// non-blocking (Go's poller waits for it).
		l.recv = func(fd uintptr) bool {
			l.n, l.rerr = unix.Read(int(fd), l.buf)
			return l.rerr != unix.EAGAIN && l.rerr != unix.EINTR
		}
	}
	for {
		err := rc.Read(l.recv)
		n, rerr := l.n, l.rerr
		switch {
		case l.closed.Load():
			return nil
		case errors.Is(err, os.ErrDeadlineExceeded):
			l.woken.Store(false)
			return nil
		case err != nil:
			return fmt.Errorf("receive from NFLOG group %d: %w", l.group, err)
		case rerr == unix.ENOBUFS:
			l.overrun()
			continue
		case rerr != nil:
			return fmt.Errorf("receive from NFLOG group %d: %w", l.group, rerr)
		}
		l.messages(l.buf[:n], handle)
	}
}

// Wake makes a Read under way return, or the next one return at once. It
// is safe from any goroutine.
func (l *NFLOG) Wake() {
	l.woken.Store(true)
	_ = l.conn.SetReadDeadline(time.Now())
}

// overrun counts an ENOBUFS, logging at most a line a second.
func (l *NFLOG) overrun() {
	n := l.overruns.Add(1)
	now := time.Now()
	if now.Sub(l.lastOverrunLog) < time.Second {
		return
	}
	l.lastOverrunLog = now
	l.log.Warn("NFLOG socket buffer overran: the kernel dropped logged packets", zap.Uint64("overruns", n))
}

// messages walks the netlink messages of one datagram, handing on the
// logged packets. The kernel wrote them, but they are read as carefully
// as anything from a socket: what does not parse is counted and skipped.
func (l *NFLOG) messages(b []byte, handle func(Logged)) {
	for len(b) >= nlmsgHeader {
		n := int(binary.NativeEndian.Uint32(b))
		typ := netlink.HeaderType(binary.NativeEndian.Uint16(b[4:]))
		if n < nlmsgHeader || n > len(b) {
			l.malformed.Add(1)
			return
		}
		if typ == nflogPacketType {
			lg, ok := parseNFLOGPacket(b[nlmsgHeader:n])
			if ok {
				handle(lg)
			} else if m := l.malformed.Add(1); m&(m-1) == 0 {
				l.log.Warn("skipped malformed NFLOG message", zap.Uint64("malformed", m))
			}
		}
		b = b[min((n+3)&^3, len(b)):]
	}
}

// nlmsgHeader is the size of struct nlmsghdr.
const nlmsgHeader = 16

// parseNFLOGPacket walks the attributes of an NFULNL_MSG_PACKET body. It does
// not use netlink.AttributeDecoder because that copies every attribute; the
// payload returned here is a sub-slice of b. A last attribute without its
// padding is accepted, as the kernel's own nla_parse does.
func parseNFLOGPacket(b []byte) (lg Logged, ok bool) {
	if len(b) < nfgenmsgLen {
		return Logged{}, false
	}
	for b = b[nfgenmsgLen:]; len(b) > 0; {
		if len(b) < 4 {
			return Logged{}, false
		}
		n := int(binary.NativeEndian.Uint16(b)) // nlattr header is host order
		typ := binary.NativeEndian.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if n < 4 || n > len(b) {
			return Logged{}, false
		}
		switch v := b[4:n:n]; typ {
		case nfulaIfindexIndev:
			if len(v) != 4 {
				return Logged{}, false
			}
			lg.InIfindex = binary.BigEndian.Uint32(v)
		case nfulaPayload:
			lg.Payload = v
		case nfulaPrefix:
			if i := bytes.IndexByte(v, 0); i >= 0 {
				v = v[:i]
			}
			lg.Prefix = v
		}
		b = b[min((n+3)&^3, len(b)):]
	}
	if lg.Payload == nil {
		return Logged{}, false // we asked for NFULNL_COPY_PACKET
	}
	return lg, true
}

// Overruns returns how many times the socket overran (ENOBUFS) since ListenNFLOG.
func (l *NFLOG) Overruns() uint64 { return l.overruns.Load() }

// Close unbinds and closes the socket. It is safe to call more than once, and
// concurrently with Run to stop it.
func (l *NFLOG) Close() error {
	if l.closed.Swap(true) {
		return nil
	}
	// Best effort and unacknowledged: Run may own the receive side, and the
	// kernel destroys the instance anyway when the socket is released.
	_ = l.configure(netlink.Request, func(ae *netlink.AttributeEncoder) {
		ae.Uint8(nfulaCfgCmd, nfulnlCfgCmdUnbind)
	})
	if err := l.conn.Close(); err != nil {
		return fmt.Errorf("close NFLOG group %d: %w", l.group, err)
	}
	return nil
}
