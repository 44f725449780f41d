// Command fwknopcmp measures nftknockd's fwknop door beside fwknopd
// 2.6.10 itself (Debian's fwknop-server), each in a namespace lab of its
// own (nothing leaves it; the host's firewall is not touched), with the
// same stock client (Debian's fwknop-client) and the same measurements:
//
//   - SPA-to-open latency: the stock client builds a packet (-T -B), the
//     program sends it from the client namespace and spins on fresh TCP
//     connects to port 22 until one completes; p50 and p90 over -samples
//     packets, each from an address of its own (so that no earlier grant
//     is open). The servers run at once, each in its lab, and take their
//     packets in turn, so that whatever else the machine does weighs on
//     all alike. They run on CPU 1, this program on CPU 0.
//   - a flood, one server at a time: `hping3 --udp --flood --rand-source
//     -p 62201` at the server while -legit packets of the stock client are sent, each
//     counted opened if port 22 accepts a connection within -open-within;
//     then, once the flood stops, how long until a packet opens again;
//     and how many lines the server logged per flood packet.
//   - peak RSS (VmHWM) of the server process over the whole run.
//
// The servers: nftknockd with the door `nftknock migrate -fwknop` makes of
// the access.conf; fwknopd with that access.conf, its stock fwknopd.conf
// (libpcap on the interface, the iptables backend: iptables-nft in the
// server namespace, behind a `tcp dport 22 drop` rule); and fwknopd with
// ENABLE_UDP_SERVER Y (a UDP socket instead of libpcap).
//
// Run it as root: `sudo make bench-fwknop`. It exits 1 if nftknockd does
// not beat each fwknopd on latency (p50 and p90), on packets opened under
// the flood and on recovery, or if its peak RSS reaches -max-rss-mb.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/integration/lab"
)

var (
	daemonBin   = flag.String("daemon", "bin/nftknockd", "nftknockd `binary` to run (a normal build, not -race)")
	toolBin     = flag.String("nftknock", "bin/nftknock", "nftknock `binary`, for migrate -fwknop")
	samples     = flag.Int("samples", 50, "SPA packets whose latency is measured, per server")
	legit       = flag.Int("legit", 5, "legitimate SPA packets sent during the flood")
	warmup      = flag.Duration("warmup", 3*time.Second, "flood time before the first legitimate packet")
	gap         = flag.Duration("gap", 500*time.Millisecond, "pause between legitimate packets")
	openWithin  = flag.Duration("open-within", 2*time.Second, "a packet counts as opened if port 22 accepts a connection within this")
	recoverMax  = flag.Duration("recover-max", 30*time.Second, "give up waiting for a server to open again after the flood after this")
	servers     = flag.String("servers", "nftknockd,fwknopd,fwknopd-udp", "comma-separated servers to measure")
	maxRSSMB    = flag.Float64("max-rss-mb", 32, "fail if nftknockd's peak RSS reaches this many MiB")
	serverCPU   = flag.String("server-cpu", "1", "CPU list the server runs on (taskset -c); this program runs on CPU 0")
	floodRunFor = flag.Duration("flood-max", 90*time.Second, "the flood is stopped after this, whatever happens")
	floodData   = flag.Int("flood-data", 0, "bytes of payload in each flood packet (hping3 -d; 0: none, the issue's flood)")
)

func main() {
	flag.Parse()
	os.Exit(run())
}

func run() int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "fwknopcmp: needs root for network namespaces: run `sudo make bench-fwknop`")
		return 2
	}
	for _, tool := range []string{"ip", "nft", "fwknop", "fwknopd", "iptables", "hping3", "taskset"} {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Fprintf(os.Stderr, "fwknopcmp: %s not found (Debian: apt-get install nftables iproute2 fwknop-client fwknop-server iptables hping3 util-linux)\n", tool)
			return 2
		}
	}
	if err := lab.PinProcess(0); err != nil {
		fmt.Fprintln(os.Stderr, "fwknopcmp:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var names []string
	for _, n := range strings.Split(*servers, ",") {
		names = append(names, strings.TrimSpace(n))
	}
	load := loadAvg()
	results, err := measureAll(ctx, names)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fwknopcmp:", err)
		return 1
	}
	for _, r := range results {
		r.print(os.Stdout)
	}
	fmt.Printf("\nload average before: %s; after: %s\n", load, loadAvg())
	printTable(os.Stdout, results)
	if fails := judge(results); len(fails) > 0 {
		fmt.Println("FAIL:", strings.Join(fails, "; "))
		return 1
	}
	fmt.Println("PASS")
	return 0
}

