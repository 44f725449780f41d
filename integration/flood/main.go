// Command flood measures nftknockd under a flood of spoofed sources, in the
// namespace lab (nothing leaves it, the host's firewall is not touched):
// while `hping3 -S --flood --rand-source` hits the first knock port, it
// knocks with the stock knock client from the client's own address, a few
// times, and judges each knock open if a TCP connection to the opened
// port succeeds within 2 s; meanwhile it samples the daemon's resident
// memory every 100 ms. It prints what the flood sent, what reached the
// daemon, the daemon's peak RSS and how many legitimate knocks opened, and
// exits 1 when peak RSS reaches -max-rss-mb or fewer than -min-open
// knocks opened.
//
// Run it as root: `sudo make bench-flood` (the default config, then
// max_tracked = 1024).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nftknock/nftknock/integration/lab"
)

var (
	daemonBin  = flag.String("daemon", "bin/nftknockd", "nftknockd `binary` to run (a normal build, not -race)")
	maxTracked = flag.Int("max-tracked", 0, "max_tracked for the daemon (0: the default config's)")
	knocks     = flag.Int("knocks", 5, "legitimate knocks to make during the flood")
	warmup     = flag.Duration("warmup", 3*time.Second, "flood time before the first legitimate knock")
	gap        = flag.Duration("gap", 500*time.Millisecond, "pause between legitimate knocks")
	flooders   = flag.Int("flooders", 1, "hping3 processes flooding at once (one is about 60k packets/s here)")
	floodMax   = flag.Duration("flood-max", 90*time.Second, "the flood is stopped after this, whatever happens")
	floodFor   = flag.Duration("flood-for", 0, "flood for at least this long (the knocks come in its first seconds), to see memory stay flat")
	rate       = flag.Int("rate", 0, "packets a second each hping3 sends (0: as fast as it can, --flood)")
	openWithin = flag.Duration("open-within", 2*time.Second, "a knock counts as open if port 22 accepts a connection within this")
	maxRSSMB   = flag.Float64("max-rss-mb", 64, "fail if the daemon's peak RSS (VmHWM) reaches this many MiB")
	minOpen    = flag.Int("min-open", 4, "fail if fewer legitimate knocks open")
)

func main() {
	flag.Parse()
	os.Exit(run())
}

// The door under test: the default config's.
const door = `
[[door]]
name = "ssh"
sequence = ["7000:tcp", "8000:udp", "9000:tcp"]
seq_timeout = "10s"
open = ["22:tcp"]
open_for = "30s"
`

func run() int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "flood: needs root for network namespaces: run `sudo make bench-flood`")
		return 2
	}
	for _, tool := range append(lab.Tools, "hping3") {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Fprintf(os.Stderr, "flood: %s not found (Debian: apt-get install nftables iproute2 knockd hping3)\n", tool)
			return 2
		}
	}
	bin, err := filepath.Abs(*daemonBin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "flood:", err)
		return 2
	}
	// SIGINT/SIGTERM end the run through the same clean-up as any other.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := bench(ctx, bin)
	if res != nil {
		res.print(os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "flood:", err)
		return 1
	}
	var fails []string
	if mb := float64(res.peakHWM) / (1 << 20); mb >= *maxRSSMB {
		fails = append(fails, fmt.Sprintf("peak RSS %.1f MiB is not under %.0f MiB", mb, *maxRSSMB))
	}
	if res.opened < *minOpen {
		fails = append(fails, fmt.Sprintf("%d of %d legitimate knocks opened, want at least %d", res.opened, len(res.knocks), *minOpen))
	}
	if len(fails) > 0 {
		fmt.Println("FAIL:", strings.Join(fails, "; "))
		return 1
	}
	fmt.Println("PASS")
	return 0
}

type knockResult struct {
	opened bool
	after  time.Duration // knock client start → port 22 accepted
	err    error
}

type result struct {
	maxTracked       int
	floodFor         time.Duration
	flooders         int
	floodSent        int64 // hping3's own count; -1 if unknown
	toPort           int64 // packets to the first knock port the ruleset saw
	rateDropped      int64 // of those, dropped by the per-source rate limit
	logged           int64 // of those, logged to NFLOG by the door's rule
	knockingElements int   // sources in knock_first_v4 when the flood stopped
	rateElements     int   // sources in knock_rate_v4
	daemon           daemonCounts
	peakHWM, maxRSS  int64 // bytes
	rssTimeline      []int64
	knocks           []knockResult
	opened           int
	cpu              time.Duration // the daemon's CPU time (user+system) during the flood
}

