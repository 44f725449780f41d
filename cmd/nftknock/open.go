package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/nftknock/nftknock/config"
)

// planKind is the kind of door a knockPlan knocks on.
type planKind int

const (
	kindSequence  planKind = iota + 1 // sequence
	kindRotating                      // sequence_key_file
	kindSharedSPA                     // key_file
	kindKeySPA                        // server_key_file or known_hosts
)

// knockPlan is how to knock on one server's door: from a [[server]] of
// the client file, or from nftknock spa's flags. Every kind is sent by
// the code the knock and spa commands use.
type knockPlan struct {
	host string
	kind planKind
	// A plain sequence, and the delay between knocks (also rotating).
	steps []config.Port
	delay time.Duration
	// A rotating door.
	rot rotatingFlags
	// The SPA kinds.
	door    string
	spaPort int
	allow   netip.Addr
	nat     bool
	// A shared-key SPA door.
	keyFile string
	// A public-key SPA door.
	serverKeyFile string
	knownHosts    bool
	sshPort       int
	identity      string
}

// knock knocks on addr as the plan says, writing a line per knock to out.
// For a public-key door with several agent keys, stop (if not nil) is
// asked before each datagram after the first whether to stop, given how
// long it may wait for the answer.
func (p *knockPlan) knock(ctx context.Context, e *env, out io.Writer, addr netip.Addr, stop func(wait time.Duration) bool) error {
	verbose := out != io.Discard
	switch p.kind {
	case kindSequence:
		return sendKnocks(ctx, out, addr, p.steps, p.delay, verbose)
	case kindRotating:
		r := p.rot
		r.keyFile = expandHome(e, r.keyFile)
		steps, err := r.steps(e.now())
		if err != nil {
			return err
		}
		return sendKnocks(ctx, out, addr, steps, p.delay, verbose)
	case kindSharedSPA:
		to := netip.AddrPortFrom(addr, uint16(p.spaPort))
		from, err := spaSender{to: to, allow: p.allow, nat: p.nat}.send(func(sealed netip.Addr) ([]byte, error) {
			return sealFromFile(expandHome(e, p.keyFile), p.door, sealed, e.now())
		})
		if err == nil {
			fmt.Fprintf(out, "sent %s from %s\n", to, from)
		}
		return err
	case kindKeySPA:
		return p.sendKeySPA(ctx, e, out, netip.AddrPortFrom(addr, uint16(p.spaPort)), stop)
	}
	return fmt.Errorf("no door kind for %s", p.host)
}

// defaultWait bounds how long open -wait and proxy wait for the port to
// accept after the knock.
const defaultWait = 5 * time.Second

// clientFileFlags are the flags open and proxy share.
type clientFileFlags struct {
	config  string
	timeout time.Duration
	verbose bool
}

func addClientFileFlags(fs *flag.FlagSet) *clientFileFlags {
	f := &clientFileFlags{}
	fs.StringVar(&f.config, "config", "", "the client `file` (default ~/.config/nftknock/client.toml)")
	fs.DurationVar(&f.timeout, "timeout", defaultWait, "how long to wait for the port to accept after the knock")
	fs.BoolVar(&f.verbose, "v", false, "print a line per knock (on standard error)")
	return f
}

// plan finds host's [[server]] in the client file.
func (f *clientFileFlags) plan(e *env, host string) (*knockPlan, error) {
	path, err := clientFilePath(e, f.config)
	if err != nil {
		return nil, err
	}
	plans, err := loadClientFile(path)
	if err != nil {
		return nil, err
	}
	return findServer(plans, path, host)
}

var openCmd = &command{
	name:     "open",
	synopsis: "[-config FILE] [-wait PORT] [-timeout DURATION] [-v] HOST",
	summary:  "knock on HOST as the client file says",
	help: `Knocks on HOST the way its [[server]] entry in the client file says
(~/.config/nftknock/client.toml, or $XDG_CONFIG_HOME/nftknock/client.toml,
or -config FILE): a plain sequence, a rotating door, a shared-key or a
public-key SPA door. With -wait PORT, then waits until HOST:PORT accepts a
TCP connection (and closes it), for at most -timeout: for ssh's
Match exec, which must not return before the door is open.

Exit status: 0 knocked (and with -wait, the port accepted), 1 failed or
the port did not accept in time, 2 usage error.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) int {
		f := addClientFileFlags(fs)
		waitPort := fs.Int("wait", 0, "then wait until `PORT` on HOST accepts a connection")
		return func(e *env, args []string) int {
			switch {
			case len(args) != 1 || args[0] == "":
				return usageErr(e, "open", "give one HOST")
			case *waitPort < 0 || *waitPort > 65535:
				return usageErr(e, "open", "-wait %d is out of range 1-65535", *waitPort)
			case f.timeout <= 0:
				return usageErr(e, "open", "-timeout must be positive")
			}
			p, err := f.plan(e, args[0])
			if err == nil {
				var c net.Conn
				c, err = knockAndConnect(context.Background(), e, f, p, *waitPort)
				if c != nil {
					c.Close()
				}
			}
			if err != nil {
				fmt.Fprintf(e.stderr, "nftknock open: %v\n", err)
				return exitFail
			}
			return exitOK
		}
	},
}

var proxyCmd = &command{
	name:     "proxy",
	synopsis: "[-config FILE] [-timeout DURATION] [-v] HOST PORT",
	summary:  "knock, then relay standard input and output to HOST:PORT (ssh's ProxyCommand)",
	help: `For ssh's ProxyCommand: knocks on HOST the way the client file says
(see nftknock help open), waits until HOST:PORT accepts a TCP connection
(trying again every few hundred milliseconds, for at most -timeout), then
relays standard input and output to it until the server closes it. With
several keys in the agent, it sends the next key's datagram only while
the port has not answered. In ~/.ssh/config:

    Host web1.example.org
        ProxyCommand nftknock proxy %h %p

Exit status: 0 the connection ended, 1 failed (the port did not accept in
time: the error says so), 2 usage error.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) int {
		f := addClientFileFlags(fs)
		return func(e *env, args []string) int {
			if len(args) != 2 || args[0] == "" {
				return usageErr(e, "proxy", "give HOST and PORT")
			}
			port, err := strconv.Atoi(args[1])
			switch {
			case err != nil || port < 1 || port > 65535:
				return usageErr(e, "proxy", "PORT %q is not a port number 1-65535", args[1])
			case f.timeout <= 0:
				return usageErr(e, "proxy", "-timeout must be positive")
			}
			p, err := f.plan(e, args[0])
			var c net.Conn
			if err == nil {
				c, err = knockAndConnect(context.Background(), e, f, p, port)
			}
			if err == nil {
				err = relay(c, e.input(), e.stdout)
				c.Close()
			}
			if err != nil {
				fmt.Fprintf(e.stderr, "nftknock proxy: %v\n", err)
				return exitFail
			}
			return exitOK
		}
	},
}