// loadAvg is the machine's load average (1, 5, 15 minutes): what else
// ran while the figures were taken.
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// result is what one server did.
type result struct {
	server        string
	latencies     []time.Duration
	p50, p90      time.Duration
	missed        int // latency packets that did not open within open-within
	floodFor      time.Duration
	floodSent     int64
	opened        int
	legitAfter    []time.Duration // per opened legitimate packet
	recovery      time.Duration   // flood stop → a packet opens; -1: not within recover-max
	recoveryTries int             // packets sent after the flood until one opened
	floodLines    int64           // lines the server logged during the flood
	peakHWM       int64
	notes         []string
	nflogged      int64 // nftknockd: flood packets the kernel logged to NFLOG
	rateDropped   int64 // nftknockd: dropped by the per-source rate limit
	nflogOverrun  int64
}

func (r *result) print(w io.Writer) {
	fmt.Fprintf(w, "\n== %s\n", r.server)
	fmt.Fprintf(w, "SPA → open: p50 %s, p90 %s over %d packets (%d did not open within %s)\n",
		r.p50.Round(10*time.Microsecond), r.p90.Round(10*time.Microsecond), len(r.latencies), r.missed, *openWithin)
	var all []string
	for _, d := range r.latencies {
		all = append(all, round(d))
	}
	fmt.Fprintf(w, "each, in order: %s\n", strings.Join(all, " "))
	rate := ""
	if r.floodFor > 0 && r.floodSent > 0 {
		rate = fmt.Sprintf(" (%.0f/s)", float64(r.floodSent)/r.floodFor.Seconds())
	}
	fmt.Fprintf(w, "flood: %s, hping3 sent %d packets%s; %d lines logged (%.2f per flood packet)\n",
		r.floodFor.Round(100*time.Millisecond), r.floodSent, rate, r.floodLines, perPacket(r.floodLines, r.floodSent))
	if r.nflogged > 0 || r.rateDropped > 0 {
		fmt.Fprintf(w, "kernel, 62201/udp: %d dropped by the per-source rate limit, %d logged to NFLOG; daemon NFLOG overruns %d\n",
			r.rateDropped, r.nflogged, r.nflogOverrun)
	}
	var after []string
	for _, d := range r.legitAfter {
		after = append(after, d.Round(100*time.Microsecond).String())
	}
	fmt.Fprintf(w, "legitimate packets opened under the flood: %d of %d (%s)\n", r.opened, *legit, strings.Join(after, ", "))
	if r.recovery < 0 {
		fmt.Fprintf(w, "after the flood: no packet opened within %s\n", *recoverMax)
	} else {
		fmt.Fprintf(w, "after the flood: a packet opened %s after it stopped (packet %d sent after it)\n", r.recovery.Round(time.Millisecond), r.recoveryTries)
	}
	fmt.Fprintf(w, "peak RSS (VmHWM): %.1f MiB\n", float64(r.peakHWM)/(1<<20))
	for _, n := range r.notes {
		fmt.Fprintln(w, "note:", n)
	}
}

func perPacket(n, of int64) float64 {
	if of <= 0 {
		return 0
	}
	return float64(n) / float64(of)
}