func (r *result) print(w io.Writer) {
	mt := "65536 (default)"
	if r.maxTracked > 0 {
		mt = fmt.Sprint(r.maxTracked)
	}
	fmt.Fprintf(w, "\n== nftknockd under a random-source SYN flood on 7000/tcp (max_tracked %s)\n", mt)
	sent := "unknown"
	if r.floodSent >= 0 {
		sent = fmt.Sprintf("%d (%.0f/s)", r.floodSent, float64(r.floodSent)/r.floodFor.Seconds())
	}
	fmt.Fprintf(w, "flood: %s, %d hping3 sent %s packets\n", r.floodFor.Round(100*time.Millisecond), r.flooders, sent)
	fmt.Fprintf(w, "kernel, 7000/tcp: %d packets seen, %d dropped by the per-source rate limit, %d logged to NFLOG\n",
		r.toPort, r.rateDropped, r.logged)
	fmt.Fprintf(w, "kernel sets at the flood's end: knock_first_v4 %d sources, knock_rate_v4 %d sources\n", r.knockingElements, r.rateElements)
	dc := r.daemon
	fmt.Fprintf(w, "daemon: %d sources forgotten (max_tracked), %d knock timeouts logged; nflog_overruns %d, grants_dropped %d, unparsed %d\n",
		dc.evictions, dc.timeouts, dc.Overruns, dc.GrantsDropped, dc.Unparsed)
	var tl []string
	for _, b := range r.rssTimeline {
		tl = append(tl, fmt.Sprintf("%.1f", float64(b)/(1<<20)))
	}
	fmt.Fprintf(w, "daemon RSS: peak (VmHWM) %.1f MiB, highest VmRSS sampled %.1f MiB; VmRSS each second (MiB): %s\n",
		float64(r.peakHWM)/(1<<20), float64(r.maxRSS)/(1<<20), strings.Join(tl, " "))
	if r.logged > 0 {
		fmt.Fprintf(w, "daemon CPU during the flood: %s, %.2f µs per logged packet (%.0f%% of a core at %.0f packets/s)\n",
			r.cpu.Round(10*time.Millisecond), float64(r.cpu.Microseconds())/float64(r.logged),
			100*r.cpu.Seconds()/r.floodFor.Seconds(), float64(r.logged)/r.floodFor.Seconds())
	}
	for i, k := range r.knocks {
		switch {
		case k.opened:
			fmt.Fprintf(w, "legitimate knock %d: opened, port 22 connected %s after the knock started\n", i+1, k.after.Round(time.Millisecond))
		default:
			fmt.Fprintf(w, "legitimate knock %d: NOT opened: %v\n", i+1, k.err)
		}
	}
	fmt.Fprintf(w, "%d of %d legitimate knocks opened\n", r.opened, len(r.knocks))
}

