package control

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// serve runs a Server for a table of the test's own (abstract sockets need
// no privilege) until the test ends, and returns the requests it saw.
func serve(t *testing.T, handle func(context.Context, Request) error) (table string, seen func() []Request) {
	t.Helper()
	table = fmt.Sprintf("test%d_%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "_"))
	s, err := Listen(table)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []Request
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.Serve(ctx, func(ctx context.Context, r Request) error {
			mu.Lock()
			got = append(got, r)
			mu.Unlock()
			return handle(ctx, r)
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return table, func() []Request {
		mu.Lock()
		defer mu.Unlock()
		return append([]Request(nil), got...)
	}
}

func TestAskIsAnswered(t *testing.T) {
	table, seen := serve(t, func(_ context.Context, r Request) error {
		if r.Door != "ssh" {
			return fmt.Errorf("no door %q", r.Door)
		}
		return nil
	})
	want := Request{Op: "grant", Door: "ssh", Addr: "192.0.2.1", Port: "22:tcp", ForMS: 3600000}
	if resp, err := Ask(table, want); err != nil || resp.Error != "" {
		t.Fatalf("Ask: %+v, %v", resp, err)
	}
	if resp, err := Ask(table, Request{Op: "revoke", Door: "web", Addr: "::1"}); err != nil || resp.Error != `no door "web"` {
		t.Errorf("Ask of a refused request: %+v, %v", resp, err)
	}
	if got := seen(); len(got) != 2 || got[0] != want {
		t.Errorf("the server saw %+v, want %+v first", got, want)
	}
	// A second server for the same table in this namespace is refused.
	if _, err := Listen(table); err == nil || !strings.Contains(err.Error(), "another nftknockd") {
		t.Errorf("second Listen: %v", err)
	}
}

func TestAskWithoutDaemon(t *testing.T) {
	if _, err := Ask(fmt.Sprintf("absent%d", os.Getpid()), Request{Op: "grant"}); !errors.Is(err, ErrNoDaemon) {
		t.Errorf("Ask with no server: %v, want ErrNoDaemon", err)
	}
}

// TestServeRefusesJunk: what is no request gets an error, and the server
// goes on answering.
func TestServeRefusesJunk(t *testing.T) {
	table, seen := serve(t, func(context.Context, Request) error { return nil })
	for _, junk := range [][]byte{[]byte("{"), []byte("\x00\xff"), make([]byte, 3*maxMessage)} {
		c, err := net.Dial("unixpacket", Name(table))
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(junk); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, maxMessage)
		n, err := c.Read(buf)
		c.Close()
		if err != nil || !strings.Contains(string(buf[:n]), "request:") {
			t.Errorf("answer to %d bytes of junk: %q, %v", len(junk), buf[:n], err)
		}
	}
	if resp, err := Ask(table, Request{Op: "grant", Door: "ssh"}); err != nil || resp.Error != "" {
		t.Errorf("Ask after junk: %+v, %v", resp, err)
	}
	if got := seen(); len(got) != 1 {
		t.Errorf("handled %d requests, want the one real one", len(got))
	}
}

// TestServeAnswersRootAlone: a client whose uid is not 0 is refused, and
// its request is never handled. (Its thread alone changes uid: the raw setresuid
// does not go to the process's other threads, and the thread is never
// unlocked, so it ends with its goroutine.)
func TestServeAnswersRootAlone(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (to ask as another uid)")
		}
		t.Skip("needs root (to ask as another uid)")
	}
	table, seen := serve(t, func(context.Context, Request) error { return nil })
	type result struct {
		resp Response
		err  error
	}
	res := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, 65534, 65534, 65534); e != 0 {
			res <- result{err: e}
			return
		}
		resp, err := Ask(table, Request{Op: "grant", Door: "ssh", Addr: "192.0.2.1", ForMS: 1000})
		res <- result{resp, err}
	}()
	r := <-res
	if r.err != nil || !strings.Contains(r.resp.Error, "only root") {
		t.Errorf("Ask as uid 65534: %+v, %v", r.resp, r.err)
	}
	if got := seen(); len(got) != 0 {
		t.Errorf("the handler ran for a non-root client: %+v", got)
	}
}