func printTable(w io.Writer, rs []*result) {
	fmt.Fprintln(w, "\n| server | SPA → open p50 | p90 | opened of "+strconv.Itoa(*legit)+" under the flood | open again after the flood | log lines per flood packet | peak RSS |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- |")
	for _, r := range rs {
		rec := "not within " + recoverMax.String()
		if r.recovery >= 0 {
			rec = r.recovery.Round(time.Millisecond).String()
		}
		fmt.Fprintf(w, "| %s | %s | %s | %d | %s | %.2f | %.1f MiB |\n", r.server, round(r.p50), round(r.p90), r.opened, rec,
			perPacket(r.floodLines, r.floodSent), float64(r.peakHWM)/(1<<20))
	}
}

func round(d time.Duration) string {
	if d < time.Millisecond {
		return d.Round(time.Microsecond).String()
	}
	return d.Round(100 * time.Microsecond).String()
}

// judge checks that nftknockd beats each fwknopd measured: latency, the
// flood, recovery; and its own RSS bound.
func judge(rs []*result) []string {
	i := slices.IndexFunc(rs, func(r *result) bool { return r.server == "nftknockd" })
	if i < 0 {
		return nil
	}
	n := rs[i]
	var fails []string
	if mb := float64(n.peakHWM) / (1 << 20); mb >= *maxRSSMB {
		fails = append(fails, fmt.Sprintf("nftknockd's peak RSS %.1f MiB is not under %.0f MiB", mb, *maxRSSMB))
	}
	if n.missed > 0 {
		fails = append(fails, fmt.Sprintf("nftknockd missed %d latency packets", n.missed))
	}
	for _, o := range rs {
		if o == n {
			continue
		}
		if n.p50 >= o.p50 || n.p90 >= o.p90 {
			fails = append(fails, fmt.Sprintf("latency: nftknockd p50 %s p90 %s, %s p50 %s p90 %s", n.p50, n.p90, o.server, o.p50, o.p90))
		}
		if n.opened < *legit && n.opened <= o.opened {
			fails = append(fails, fmt.Sprintf("under the flood: nftknockd opened %d, %s %d", n.opened, o.server, o.opened))
		}
		// The first packet after the flood opening is as soon as it gets:
		// its own latency.
		if n.recovery < 0 || (n.recoveryTries > 1 && o.recovery >= 0 && n.recovery > o.recovery) {
			fails = append(fails, fmt.Sprintf("after the flood: nftknockd opened again after %s, %s after %s", n.recovery, o.server, o.recovery))
		}
	}
	return fails
}

// keysA are the stanza's keys, made once by the stock client.
var (
	keysOnce sync.Once
	keysA    lab.FwknopKeys
	keysErr  error
)

const accessConf = `SOURCE                  ANY
OPEN_PORTS              tcp/22
KEY_BASE64              %s
HMAC_KEY_BASE64         %s
FW_ACCESS_TIMEOUT       30
`

// clientAddrs are the client's sources: one a packet, never reused within
// a run, so no packet finds port 22 open already.
func clientAddrs() []netip.Addr {
	var as []netip.Addr
	for i := 20; i < 250; i++ {
		as = append(as, netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}))
	}
	return as
}

// bench is one server in a lab of its own, and what it measured.
type bench struct {
	res   *result
	l     *lab.Lab
	srv   server
	mem   *lab.MemSampler
	home  string
	addrs []netip.Addr
	next  int
	close []func()
}

func (b *bench) cleanup() {
	for i := len(b.close) - 1; i >= 0; i-- {
		b.close[i]()
	}
}

// packet has the stock client build an access request for tcp/22 for the
// next client address, from which it is then sent.
func (b *bench) packet() (netip.Addr, []byte, error) {
	if b.next == len(b.addrs) {
		return netip.Addr{}, nil, errors.New("out of client addresses")
	}
	a := b.addrs[b.next]
	b.next++
	p, err := b.l.FwknopPacket(b.home, append([]string{"-A", "tcp/22", "-a", a.String(), "-D", lab.ServerV4.String()}, keysA.Args()...)...)
	return a, p, err
}

