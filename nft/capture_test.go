package nft

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
)

// A netlink capture is what nf_tables answered to a program's dump
// requests, kept in testdata so that a unit test can replay a real
// ruleset (Docker's, as dockerd wrote it) without root, through the same
// library code that reads the kernel. The text format, one message a line:
//
//	> TYPE FLAGS DATA   a request (hex: header type and flags, payload)
//	< TYPE FLAGS DATA   a message of its answer, Done left out
//	! ERRNO             the answer was this error
//
// and # comments.
type netlinkCapture struct {
	exchanges []capturedExchange
}

type capturedExchange struct {
	req     netlink.Message
	replies []netlink.Message
	errno   syscall.Errno
}

func requestKey(m netlink.Message) string {
	return fmt.Sprintf("%04x %04x %x", uint16(m.Header.Type), uint16(m.Header.Flags), m.Data)
}

// recorder answers each request through real (a socket into the kernel)
// and records the exchange.
func (c *netlinkCapture) recorder(real *netlink.Conn) nltest.Func {
	return func(req []netlink.Message) ([]netlink.Message, error) {
		if len(req) != 1 || req[0].Header.Flags&netlink.Dump == 0 {
			return nil, fmt.Errorf("capture: only one dump request at a time is recorded, got %d messages", len(req))
		}
		q := req[0]
		ex := capturedExchange{req: netlink.Message{Header: netlink.Header{Type: q.Header.Type, Flags: q.Header.Flags}, Data: bytes.Clone(q.Data)}}
		replies, err := real.Execute(ex.req)
		var errno syscall.Errno
		switch {
		case errors.As(err, &errno):
			ex.errno = errno
		case err != nil:
			return nil, err
		}
		for _, m := range replies {
			ex.replies = append(ex.replies, netlink.Message{Header: netlink.Header{Type: m.Header.Type, Flags: m.Header.Flags}, Data: bytes.Clone(m.Data)})
		}
		c.exchanges = append(c.exchanges, ex)
		return answer(q, ex)
	}
}

// replayer answers requests from the capture: a request it does not hold
// is an error (the code asks something the capture was not made with).
func (c *netlinkCapture) replayer() nltest.Func {
	byKey := map[string]capturedExchange{}
	for _, ex := range c.exchanges {
		byKey[requestKey(ex.req)] = ex
	}
	return func(req []netlink.Message) ([]netlink.Message, error) {
		if len(req) != 1 {
			return nil, fmt.Errorf("replay: %d messages sent at once, want one dump request", len(req))
		}
		ex, ok := byKey[requestKey(req[0])]
		if !ok {
			return nil, fmt.Errorf("replay: request %s is not in the capture (record it again with -update)", requestKey(req[0]))
		}
		return answer(req[0], ex)
	}
}

// answer is an exchange's answer to q: its messages and a Done, as one
// multi-part reply with q's sequence number and port, or its error.
func answer(q netlink.Message, ex capturedExchange) ([]netlink.Message, error) {
	if ex.errno != 0 {
		return nltest.Error(int(ex.errno), []netlink.Message{q})
	}
	msgs := make([]netlink.Message, 0, len(ex.replies)+1)
	for _, m := range ex.replies {
		m.Data = bytes.Clone(m.Data)
		msgs = append(msgs, m)
	}
	msgs = append(msgs, netlink.Message{Header: netlink.Header{Type: netlink.Done}, Data: make([]byte, 4)})
	for i := range msgs {
		msgs[i].Header.Flags |= netlink.Multi
		msgs[i].Header.Sequence = q.Header.Sequence
		msgs[i].Header.PID = q.Header.PID
	}
	return msgs, nil
}

func (c *netlinkCapture) write(path, comment string) error {
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimSpace(comment), "\n") {
		b.WriteString("# " + line + "\n")
	}
	msg := func(dir byte, m netlink.Message) {
		fmt.Fprintf(&b, "%c %04x %04x %x\n", dir, uint16(m.Header.Type), uint16(m.Header.Flags), m.Data)
	}
	for _, ex := range c.exchanges {
		msg('>', ex.req)
		for _, m := range ex.replies {
			msg('<', m)
		}
		if ex.errno != 0 {
			fmt.Fprintf(&b, "! %d\n", int(ex.errno))
		}
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func readCapture(tb testing.TB, path string) *netlinkCapture {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatalf("%v (record it with go test ./nft -run Kernel -update, as root)", err)
	}
	defer f.Close()
	c := &netlinkCapture{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		fail := func(err error) { tb.Fatalf("%s:%d: %v", path, n, err) }
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		switch {
		case f[0] == "!" && len(f) == 2 && len(c.exchanges) > 0:
			errno, err := strconv.Atoi(f[1])
			if err != nil {
				fail(err)
			}
			c.exchanges[len(c.exchanges)-1].errno = syscall.Errno(errno)
		case (f[0] == ">" || f[0] == "<") && (len(f) == 4 || len(f) == 3):
			typ, err1 := strconv.ParseUint(f[1], 16, 16)
			flags, err2 := strconv.ParseUint(f[2], 16, 16)
			var data []byte
			var err3 error
			if len(f) == 4 {
				data, err3 = hex.DecodeString(f[3])
			}
			if err := errors.Join(err1, err2, err3); err != nil {
				fail(err)
			}
			m := netlink.Message{Header: netlink.Header{Type: netlink.HeaderType(typ), Flags: netlink.HeaderFlags(flags)}, Data: data}
			if f[0] == ">" {
				c.exchanges = append(c.exchanges, capturedExchange{req: m})
			} else if len(c.exchanges) > 0 {
				last := &c.exchanges[len(c.exchanges)-1]
				last.replies = append(last.replies, m)
			} else {
				fail(errors.New("an answer before any request"))
			}
		default:
			fail(fmt.Errorf("cannot read %q", line))
		}
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	return c
}