// knockAndConnect knocks as p says and, if port is not 0, waits until
// p.host:port accepts, returning the connection.
func knockAndConnect(ctx context.Context, e *env, f *clientFileFlags, p *knockPlan, port int) (net.Conn, error) {
	out := io.Discard
	if f.verbose {
		out = e.stderr // standard output is ssh's connection under proxy
	}
	addr, err := resolveHost(ctx, p.host, 0)
	if err != nil {
		return nil, err
	}
	if p.kind == kindKeySPA && p.knownHosts && port != 0 {
		q := *p
		q.sshPort = port // the known_hosts entry ssh itself uses
		p = &q
	}
	if port == 0 {
		return nil, p.knock(ctx, e, out, addr, nil)
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	w := &portWaiter{ctx: ctx, to: netip.AddrPortFrom(addr, uint16(port)), done: make(chan struct{})}
	if err := p.knock(ctx, e, out, addr, w.answered); err != nil {
		w.stop()
		return nil, err
	}
	c, err := w.wait()
	if err != nil {
		return nil, fmt.Errorf("%s did not accept a connection within %s of the knock (%v): the door did not open for you; nftknockd's log on the server says why", w.to, f.timeout, err)
	}
	return c, nil
}

// portWaiter connects to a port that a knock is opening: it begins at the
// first question (after the first knock) and tries again and again, each
// attempt with a short timeout, until one succeeds or ctx ends. A SYN sent
// while the door was still shut is dropped, and the kernel would resend it
// only a second later: a fresh attempt is quicker.
type portWaiter struct {
	ctx    context.Context
	to     netip.AddrPort
	once   sync.Once
	done   chan struct{}
	conn   net.Conn
	err    error
	cancel context.CancelFunc
}

func (w *portWaiter) start() {
	w.once.Do(func() {
		ctx, cancel := context.WithCancel(w.ctx)
		w.cancel = cancel
		go func() {
			w.conn, w.err = connectLoop(ctx, w.to)
			close(w.done)
		}()
	})
}

// answered reports whether the port accepted within wait.
func (w *portWaiter) answered(wait time.Duration) bool {
	w.start()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-w.done:
		return w.err == nil
	case <-t.C:
		return false
	}
}

// wait waits for the port to accept, or for the attempts to end.
func (w *portWaiter) wait() (net.Conn, error) {
	w.start()
	<-w.done
	return w.conn, w.err
}

// stop ends the attempts, closing a connection made.
func (w *portWaiter) stop() {
	w.start()
	w.cancel()
	<-w.done
	if w.conn != nil {
		w.conn.Close()
	}
}

// connectLoop connects to to, trying again until ctx ends: attempts of
// 250 ms growing to 1 s, and after a refusal (nothing listens yet) a
// pause of 100 ms.
func connectLoop(ctx context.Context, to netip.AddrPort) (net.Conn, error) {
	attempt := 250 * time.Millisecond
	var d net.Dialer
	for {
		actx, cancel := context.WithTimeout(ctx, attempt)
		c, err := d.DialContext(actx, "tcp", to.String())
		cancel()
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			t := time.NewTimer(100 * time.Millisecond)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, err
			case <-t.C:
			}
		}
		attempt = min(attempt*3/2, time.Second)
	}
}

// relay copies in to c and c to out until c's far end closes; the end of
// in is passed on as a half-close, as ssh expects of a ProxyCommand.
func relay(c net.Conn, in io.Reader, out io.Writer) error {
	go func() {
		_, _ = io.Copy(c, in)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	if _, err := io.Copy(out, c); err != nil {
		return fmt.Errorf("relay from %s: %w", c.RemoteAddr(), err)
	}
	return nil
}