// setUp makes the lab of server name and starts it.
func setUp(name, dir string) (*bench, error) {
	b := &bench{res: &result{server: name, recovery: -1}, addrs: clientAddrs()}
	b.home = filepath.Join(dir, "home")
	if err := os.Mkdir(b.home, 0o700); err != nil {
		return nil, err
	}
	keysOnce.Do(func() { keysA, keysErr = lab.FwknopKeyGen(b.home) })
	if keysErr != nil {
		return nil, keysErr
	}
	access := filepath.Join(dir, "access.conf")
	if err := os.WriteFile(access, []byte(fmt.Sprintf(accessConf, keysA.Enc, keysA.HMAC)), 0o600); err != nil {
		return nil, err
	}
	l, err := lab.New()
	if err != nil {
		return nil, err
	}
	b.l = l
	b.close = append(b.close, func() { l.Close() })
	stopEcho, err := l.Echo(22)
	if err != nil {
		b.cleanup()
		return nil, err
	}
	b.close = append(b.close, stopEcho)
	var batch strings.Builder
	for _, a := range b.addrs {
		fmt.Fprintf(&batch, "addr add %s/24 dev %s\n", a, l.ClientLink())
	}
	cmd := exec.Command("ip", "-n", l.Client, "-batch", "-")
	cmd.Stdin = strings.NewReader(batch.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		b.cleanup()
		return nil, fmt.Errorf("client addresses: %v: %s", err, out)
	}
	switch name {
	case "nftknockd":
		b.srv, err = startNftknockd(l, dir, access)
	case "fwknopd":
		b.srv, err = startFwknopd(l, dir, access, false)
	case "fwknopd-udp":
		b.srv, err = startFwknopd(l, dir, access, true)
	default:
		err = fmt.Errorf("no server %q (nftknockd, fwknopd, fwknopd-udp)", name)
	}
	if err != nil {
		b.cleanup()
		return nil, err
	}
	b.close = append(b.close, func() { b.srv.stop() })
	b.mem = lab.SampleMem(b.srv.pid())
	b.close = append(b.close, func() { b.mem.Stop() })
	return b, nil
}

// measureAll measures the servers: the latency of each in turn, packet by
// packet, so that whatever else the machine does meanwhile weighs on all
// alike; then the flood, one server at a time.
func measureAll(ctx context.Context, names []string) ([]*result, error) {
	var benches []*bench
	defer func() {
		for _, b := range benches {
			b.cleanup()
		}
	}()
	for _, name := range names {
		dir, err := os.MkdirTemp("", "nftknock-fwknopcmp")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		b, err := setUp(name, dir)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		benches = append(benches, b)
	}
	// fwknop's timestamps are whole seconds, and nftknockd refuses a
	// packet from before its start: begin in the next second.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(1100 * time.Millisecond)))

	for range *samples {
		for _, b := range benches {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			a, p, err := b.packet()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", b.res.server, err)
			}
			d, err := sendAndConnect(b.l, a, p, *openWithin)
			if err != nil {
				b.res.missed++
				continue
			}
			b.res.latencies = append(b.res.latencies, d)
		}
	}
	var results []*result
	for _, b := range benches {
		if len(b.res.latencies) == 0 {
			return nil, fmt.Errorf("%s: no packet opened port 22", b.res.server)
		}
		b.res.p50, b.res.p90 = percentiles(b.res.latencies)
		if err := b.flood(ctx); err != nil {
			return nil, fmt.Errorf("%s: %w", b.res.server, err)
		}
		results = append(results, b.res)
	}
	return results, nil
}

