package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nftknock/nftknock/integration/lab"
	"github.com/nftknock/nftknock/integration/sshtest"
	"github.com/nftknock/nftknock/knock"
)

// Two more addresses of the server, so that the client file can name a
// server for each kind of door: the doors open whatever address a knock
// was sent to.
var (
	knockHost = netip.MustParseAddr("192.0.2.11")
	rotHost   = netip.MustParseAddr("192.0.2.12")
)

const teamPort = 62203

// keySPALab is the lab of the public-key SPA test, with real OpenSSH on
// both ends: Debian's sshd on port 22 of the server with host keys of its
// own, and nftknockd with a public-key door "team" (22/tcp) whose server
// key is sshd's ed25519 host key, beside a knock door "knock" (2201/tcp)
// and a rotating door "rot" (2202/tcp), echo servers behind both; on the
// client, people's keys made by ssh-keygen, an ssh-agent holding alice's,
// and a HOME with a hashed known_hosts and a client file naming all
// three doors.
type keySPALab struct {
	*lab.Lab
	t        *testing.T
	d        *lab.Daemon
	dir      string
	config   string
	home     string
	path     string // PATH, with nftknock first
	agent    string
	keysFile string
	keys     string // the authorized_keys file's first contents
	host     *sshtest.Key
	// alice is listed and in the agent; carol is listed with a from= of
	// another address, dave (RSA-2048) with an expiry-time passed,
	// mallory not at all.
	alice, carol, dave, mallory *sshtest.Key
}

func newKeySPALab(t *testing.T) *keySPALab {
	t.Helper()
	sshtest.Require(t, "/usr/sbin/sshd", "ssh", "ssh-agent", "ssh-add", "ssh-keygen")
	k := &keySPALab{Lab: newBareLab(t), t: t, dir: t.TempDir()}
	echo(t, k.Lab, 2201)
	echo(t, k.Lab, 2202)
	for _, a := range []netip.Addr{knockHost, rotHost} {
		if _, err := lab.Run(k.Server, "ip", "addr", "add", a.String()+"/24", "dev", k.ServerLink()); err != nil {
			t.Fatal(err)
		}
	}
	k.host = sshtest.Keygen(t, k.dir, "ssh_host_ed25519_key", "ed25519", 0, "root@server", "")
	k.alice = sshtest.Keygen(t, k.dir, "id_alice", "ed25519", 0, "alice@laptop", "")
	k.carol = sshtest.Keygen(t, k.dir, "id_carol", "ecdsa", 256, "carol@office", "")
	k.dave = sshtest.Keygen(t, k.dir, "id_dave", "rsa", 2048, "dave@gone", "")
	k.mallory = sshtest.Keygen(t, k.dir, "id_mallory", "ed25519", 0, "mallory@nowhere", "")
	k.keysFile = filepath.Join(k.dir, "team.authorized_keys")
	// alice's line has options that only concern a login session: they
	// do not keep her key from knocking.
	k.keys = "# the team\n" +
		"no-pty,no-port-forwarding " + k.alice.Line + "\n" +
		`from="` + lab.Client2V4.String() + `" ` + k.carol.Line + "\n" +
		`expiry-time="20200101" ` + k.dave.Line + "\n"
	writeFile(t, k.keysFile, k.keys)
	writeFile(t, filepath.Join(k.dir, "login_keys"), k.alice.Line+"\n")
	startSSHD(t, k.Lab, k.dir, k.host.Path)

	rotKey, _ := writeKey(t, k.dir)
	k.config = writeConfig(t, filepath.Join(k.dir, "nftknock.toml"), fmt.Sprintf(`server_key_file = %q

[[door]]
name = "team"
spa_port = "%d:udp"
authorized_keys = [%q]
open = ["22:tcp"]
open_for = "10s"

[[door]]
name = "knock"
sequence = ["7000:tcp", "8000:udp", "9000:tcp"]
seq_timeout = "5s"
open = ["2201:tcp"]
open_for = "10s"

[[door]]
name = "rot"
sequence_key_file = %q
rotate_every = %q
seq_timeout = "2s"
open = ["2202:tcp"]
open_for = "10s"
`, k.host.Path, teamPort, k.keysFile, rotKey, rotEvery))
	k.d = startDaemon(t, k.Lab, k.config)

	k.home = filepath.Join(k.dir, "home")
	hostKey := strings.Join(strings.Fields(k.host.Line)[:2], " ")
	kh := filepath.Join(k.home, ".ssh", "known_hosts")
	mkdirs(t, filepath.Dir(kh), filepath.Join(k.home, ".config", "nftknock"))
	writeFile(t, kh, fmt.Sprintf("%s %s\n%s %s\n", lab.ServerV4, hostKey, lab.ServerV6, hostKey))
	if out, err := exec.Command("ssh-keygen", "-H", "-f", kh).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen -H: %v: %s", err, out)
	}
	var cf strings.Builder
	for _, h := range []netip.Addr{lab.ServerV4, lab.ServerV6} {
		fmt.Fprintf(&cf, "[[server]]\nhost = %q\ndoor = \"team\"\nspa_port = \"%d:udp\"\nknown_hosts = true\n\n", h, teamPort)
	}
	fmt.Fprintf(&cf, "[[server]]\nhost = %q\nsequence = [\"7000:tcp\", \"8000:udp\", \"9000:tcp\"]\n\n", knockHost)
	fmt.Fprintf(&cf, "[[server]]\nhost = %q\ndoor = \"rot\"\nsequence_key_file = %q\nrotate_every = %q\n", rotHost, rotKey, rotEvery)
	writeFile(t, filepath.Join(k.home, ".config", "nftknock", "client.toml"), cf.String())
	k.path = filepath.Dir(nftknockBin(t)) + ":" + os.Getenv("PATH")
	k.agent = sshtest.Agent(t, k.alice)
	return k
}