func bench(ctx context.Context, bin string) (*result, error) {
	res := &result{maxTracked: *maxTracked, flooders: max(*flooders, 1), floodSent: -1}
	dir, err := os.MkdirTemp("", "nftknock-flood")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	// Not owned, so that the grant can be taken away with `nft flush
	// set` between legitimate knocks; ownership changes nothing on the
	// packet path.
	cfg := "own_table = false\n" + door
	if *maxTracked > 0 {
		cfg = fmt.Sprintf("max_tracked = %d\n", *maxTracked) + cfg
	}
	cfgPath := filepath.Join(dir, "nftknock.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}

	l, err := lab.New()
	if err != nil {
		return nil, err
	}
	defer l.Close()
	stopEcho, err := l.Echo(22)
	if err != nil {
		return nil, err
	}
	defer stopEcho()

	d, err := startDaemon(l, bin, cfgPath)
	if err != nil {
		return nil, err
	}
	defer d.kill()

	// Sample the daemon's memory every 100 ms until the end.
	sampler := lab.SampleMem(d.pid)
	defer sampler.Stop()

	// The flood, bounded in time; stopped (SIGINT, for its statistics,
	// then SIGKILL) on every way out of here.
	floodCtx, cancelFlood := context.WithTimeout(ctx, *floodMax)
	defer cancelFlood()
	var floods []*flood
	defer func() {
		for _, fl := range floods {
			fl.Stop()
		}
	}()
	for range max(*flooders, 1) {
		fl, err := startFlood(floodCtx, l)
		if err != nil {
			return nil, err
		}
		floods = append(floods, fl)
	}

	select {
	case <-time.After(*warmup):
	case <-floodCtx.Done():
		return res, fmt.Errorf("interrupted during the warm-up: %w", context.Cause(floodCtx))
	case <-floods[0].Done():
		return res, fmt.Errorf("hping3 ended by itself: %s", floods[0].output())
	}

	floodStart := time.Now()
	cpuStart, err := lab.CPUTime(d.pid)
	if err != nil {
		return nil, err
	}
	for i := range *knocks {
		if floodCtx.Err() != nil {
			return res, fmt.Errorf("flood time (%s) or the run ran out after %d knocks", *floodMax, i)
		}
		k := legitKnock(l)
		res.knocks = append(res.knocks, k)
		if k.opened {
			res.opened++
		}
		// Take the grant away, so that the next knock has to open anew.
		if _, err := lab.Run(l.Server, "nft", "flush", "set", "inet", "nftknock", "ssh_v4"); err != nil {
			return res, err
		}
		time.Sleep(*gap)
	}

	if rest := *floodFor - time.Since(floodStart); rest > 0 {
		select {
		case <-time.After(rest):
		case <-floodCtx.Done():
			return res, fmt.Errorf("the flood was cut short: %w", context.Cause(floodCtx))
		}
	}
	cpuEnd, err := lab.CPUTime(d.pid)
	if err != nil {
		return nil, err
	}
	res.cpu = cpuEnd - cpuStart

	res.floodSent = 0
	for _, fl := range floods {
		res.floodFor = max(res.floodFor, fl.Stop())
		n, out := fl.sent()
		if n < 0 {
			return res, fmt.Errorf("no statistics from hping3: %s", out)
		}
		res.floodSent += n
	}
	// What the kernel saw, and what it still holds.
	if err := kernelCounts(l, res); err != nil {
		return res, err
	}
	res.peakHWM, res.maxRSS = sampler.Stop()
	res.rssTimeline = sampler.Timeline()
	counts, err := d.stop()
	res.daemon = counts
	if err != nil {
		return res, err
	}
	return res, nil
}

// legitKnock knocks with the stock client from the client's own address
// and waits for port 22 to accept a connection.
func legitKnock(l *lab.Lab) knockResult {
	start := time.Now()
	if err := l.Knock(false, 0, "7000", "8000:udp", "9000"); err != nil {
		return knockResult{err: err}
	}
	at, err := l.WaitOpen(lab.ClientV4, netip.AddrPortFrom(lab.ServerV4, 22), *openWithin)
	if err != nil {
		return knockResult{err: err}
	}
	return knockResult{opened: true, after: at.Sub(start)}
}

var (
	ruleCounterRE = regexp.MustCompile(`counter packets (\d+) bytes`)
	elementsRE    = regexp.MustCompile(`expires`)
)

// kernelCounts reads the counters of the rules for 7000/tcp (the IPv4
// rate limit's drop, the door's log rule, the final drop; the flood is all
// IPv4) and the sizes of the dynamic sets.
func kernelCounts(l *lab.Lab, res *result) error {
	out, err := lab.Run(l.Server, "nft", "list", "chain", "inet", "nftknock", "input")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, "tcp dport 7000 ") {
			continue
		}
		m := ruleCounterRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		n, _ := strconv.ParseInt(m[1], 10, 64)
		switch {
		case strings.Contains(line, "@knock_rate_v4") && strings.Contains(line, " drop"):
			res.rateDropped = n
		case strings.Contains(line, "log prefix"):
			res.logged += n
		case strings.Contains(line, "filtered, like any closed port"):
			res.toPort += n
		}
	}
	res.toPort += res.rateDropped
	for _, set := range []struct {
		name string
		n    *int
	}{{"knock_first_v4", &res.knockingElements}, {"knock_rate_v4", &res.rateElements}} {
		out, err := lab.Run(l.Server, "nft", "list", "set", "inet", "nftknock", set.name)
		if err != nil {
			return err
		}
		*set.n = len(elementsRE.FindAllStringIndex(out, -1))
	}
	return nil
}

// flood is hping3 flooding 7000/tcp from random sources in the client.
type flood struct {
	*lab.Hping
	out *lockedBuffer
}