// flood floods the server's port while legitimate packets are sent, then
// sees how soon a packet opens once it stops; it ends the server, for its
// peak RSS and counts.
func (b *bench) flood(ctx context.Context) error {
	res := b.res
	// Packets are built before the flood: the client would compete with
	// it for the CPU, and their timestamps stay fresh.
	type built struct {
		a netip.Addr
		p []byte
	}
	var pkts []built
	for range *legit + int(*recoverMax / *gap) + 1 {
		a, p, err := b.packet()
		if err != nil {
			return err
		}
		pkts = append(pkts, built{a, p})
	}
	floodCtx, cancel := context.WithTimeout(ctx, *floodRunFor)
	defer cancel()
	fl, err := startFlood(floodCtx, b.l)
	if err != nil {
		return err
	}
	defer fl.Stop()
	linesBefore := b.srv.lines()
	select {
	case <-time.After(*warmup):
	case <-fl.Done():
		return fmt.Errorf("hping3 ended by itself: %s", fl.out.tail())
	case <-floodCtx.Done():
		return floodCtx.Err()
	}
	for i := range *legit {
		d, err := sendAndConnect(b.l, pkts[i].a, pkts[i].p, *openWithin)
		if err == nil {
			res.opened++
			res.legitAfter = append(res.legitAfter, d)
		}
		time.Sleep(*gap)
	}
	res.floodFor = fl.Stop()
	stopped := time.Now()
	res.floodLines = b.srv.lines() - linesBefore
	res.floodSent = fl.sent()
	if res.floodSent < 0 {
		res.notes = append(res.notes, "hping3 printed no statistics: "+fl.out.tail())
	}
	for _, p := range pkts[*legit:] {
		if time.Since(stopped) > *recoverMax {
			break
		}
		res.recoveryTries++
		if _, err := sendAndConnect(b.l, p.a, p.p, *gap); err == nil {
			res.recovery = time.Since(stopped)
			break
		}
	}
	if n, ok := b.srv.(*nftknockd); ok {
		res.rateDropped, res.nflogged = n.kernelCounts(b.l)
	}
	res.peakHWM, _ = b.mem.Stop()
	if err := b.srv.stop(); err != nil {
		res.notes = append(res.notes, err.Error())
	}
	if n, ok := b.srv.(*nftknockd); ok {
		res.nflogOverrun = n.overruns()
	}
	return nil
}

// server is a server under measurement.
type server interface {
	pid() int
	// lines is how many lines it has logged.
	lines() int64
	stop() error
}

// nftknockd runs the door `nftknock migrate -fwknop` makes of access.conf.
type nftknockd struct {
	d       *lab.Daemon
	stopped bool
	err     error
}