// client runs argv in the client namespace as a person does: with the
// lab's HOME, PATH (nftknock on it) and ssh-agent.
func (k *keySPALab) client(timeout time.Duration, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := lab.Command(ctx, k.Client, argv...)
	cmd.Env = []string{"PATH=" + k.path, "HOME=" + k.home, "SSH_AUTH_SOCK=" + k.agent}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
	return string(out), nil
}

// knock sends a public-key knock with nftknock spa to server, taking its
// key from known_hosts unless extra, flags before the host, names a
// -server-key-file.
func (k *keySPALab) knock(server netip.Addr, extra ...string) {
	k.t.Helper()
	argv := []string{"nftknock", "spa", "-door", "team", "-p", fmt.Sprint(teamPort)}
	if !slices.Contains(extra, "-server-key-file") {
		argv = append(argv, "-known-hosts")
	}
	argv = append(argv, extra...)
	if out, err := k.client(10*time.Second, append(argv, server.String())...); err != nil {
		k.t.Fatalf("%v\n%s", err, out)
	}
}

// shut revokes the door's grants to the client's addresses.
func (k *keySPALab) shut(door string) {
	k.t.Helper()
	for _, a := range []netip.Addr{lab.ClientV4, lab.ClientV6, lab.Client2V4} {
		if _, code := runNftknock(k.t, k.Lab, "revoke", "-door", door, a.String()); code != 0 {
			k.t.Fatalf("nftknock revoke -door %s %s: exit %d", door, a, code)
		}
	}
}

// keyField is how the daemon's log names a key that signed, in its JSON
// fields; claimedField one that a datagram names.
func keyField(t *testing.T, name string, key *sshtest.Key) string {
	return fmt.Sprintf(`"%s": "'%s' %s"`, name, key.Comment, sshtest.Fingerprint(t, key.Path+".pub"))
}

func claimedField(t *testing.T, key *sshtest.Key) string {
	return fmt.Sprintf(`"claimed_key": "%s"`, sshtest.Fingerprint(t, key.Path+".pub"))
}