func startFlood(ctx context.Context, l *lab.Lab) (*flood, error) {
	pace := []string{"--flood"}
	if *rate > 0 {
		pace = []string{"-i", fmt.Sprintf("u%d", max(1, 1_000_000 / *rate))}
	}
	out := &lockedBuffer{}
	h, err := lab.StartHping(ctx, l.Client, out, append(append([]string{"-S"}, pace...), "--rand-source", "-p", "7000", lab.ServerV4.String())...)
	if err != nil {
		return nil, err
	}
	return &flood{Hping: h, out: out}, nil
}

func (f *flood) output() string { return f.out.String() }

var hpingSentRE = regexp.MustCompile(`(\d+) packets transmitted`)

// sent is hping3's count of packets sent, from its statistics.
func (f *flood) sent() (int64, string) {
	out := f.output()
	m := hpingSentRE.FindStringSubmatch(out)
	if m == nil {
		return -1, out
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n, out
}

// daemon is nftknockd run in the server namespace, its log read as it
// comes: under a flood it logs a line per knock, far too much to keep.
type daemon struct {
	cmd     *exec.Cmd
	pid     int
	done    chan struct{}
	mu      sync.Mutex
	counts  daemonCounts
	tail    []string // the last lines, for errors
	started chan struct{}
}

// daemonCounts is what the daemon's log says.
type daemonCounts struct {
	steps, evictions, timeouts int64
	// From its stop line.
	Overruns      int64 `json:"nflog_overruns"`
	GrantsDropped int64 `json:"grants_dropped"`
	Unparsed      int64 `json:"unparsed_packets"`
	stopped       bool
}

func startDaemon(l *lab.Lab, bin, cfg string) (*daemon, error) {
	d := &daemon{done: make(chan struct{}), started: make(chan struct{})}
	d.cmd = lab.Command(context.Background(), l.Server, bin, "-config", cfg)
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	d.cmd.Stdout = io.Discard
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	d.pid = d.cmd.Process.Pid // ip netns exec execs the daemon
	go func() {
		d.read(stderr)
		d.cmd.Wait()
		close(d.done)
	}()
	select {
	case <-d.started:
		return d, nil
	case <-d.done:
		return nil, fmt.Errorf("nftknockd exited at start:\n%s", d.lastLines())
	case <-time.After(20 * time.Second):
		d.kill()
		return nil, fmt.Errorf("nftknockd did not start within 20s:\n%s", d.lastLines())
	}
}

func (d *daemon) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	startedOnce := sync.OnceFunc(func() { close(d.started) })
	for sc.Scan() {
		line := sc.Text()
		d.mu.Lock()
		switch {
		case strings.Contains(line, "sources forgotten"):
			// One line per sweep, with how many were forgotten.
			var f struct {
				Forgotten int `json:"forgotten"`
			}
			if i := strings.IndexByte(line, '{'); i >= 0 && json.Unmarshal([]byte(line[i:]), &f) == nil {
				d.counts.evictions += int64(f.Forgotten)
			}
		case strings.Contains(line, "knock timed out"):
			d.counts.timeouts++
		case strings.Contains(line, "nftknockd stopping"):
			if i := strings.IndexByte(line, '{'); i >= 0 {
				json.Unmarshal([]byte(line[i:]), &d.counts)
			}
			d.counts.stopped = true
		}
		if len(d.tail) == 20 {
			d.tail = d.tail[1:]
		}
		d.tail = append(d.tail, line)
		d.mu.Unlock()
		if strings.Contains(line, "nftknockd started") {
			startedOnce()
		}
	}
	io.Copy(io.Discard, r)
}

func (d *daemon) lastLines() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return strings.Join(d.tail, "\n")
}

// stop sends SIGTERM and returns the counts its log gave.
func (d *daemon) stop() (daemonCounts, error) {
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
		d.kill()
		return d.snapshot(), fmt.Errorf("nftknockd did not exit within 15s of SIGTERM:\n%s", d.lastLines())
	}
	c := d.snapshot()
	if !c.stopped || !d.cmd.ProcessState.Success() {
		return c, fmt.Errorf("nftknockd did not stop cleanly (%v):\n%s", d.cmd.ProcessState, d.lastLines())
	}
	return c, nil
}

func (d *daemon) snapshot() daemonCounts {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.counts
}

func (d *daemon) kill() {
	select {
	case <-d.done:
	default:
		d.cmd.Process.Kill()
		<-d.done
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.b.Len() > 1<<20 {
		return len(p), nil // hping3 says little; never hold more than this
	}
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