func startNftknockd(l *lab.Lab, dir, access string) (*nftknockd, error) {
	tool, err := filepath.Abs(*toolBin)
	if err != nil {
		return nil, err
	}
	bin, err := filepath.Abs(*daemonBin)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(tool, "migrate", "-fwknop", access, "-keys-dir", filepath.Join(dir, "keys"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("nftknock migrate -fwknop: %v: %s", err, stderr.String())
	}
	cfg := filepath.Join(dir, "nftknock.toml")
	if err := os.WriteFile(cfg, out, 0o600); err != nil {
		return nil, err
	}
	d, err := l.Start(lab.DaemonOptions{Bin: bin, Config: cfg, CPUs: *serverCPU})
	if err != nil {
		return nil, err
	}
	return &nftknockd{d: d}, nil
}

func (n *nftknockd) pid() int     { return n.d.Pid() }
func (n *nftknockd) lines() int64 { return int64(strings.Count(n.d.Log(), "\n")) }
func (n *nftknockd) stop() error {
	if !n.stopped {
		n.stopped = true
		n.err = n.d.Stop()
	}
	return n.err
}

var overrunRE = regexp.MustCompile(`"nflog_overruns": (\d+)`)

// overruns is the NFLOG overruns its stop line counted.
func (n *nftknockd) overruns() int64 {
	m := overrunRE.FindAllStringSubmatch(n.d.Log(), -1)
	if len(m) == 0 {
		return 0
	}
	v, _ := strconv.ParseInt(m[len(m)-1][1], 10, 64)
	return v
}

var counterRE = regexp.MustCompile(`counter packets (\d+) bytes`)

// kernelCounts reads the IPv4 rate limit's drops and the log rule's count
// on 62201/udp.
func (n *nftknockd) kernelCounts(l *lab.Lab) (rateDropped, logged int64) {
	out, err := lab.Run(l.Server, "nft", "list", "chain", "inet", "nftknock", "input")
	if err != nil {
		return -1, -1
	}
	for _, line := range strings.Split(out, "\n") {
		m := counterRE.FindStringSubmatch(line)
		if m == nil || !strings.Contains(line, "udp dport 62201 ") {
			continue
		}
		v, _ := strconv.ParseInt(m[1], 10, 64)
		switch {
		case strings.Contains(line, "@knock_rate_v4"):
			rateDropped = v
		case strings.Contains(line, "log prefix"):
			logged = v
		}
	}
	return rateDropped, logged
}

// fwknopd runs fwknopd 2.6.10 with its stock settings but for the
// interface and its run directory; udp: ENABLE_UDP_SERVER Y.
type fwknopd struct {
	cmd     *exec.Cmd
	out     *lineCounter
	done    chan struct{}
	stopped bool
}

func startFwknopd(l *lab.Lab, dir, access string, udp bool) (*fwknopd, error) {
	// Port 22 closed to all but what fwknopd lets in: its jump to
	// FWKNOP_INPUT goes first in INPUT.
	if _, err := lab.Run(l.Server, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "DROP"); err != nil {
		return nil, err
	}
	run := filepath.Join(dir, "run")
	if err := os.Mkdir(run, 0o700); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf("PCAP_INTF %s;\nFWKNOP_RUN_DIR %s;\n", l.ServerLink(), run)
	if udp {
		conf += "ENABLE_UDP_SERVER Y;\n"
	}
	confPath := filepath.Join(dir, "fwknopd.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	// What it logs once it takes packets: the pcap loop's start, or the
	// UDP server's.
	ready := "Starting fwknopd main event loop"
	if udp {
		ready = "Kicking off UDP server"
	}
	f := &fwknopd{out: newLineCounter(ready), done: make(chan struct{})}
	f.cmd = lab.Command(context.Background(), l.Server, "taskset", "-c", *serverCPU,
		"fwknopd", "-f", "-c", confPath, "-a", access, "-p", filepath.Join(run, "fwknopd.pid"))
	f.cmd.Stdout, f.cmd.Stderr = f.out, f.out
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := f.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { f.cmd.Wait(); close(f.done) }()
	select {
	case <-f.out.found:
	case <-f.done:
		return nil, fmt.Errorf("fwknopd exited at start:\n%s", f.out.tail())
	case <-time.After(20 * time.Second):
		f.stop()
		return nil, fmt.Errorf("fwknopd did not start within 20s:\n%s", f.out.tail())
	}
	return f, nil
}

// pid is fwknopd's: ip execs taskset, which execs fwknopd.
func (f *fwknopd) pid() int     { return f.cmd.Process.Pid }
func (f *fwknopd) lines() int64 { return f.out.count() }
func (f *fwknopd) stop() error {
	if f.stopped {
		return nil
	}
	f.stopped = true
	f.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-f.done:
		return nil
	case <-time.After(10 * time.Second):
		f.cmd.Process.Kill()
		<-f.done
		return errors.New("fwknopd did not exit within 10s of SIGTERM")
	}
}

// lineCounter counts the lines written to it and keeps the last few; found
// is closed when a line holds want (never, for "").
type lineCounter struct {
	mu    sync.Mutex
	n     int64
	last  []string
	part  []byte
	want  string
	found chan struct{}
	once  sync.Once
}

func newLineCounter(want string) *lineCounter {
	return &lineCounter{want: want, found: make(chan struct{})}
}

func (c *lineCounter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.part = append(c.part, p...)
	for {
		i := slices.Index(c.part, '\n')
		if i < 0 {
			break
		}
		line := string(c.part[:i])
		c.part = c.part[i+1:]
		c.n++
		if len(c.last) == 20 {
			c.last = c.last[1:]
		}
		c.last = append(c.last, line)
		if c.want != "" && strings.Contains(line, c.want) {
			c.once.Do(func() { close(c.found) })
		}
	}
	if len(c.part) > 1<<16 {
		c.part = c.part[:0]
	}
	return len(p), nil
}

func (c *lineCounter) count() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

func (c *lineCounter) tail() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.last, "\n")
}