func TestKeySPAWithOpenSSH(t *testing.T) {
	k := newKeySPALab(t)
	spa4 := netip.AddrPortFrom(lab.ServerV4, teamPort)

	t.Run("22 filtered before", func(t *testing.T) {
		mustFiltered(t, k.Lab, lab.ClientV4, ssh4)
		mustFiltered(t, k.Lab, lab.ClientV6, ssh6)
		mustUDP(t, k.Lab, lab.ClientV4, spa4, lab.UDPNoAnswer)
	})

	t.Run("a key in the agent opens v4 and v6, and the log and the grant name it", func(t *testing.T) {
		for _, c := range []struct {
			server, client netip.Addr
			ssh            netip.AddrPort
			set            string
		}{{lab.ServerV4, lab.ClientV4, ssh4, "team_v4"}, {lab.ServerV6, lab.ClientV6, ssh6, "team_v6"}} {
			m := markLog(k.d)
			k.knock(c.server)
			mustOpen(t, k.Lab, c.client, c.ssh)
			m.wait(t, 2*time.Second, "door opened", `"door": "team"`, `"source": "`+c.client.String()+`"`, keyField(t, "key", k.alice))
			element(t, k.Lab, c.set, c.client)
			set, err := lab.Run(k.Server, "nft", "list", "set", "inet", "nftknock", c.set)
			if err != nil {
				t.Fatal(err)
			}
			if want := fmt.Sprintf(`comment "'alice@laptop' %s"`, sshtest.Fingerprint(t, k.alice.Path+".pub")); !strings.Contains(set, want) {
				t.Errorf("set %s lacks %s:\n%s", c.set, want, set)
			}
		}
		out, code := runNftknock(t, k.Lab, "status", "-config", k.config)
		fp := regexp.QuoteMeta(sshtest.Fingerprint(t, k.alice.Path+".pub"))
		for _, want := range []string{
			`(?m)^team +192\.0\.2\.2 +\S+ +10s +'alice@laptop' ` + fp + `$`,
			`(?m)^team +2001:db8::2 +\S+ +10s +'alice@laptop' ` + fp + `$`,
			`(?m)^door team trusts 3 keys now:$`,
			`(?m)^  'dave@gone' SHA256:\S+ +ssh-rsa +\S+:4 expires 2020-01-01`,
		} {
			if !regexp.MustCompile(want).MatchString(out) {
				t.Errorf("nftknock status -config: exit %d, no line matching %s:\n%s", code, want, out)
			}
		}
		k.shut("team")
		mustFiltered(t, k.Lab, lab.ClientV4, ssh4)
	})

	other := sshtest.Keygen(t, k.dir, "other_server_key", "ed25519", 0, "root@elsewhere", "")
	for _, c := range []struct {
		name, reason string
		flags        []string
		field        string // a log field that names the key, if one does
	}{
		{"a key not listed", "unknown key", []string{"-identity", k.mallory.Path}, claimedField(t, k.mallory)},
		{"a listed key from outside its from=", "from= refused", []string{"-identity", k.carol.Path}, keyField(t, "key", k.carol)},
		{"a listed key past its expiry-time", "expired key", []string{"-identity", k.dave.Path}, keyField(t, "key", k.dave)},
		{"a datagram sealed to another server key", "not sealed to this server's key", []string{"-server-key-file", other.Path + ".pub"}, ""},
	} {
		t.Run(c.name+" opens nothing", func(t *testing.T) {
			m := markLog(k.d)
			k.knock(lab.ServerV4, c.flags...)
			parts := []string{"SPA datagram rejected: " + c.reason, `"door": "team"`, `"source": "192.0.2.2"`}
			if c.field != "" {
				parts = append(parts, c.field)
			}
			m.wait(t, 2*time.Second, parts...)
			mustFiltered(t, k.Lab, lab.ClientV4, ssh4)
			noElements(t, k.Lab, "team_v4")
		})
	}

	t.Run("a captured datagram resent opens nothing", func(t *testing.T) {
		// A listener on the path holds the client's datagram back, and
		// sends it first from an address of its own; then the datagram
		// arrives from the client, after it.
		tap := tapDatagrams(t, k.Lab, teamPort, true)
		k.knock(lab.ServerV4)
		captured := tap.next(t)
		tap.stop()
		mustFiltered(t, k.Lab, lab.ClientV4, ssh4)
		m := markLog(k.d)
		sendDatagram(t, k.Lab, lab.Client2V4, spa4, captured)
		m.wait(t, 2*time.Second, "SPA datagram rejected: requested address not allowed", `"source": "192.0.2.3"`, keyField(t, "key", k.alice))
		sendDatagram(t, k.Lab, lab.ClientV4, spa4, captured)
		m.wait(t, 2*time.Second, "SPA datagram rejected: replay", `"source": "192.0.2.2"`)
		mustFiltered(t, k.Lab, lab.ClientV4, ssh4)
		mustFiltered(t, k.Lab, lab.Client2V4, ssh4)
		noElements(t, k.Lab, "team_v4")

		// One that went through, captured on its way and sent again
		// after its grant is gone.
		tap = tapDatagrams(t, k.Lab, teamPort, false)
		k.knock(lab.ServerV4)
		captured = tap.next(t)
		tap.stop()
		mustOpen(t, k.Lab, lab.ClientV4, ssh4)
		k.shut("team")
		m = markLog(k.d)
		sendDatagram(t, k.Lab, lab.ClientV4, spa4, captured)
		m.wait(t, 2*time.Second, "SPA datagram rejected: replay")
		mustFiltered(t, k.Lab, lab.ClientV4, ssh4)
		noElements(t, k.Lab, "team_v4")
	})

	t.Run("a removed line stops working within 2s, without a reload", func(t *testing.T) {
		var kept []string
		for _, l := range strings.SplitAfter(k.keys, "\n") {
			if !strings.Contains(l, k.alice.Line) {
				kept = append(kept, l)
			}
		}
		writeFile(t, k.keysFile, strings.Join(kept, ""))
		time.Sleep(2 * time.Second)
		m := markLog(k.d)
		k.knock(lab.ServerV4)
		m.wait(t, 2*time.Second, "SPA datagram rejected: unknown key", claimedField(t, k.alice))
		mustFiltered(t, k.Lab, lab.ClientV4, ssh4)
		// Put back, it works again, as soon.
		writeFile(t, k.keysFile, k.keys)
		time.Sleep(2 * time.Second)
		k.knock(lab.ServerV4)
		mustOpen(t, k.Lab, lab.ClientV4, ssh4)
		if strings.Contains(k.d.Log(), "reloaded") {
			t.Error("the daemon reloaded")
		}
		k.shut("team")
	})

	t.Run("ssh logs in through nftknock proxy, and times out without", func(t *testing.T) {
		ssh := func(server netip.Addr, extra ...string) (string, error) {
			argv := []string{"ssh", "-F", "/dev/null", "-o", "UserKnownHostsFile=" + filepath.Join(k.home, ".ssh", "known_hosts"),
				"-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=2"}
			if len(extra) > 0 && extra[0] == "-F" {
				argv[2], extra = extra[1], extra[2:]
			}
			argv = append(append(argv, extra...), "root@"+server.String(), "echo", "through-the-gate")
			return k.client(20*time.Second, argv...)
		}
		sshConfig := filepath.Join(k.dir, "ssh_config")
		writeFile(t, sshConfig, "Match exec \"nftknock open -wait %p %h\"\n")
		for _, c := range []struct {
			server, client netip.Addr
		}{{lab.ServerV4, lab.ClientV4}, {lab.ServerV6, lab.ClientV6}} {
			if out, err := ssh(c.server); err == nil || !strings.Contains(out, "timed out") {
				t.Errorf("plain ssh %s: %v: %s", c.server, err, out)
			}
			m := markLog(k.d)
			if out, err := ssh(c.server, "-o", "ProxyCommand=nftknock proxy %h %p"); err != nil || !strings.Contains(out, "through-the-gate") {
				t.Errorf("ssh -o ProxyCommand='nftknock proxy %%h %%p' %s: %v: %s", c.server, err, out)
			}
			m.wait(t, time.Second, "door opened", `"source": "`+c.client.String()+`"`, keyField(t, "key", k.alice))
			k.shut("team")
			// ssh's own connection, after nftknock open -wait knocks
			// for it under Match exec.
			if out, err := ssh(c.server, "-F", sshConfig); err != nil || !strings.Contains(out, "through-the-gate") {
				t.Errorf("ssh with Match exec \"nftknock open -wait %%p %%h\" %s: %v: %s", c.server, err, out)
			}
			k.shut("team")
		}
	})

	t.Run("the client file serves a plain sequence, a rotating and a public-key door", func(t *testing.T) {
		for _, c := range []struct {
			host netip.Addr
			port uint16
			door string
		}{{knockHost, 2201, "knock"}, {rotHost, 2202, "rot"}, {lab.ServerV4, 22, "team"}} {
			to := netip.AddrPortFrom(lab.ServerV4, c.port)
			mustFiltered(t, k.Lab, lab.ClientV4, to)
			m := markLog(k.d)
			if out, err := k.client(15*time.Second, "nftknock", "open", "-wait", fmt.Sprint(c.port), c.host.String()); err != nil {
				t.Errorf("nftknock open %s: %v\n%s", c.host, err, out)
			}
			mustOpen(t, k.Lab, lab.ClientV4, to)
			m.wait(t, time.Second, "door opened", `"door": "`+c.door+`"`)
		}
	})
}

