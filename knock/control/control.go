// Package control is the daemon's control socket: how `nftknock grant`
// and `revoke` reach a daemon that owns its table, which no other process
// may write. It is an abstract unix socket, so it belongs to the network
// namespace whose firewall the daemon keeps (one daemon a namespace and
// table, and no file to leave behind), and it answers root alone
// (SO_PEERCRED): root is who may write nf_tables anyway.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Request is one tool command.
type Request struct {
	Op   string `json:"op"` // "grant" or "revoke"
	Door string `json:"door"`
	Addr string `json:"addr"`
	Port string `json:"port,omitempty"` // PORT:tcp|udp, for a door that grants per port
	// ForMS is a grant's timeout in milliseconds.
	ForMS int64 `json:"for_ms,omitempty"`
}

// Response is the daemon's answer: Error empty when it was done.
type Response struct {
	Error string `json:"error,omitempty"`
}

// maxMessage bounds a request: its fields are short.
const maxMessage = 4096

// exchangeTimeout bounds one request and its answer, on both ends.
const exchangeTimeout = 5 * time.Second

// Name is the abstract socket name of the daemon for table.
func Name(table string) string { return "@nftknock/control/" + table }

// ErrNoDaemon is returned by Ask when no daemon listens for the table.
var ErrNoDaemon = errors.New("no nftknockd listens on its control socket")

// Ask sends r to the daemon of table and returns its answer.
func Ask(table string, r Request) (Response, error) {
	var resp Response
	c, err := net.DialTimeout("unixpacket", Name(table), exchangeTimeout)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return resp, ErrNoDaemon
		}
		return resp, fmt.Errorf("control socket %s: %w", Name(table), err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(exchangeTimeout))
	msg, err := json.Marshal(r)
	if err != nil {
		return resp, err
	}
	if _, err := c.Write(msg); err != nil {
		return resp, fmt.Errorf("control socket %s: %w", Name(table), err)
	}
	buf := make([]byte, maxMessage)
	n, err := c.Read(buf)
	if err != nil {
		return resp, fmt.Errorf("control socket %s: no answer: %w", Name(table), err)
	}
	if err := json.Unmarshal(buf[:n], &resp); err != nil {
		return resp, fmt.Errorf("control socket %s: answer: %w", Name(table), err)
	}
	return resp, nil
}

// Server answers requests on the control socket, one at a time (tools
// are rare; a client that stalls holds it for exchangeTimeout at most).
type Server struct{ l *net.UnixListener }

// Listen binds the control socket of table.
func Listen(table string) (*Server, error) {
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: Name(table), Net: "unixpacket"})
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("control socket %s: another nftknockd runs for table %s in this network namespace", Name(table), table)
		}
		return nil, fmt.Errorf("control socket %s: %w", Name(table), err)
	}
	return &Server{l: l}, nil
}

// Serve answers requests with handle until ctx ends, then closes the
// socket. handle runs on Serve's goroutine.
func (s *Server) Serve(ctx context.Context, handle func(context.Context, Request) error) error {
	stop := context.AfterFunc(ctx, func() { s.l.Close() })
	defer stop()
	defer s.l.Close()
	for {
		c, err := s.l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("control socket: %w", err)
		}
		s.serve(ctx, c, handle)
	}
}

func (s *Server) serve(ctx context.Context, c *net.UnixConn, handle func(context.Context, Request) error) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(exchangeTimeout))
	answer := func(err error) {
		var r Response
		if err != nil {
			r.Error = err.Error()
		}
		msg, _ := json.Marshal(r)
		_, _ = c.Write(msg)
	}
	// Read first, whoever asks: a socket closed on an unread request
	// resets the client's, and it would never see why.
	buf := make([]byte, maxMessage)
	n, err := c.Read(buf)
	if err != nil {
		return
	}
	if err := fromRoot(c); err != nil {
		answer(err)
		return
	}
	var r Request
	if err := json.Unmarshal(buf[:n], &r); err != nil {
		answer(fmt.Errorf("request: %w", err))
		return
	}
	ctx, cancel := context.WithTimeout(ctx, exchangeTimeout)
	defer cancel()
	answer(handle(ctx, r))
}

// fromRoot refuses a peer whose uid is not 0.
func fromRoot(c *net.UnixConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return err
	}
	if cerr != nil {
		return cerr
	}
	if cred.Uid != 0 {
		return fmt.Errorf("only root may ask nftknockd (uid %d asked)", cred.Uid)
	}
	return nil
}