// sendAndConnect sends payload from src to the server's 62201/udp and
// returns how long after the send a TCP connection from src to port 22
// completed. It spins: a fresh non-blocking connect every connectEvery,
// each polled without waiting (a SYN dropped before the grant lands is
// retransmitted only after a second, so each attempt is a new socket; and
// a poll with a timeout under a millisecond sleeps a whole one).
func sendAndConnect(l *lab.Lab, src netip.Addr, payload []byte, within time.Duration) (time.Duration, error) {
	var took time.Duration
	err := lab.InNS(l.Client, func() error {
		c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), net.UDPAddrFromAddrPort(netip.AddrPortFrom(lab.ServerV4, 62201)))
		if err != nil {
			return err
		}
		_, err = c.Write(payload)
		sent := time.Now()
		c.Close()
		if err != nil {
			return err
		}
		took, err = spinConnect(src, sent, within)
		return err
	})
	return took, err
}

const connectEvery = 20 * time.Microsecond

func spinConnect(src netip.Addr, since time.Time, within time.Duration) (time.Duration, error) {
	sa := &unix.SockaddrInet4{Addr: lab.ServerV4.As4(), Port: 22}
	local := &unix.SockaddrInet4{Addr: src.As4()}
	var fds []unix.PollFd
	defer func() {
		for _, p := range fds {
			unix.Close(int(p.Fd))
		}
	}()
	var last time.Time
	for time.Since(since) < within {
		if time.Since(last) >= connectEvery {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return 0, err
			}
			fds = append(fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLOUT})
			if err := unix.Bind(fd, local); err != nil {
				return 0, fmt.Errorf("bind %s: %w", src, err)
			}
			if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
				return 0, fmt.Errorf("connect: %w", err)
			}
			last = time.Now()
			// Bound the sockets held: a slow server would otherwise
			// cost thousands of them.
			if len(fds) > 4096 {
				for _, p := range fds[:2048] {
					unix.Close(int(p.Fd))
				}
				fds = slices.Delete(fds, 0, 2048)
			}
		}
		if _, err := unix.Poll(fds, 0); err != nil && !errors.Is(err, unix.EINTR) {
			return 0, err
		}
		for _, p := range fds {
			if p.Revents&unix.POLLOUT != 0 {
				if soerr, _ := unix.GetsockoptInt(int(p.Fd), unix.SOL_SOCKET, unix.SO_ERROR); soerr == 0 {
					return time.Since(since), nil
				}
			}
		}
	}
	return 0, fmt.Errorf("port 22 did not open from %s within %s", src, within)
}

// flood is hping3 flooding 62201/udp from random sources in the client.
type flood struct {
	*lab.Hping
	out *lineCounter
}

func startFlood(ctx context.Context, l *lab.Lab) (*flood, error) {
	args := []string{"--udp", "--flood", "--rand-source", "-p", "62201"}
	if *floodData > 0 {
		args = append(args, "-d", strconv.Itoa(*floodData))
	}
	out := newLineCounter("")
	h, err := lab.StartHping(ctx, l.Client, out, append(args, lab.ServerV4.String())...)
	if err != nil {
		return nil, err
	}
	return &flood{Hping: h, out: out}, nil
}

var hpingSentRE = regexp.MustCompile(`(\d+) packets transmitted`)

// sent is hping3's count of packets sent, from its statistics; -1 if none.
func (f *flood) sent() int64 {
	sc := bufio.NewScanner(strings.NewReader(f.out.tail()))
	for sc.Scan() {
		if m := hpingSentRE.FindStringSubmatch(sc.Text()); m != nil {
			n, _ := strconv.ParseInt(m[1], 10, 64)
			return n
		}
	}
	return -1
}

func percentiles(d []time.Duration) (p50, p90 time.Duration) {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2], s[len(s)*9/10]
}