// startSSHD runs Debian's sshd on port 22 of the lab's server, with host
// key hostKey and dir/login_keys as root's authorized keys, until the test
// ends.
func startSSHD(t *testing.T, l *lab.Lab, dir, hostKey string) {
	t.Helper()
	// sshd wants its privilege separation directory, which its init
	// script makes when it starts the host's sshd.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "sshd_config")
	writeFile(t, cfg, fmt.Sprintf(`Port 22
ListenAddress 0.0.0.0
ListenAddress ::
HostKey %s
PidFile none
AuthorizedKeysFile %s
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
`, hostKey, filepath.Join(dir, "login_keys")))
	ctx, cancel := context.WithCancel(context.Background())
	cmd := lab.Command(ctx, l.Server, "/usr/sbin/sshd", "-D", "-e", "-f", cfg)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	var mu sync.Mutex
	var log strings.Builder
	listening := make(chan struct{}, 2)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			mu.Lock()
			log.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if strings.Contains(sc.Text(), "Server listening on") {
				listening <- struct{}{}
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			mu.Lock()
			t.Logf("sshd:\n%s", log.String())
			mu.Unlock()
		}
	})
	for range 2 { // a line per ListenAddress
		select {
		case <-listening:
		case <-time.After(10 * time.Second):
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("sshd did not start:\n%s", log.String())
		}
	}
}

// tapGroup is the NFLOG group of the test's own listener on the path.
const tapGroup = 7999

// tap is a listener on the path to the server: a table of the test's own
// whose chain runs before the daemon's and logs the datagrams to a port
// to tapGroup, which it reads.
type tap struct {
	l    *lab.Lab
	nl   *knock.NFLOG
	ns   *os.File
	done bool
}

// tapDatagrams starts a tap on port; with hold, it also drops what it
// logs, so that the daemon never sees it.
func tapDatagrams(t *testing.T, l *lab.Lab, port uint16, hold bool) *tap {
	t.Helper()
	verdict := ""
	if hold {
		verdict = " drop"
	}
	if _, err := runStdin(l.Server, fmt.Sprintf("table inet nftk_tap {\n\tchain c {\n\t\ttype filter hook input priority -50; policy accept;\n\t\tudp dport %d log group %d%s\n\t}\n}\n", port, tapGroup, verdict), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	ns, err := os.Open("/run/netns/" + l.Server)
	if err != nil {
		t.Fatal(err)
	}
	nl, err := knock.ListenNFLOG(knock.NFLOGConfig{Group: tapGroup, CopyRange: 2048, NetNS: int(ns.Fd())})
	if err != nil {
		ns.Close()
		t.Fatal(err)
	}
	tp := &tap{l: l, nl: nl, ns: ns}
	t.Cleanup(tp.stop)
	return tp
}

// next returns the UDP payload of the first datagram the tap heard.
func (tp *tap) next(t *testing.T) []byte {
	t.Helper()
	var got []byte
	deadline := time.Now().Add(3 * time.Second)
	for got == nil && time.Now().Before(deadline) {
		err := tp.nl.Read(deadline, func(lg knock.Logged) {
			if p, err := knock.UDPPayload(lg.Payload); err == nil && got == nil {
				got = bytes.Clone(p)
				tp.nl.Wake()
			}
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if got == nil {
		t.Fatal("the tap heard no datagram within 3s")
	}
	return got
}

// stop removes the tap's table and socket.
func (tp *tap) stop() {
	if tp.done {
		return
	}
	tp.done = true
	tp.nl.Close()
	tp.ns.Close()
	lab.Run(tp.l.Server, "nft", "delete", "table", "inet", "nftk_tap")
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

func mkdirs(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
}
