package main

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"golang.org/x/crypto/ssh"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/integration/nstest"
	"github.com/nftknock/nftknock/knock/engine"
	"github.com/nftknock/nftknock/knock/sshspa"
	"github.com/nftknock/nftknock/nft"
)

// These tests run the commands against the real nf_tables of a scratch
// network namespace, with a table installed as the daemon installs it.

type kernel struct {
	ns *nstest.NS
	t  *testing.T
}

func newKernel(t *testing.T) *kernel {
	t.Helper()
	nstest.Require(t, "nft", "ip")
	return &kernel{ns: nstest.New(t), t: t}
}

// run runs nftknock in the namespace.
func (k *kernel) run(args ...string) (code int, stdout, stderr string) {
	k.t.Helper()
	var out, errOut strings.Builder
	e := &env{stdout: &out, stderr: &errOut, now: time.Now,
		open: func(table string, a *nft.Attach) (*nft.Firewall, error) {
			if a != nil {
				return nft.OpenAttached(*a, table, nftables.WithNetNSFd(k.ns.FD))
			}
			return nft.Open(table, nftables.WithNetNSFd(k.ns.FD))
		}}
	code = realMain(e, args)
	return code, out.String(), errOut.String()
}

// install installs doors ssh and admin in table as the daemon does; the
// returned Firewall stands for the running daemon.
func (k *kernel) install(table string) *nft.Firewall {
	k.t.Helper()
	fw, err := nft.Open(table, nftables.WithNetNSFd(k.ns.FD))
	if err != nil {
		k.t.Fatal(err)
	}
	k.t.Cleanup(func() { fw.Close() })
	port := func(n uint16, p config.Proto) config.Port { return config.Port{Num: n, Proto: p} }
	cfg := &config.Config{
		File: "test.toml", NFLOGGroup: 7113, Table: table, MaxTracked: 100,
		Doors: []config.Door{
			{Name: "ssh", Kind: &config.Sequence{Sequence: []config.Port{port(7000, config.TCP), port(8000, config.UDP)}, SeqTimeout: 5 * time.Second},
				Open: []config.Port{port(22, config.TCP)}, OpenFor: 30 * time.Second, MaxGrants: 1024},
			{Name: "admin", Kind: &config.Sequence{Sequence: []config.Port{port(7001, config.TCP)}, SeqTimeout: 5 * time.Second},
				Open: []config.Port{port(8443, config.TCP)}, OpenFor: time.Hour, MaxGrants: 1024},
		},
	}
	if err := installConfig(fw, cfg); err != nil {
		k.t.Fatal(err)
	}
	return fw
}

func (k *kernel) nft(args ...string) string {
	k.t.Helper()
	return k.ns.Run(k.t, "", append([]string{"nft"}, args...)...)
}

func parseStatus(t *testing.T, out string) statusJSON {
	t.Helper()
	var st statusJSON
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		t.Fatalf("status -json does not parse: %v\n%s", err, out)
	}
	return st
}

// TestKernelStatusNotInstalled: no table, exit 3, and it says so.
func TestKernelStatusNotInstalled(t *testing.T) {
	t.Parallel()
	k := newKernel(t)
	code, out, errOut := k.run("status")
	if code != exitNotInstalled || out != "table inet nftknock: not installed (nftknockd installs it when it starts; if its configuration has attach, give -config)\n" || errOut != "" {
		t.Errorf("status: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, _ = k.run("status", "-json")
	if code != exitNotInstalled {
		t.Errorf("status -json: exit %d, want 3", code)
	}
	st := parseStatus(t, out)
	if st.Installed || st.Table != "nftknock" || st.Doors == nil || len(st.Doors) != 0 || st.Grants == nil || len(st.Grants) != 0 {
		t.Errorf("status -json without a table: %+v", st)
	}
	if !strings.Contains(out, `"grants": []`) || !strings.Contains(out, `"doors": []`) {
		t.Errorf("empty lists must be [], not null:\n%s", out)
	}
	// Another table than ours does not count.
	k.nft("add", "table", "inet", "other")
	if code, _, _ := k.run("status", "-table", "nftknock"); code != exitNotInstalled {
		t.Errorf("status with only another table: exit %d", code)
	}
	if code, _, errOut := k.run("grant", "-door", "ssh", "-for", "1h", "192.0.2.1"); code != exitFail || !strings.Contains(errOut, "table inet nftknock: not installed") {
		t.Errorf("grant without the table: exit %d: %s", code, errOut)
	}
}

// TestKernelGrantStatusRevoke: a daemon's grant and the tool's own, seen
// by status with their time left; revoke; a door without sets refused.
func TestKernelGrantStatusRevoke(t *testing.T) {
	t.Parallel()
	k := newKernel(t)
	daemon := k.install("nftknock")
	if err := daemon.Grant("ssh", netipMust("192.0.2.2"), 30*time.Second); err != nil {
		t.Fatal(err)
	}

	code, out, errOut := k.run("status")
	if code != 0 || !strings.HasPrefix(out, "table inet nftknock: installed; doors: ssh, admin\n") ||
		!regexp.MustCompile(`(?m)^DOOR +ADDRESS +LEFT +TIMEOUT\nssh +192\.0\.2\.2 +(29\.\d|30)s +30s\n\z`).MatchString(out) {
		t.Errorf("status with the daemon's grant: exit %d\n%s%s", code, out, errOut)
	}

	if code, out, errOut := k.run("grant", "-door", "admin", "-for", "1h", "2001:db8::7"); code != 0 || !strings.HasPrefix(out, "door admin: 2001:db8::7 let in for 1h, until ") {
		t.Errorf("grant: exit %d: %s%s", code, out, errOut)
	}
	if code, out, errOut := k.run("grant", "-door", "ssh", "-for", "90s", "::ffff:192.0.2.9"); code != 0 || !strings.Contains(out, "192.0.2.9 let in for 1m30s") {
		t.Errorf("grant of a mapped address: exit %d: %s%s", code, out, errOut)
	}
	if set := k.nft("list", "set", "inet", "nftknock", "admin_v6"); !strings.Contains(set, "2001:db8::7 timeout 1h expires") {
		t.Errorf("admin_v6 lacks the grant:\n%s", set)
	}

	start := time.Now()
	code, out, _ = k.run("status", "-json")
	if code != 0 {
		t.Fatalf("status -json: exit %d", code)
	}
	st := parseStatus(t, out)
	if !st.Installed || st.Table != "nftknock" || strings.Join(st.Doors, ",") != "ssh,admin" || len(st.Grants) != 3 {
		t.Fatalf("status -json: %+v", st)
	}
	want := []struct {
		door, addr, family string
		timeout            int64
	}{
		{"ssh", "192.0.2.2", "ipv4", 30000},
		{"ssh", "192.0.2.9", "ipv4", 90000},
		{"admin", "2001:db8::7", "ipv6", 3600000},
	}
	for i, g := range st.Grants {
		w := want[i]
		if g.Door != w.door || g.Address != w.addr || g.Family != w.family || g.TimeoutMS != w.timeout ||
			g.LeftMS <= w.timeout-5000 || g.LeftMS > w.timeout {
			t.Errorf("grant %d: %+v; want %+v with a little less left", i, g, w)
		}
		at, err := time.Parse(time.RFC3339Nano, g.ExpiresAt)
		if err != nil {
			t.Errorf("grant %d: expires_at %q: %v", i, g.ExpiresAt, err)
		} else if d := at.Sub(start) - time.Duration(g.LeftMS)*time.Millisecond; d < -time.Second || d > time.Second {
			t.Errorf("grant %d: expires_at %v is not now + left_ms %d", i, at, g.LeftMS)
		}
	}

	// Granting again restarts the timer even from the tool, which keeps
	// no mirror; a shorter -for shortens (the operator's word).
	if code, _, errOut := k.run("grant", "-door", "ssh", "-for", "10s", "192.0.2.2"); code != 0 {
		t.Errorf("grant again: exit %d: %s", code, errOut)
	}
	if set := k.nft("list", "set", "inet", "nftknock", "ssh_v4"); !regexp.MustCompile(`192\.0\.2\.2 timeout 10s expires (9s\d+ms|10s)`).MatchString(set) {
		t.Errorf("after a second grant:\n%s", set)
	}

	if code, out, errOut := k.run("revoke", "-door", "ssh", "192.0.2.2"); code != 0 || out != "door ssh: 192.0.2.2 revoked\n" {
		t.Errorf("revoke: exit %d: %s%s", code, out, errOut)
	}
	if code, out, _ := k.run("revoke", "-door", "ssh", "192.0.2.2"); code != 0 || out != "door ssh: 192.0.2.2 had no grant\n" {
		t.Errorf("revoke again: exit %d: %s", code, out)
	}
	_, out, _ = k.run("status")
	if strings.Contains(out, "192.0.2.2") || !strings.Contains(out, "192.0.2.9") || !strings.Contains(out, "2001:db8::7") {
		t.Errorf("status after revoke:\n%s", out)
	}
	if code, _, _ := k.run("revoke", "-door", "admin", "2001:db8::7"); code != 0 {
		t.Errorf("revoke v6: exit %d", code)
	}
	if code, _, _ := k.run("revoke", "-door", "ssh", "192.0.2.9"); code != 0 {
		t.Errorf("revoke: exit %d", code)
	}
	if _, out, _ := k.run("status"); !strings.HasSuffix(out, "no live grants\n") {
		t.Errorf("status with no grants:\n%s", out)
	}

	// A door the table has no sets for.
	before := k.nft("list", "ruleset")
	code, out, errOut = k.run("grant", "-door", "vpn", "-for", "1h", "192.0.2.5")
	if code != exitFail || out != "" || !strings.Contains(errOut, `door "vpn" has no sets in table inet nftknock; doors that do: ssh, admin`) {
		t.Errorf("grant to door vpn: exit %d: %s%s", code, out, errOut)
	}
	if code, _, errOut := k.run("revoke", "-door", "vpn", "192.0.2.5"); code != exitFail || !strings.Contains(errOut, "doors that do: ssh, admin") {
		t.Errorf("revoke from door vpn: exit %d: %s", code, errOut)
	}
	if after := k.nft("list", "ruleset"); after != before {
		t.Errorf("a refused grant changed the ruleset:\n%s", after)
	}
}

// TestKernelTableFromConfig: -config names the table; -table another.
func TestKernelTableFromConfig(t *testing.T) {
	t.Parallel()
	k := newKernel(t)
	k.install("gate")
	cfg := t.TempDir() + "/nftknock.toml"
	writeFile(t, cfg, "table = \"gate\"\n[[door]]\nname = \"ssh\"\nsequence = [\"7000\", \"8000\"]\nseq_timeout = \"5s\"\nopen = [\"22\"]\nopen_for = \"30s\"\n")
	if code, out, errOut := k.run("grant", "-config", cfg, "-door", "ssh", "-for", "1m", "192.0.2.1"); code != 0 {
		t.Fatalf("grant -config: exit %d: %s%s", code, out, errOut)
	}
	if code, out, _ := k.run("status", "-table", "gate"); code != 0 || !strings.Contains(out, "192.0.2.1") {
		t.Errorf("status -table gate: exit %d:\n%s", code, out)
	}
	if code, _, _ := k.run("status"); code != exitNotInstalled {
		t.Errorf("status of the default table: exit %d, want 3", code)
	}
}

func netipMust(s string) netip.Addr { return netip.MustParseAddr(s) }

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestKernelAnyoneDoor: an open_to = "anyone" door's grants are whole
// families: granted and revoked as 0.0.0.0 or ::, shown as "anyone".
func TestKernelAnyoneDoor(t *testing.T) {
	t.Parallel()
	k := newKernel(t)
	fw, err := nft.Open("nftknock", nftables.WithNetNSFd(k.ns.FD))
	if err != nil {
		t.Fatal(err)
	}
	defer fw.Close()
	tcp := func(n uint16) config.Port { return config.Port{Num: n, Proto: config.TCP} }
	cfg := &config.Config{File: "test.toml", NFLOGGroup: 7113, Table: "nftknock", MaxTracked: 100, Doors: []config.Door{
		{Name: "ssh", Kind: &config.Sequence{Sequence: []config.Port{tcp(7000), tcp(8000)}, SeqTimeout: 5 * time.Second}, Open: []config.Port{tcp(22)}, OpenFor: 30 * time.Second, MaxGrants: 1024},
		{Name: "web", Kind: &config.Sequence{Sequence: []config.Port{tcp(7001), tcp(8001)}, SeqTimeout: 5 * time.Second}, Open: []config.Port{tcp(80)}, OpenFor: time.Minute, OpenToAnyone: true, MaxGrants: 1024},
	}}
	if err := installConfig(fw, cfg); err != nil {
		t.Fatal(err)
	}

	if code, _, errOut := k.run("grant", "-door", "web", "-for", "1h", "192.0.2.1"); code != exitFail || !strings.Contains(errOut, `door web is open_to = "anyone"`) {
		t.Errorf("grant of one address through an anyone door: exit %d: %s", code, errOut)
	}
	if code, _, errOut := k.run("grant", "-door", "ssh", "-for", "1h", "0.0.0.0"); code != exitFail || !strings.Contains(errOut, "0.0.0.0 is no source address") {
		t.Errorf("grant of 0.0.0.0 through a source door: exit %d: %s", code, errOut)
	}
	if code, out, errOut := k.run("grant", "-door", "web", "-for", "1h", "::"); code != 0 || !strings.HasPrefix(out, "door web: anyone (IPv6) let in for 1h") {
		t.Errorf("grant -door web ::: exit %d: %s%s", code, out, errOut)
	}
	if set := k.nft("list", "set", "inet", "nftknock", "web_anyone"); !strings.Contains(set, "ipv6 timeout 1h expires") {
		t.Errorf("web_anyone:\n%s", set)
	}
	code, out, _ := k.run("status")
	if code != 0 || !strings.Contains(out, "doors: ssh, web\n") || !regexp.MustCompile(`web +anyone \(IPv6\) +59m\d+s +1h\n`).MatchString(out) {
		t.Errorf("status:\n%s", out)
	}
	_, out, _ = k.run("status", "-json")
	st := parseStatus(t, out)
	if len(st.Grants) != 1 || !st.Grants[0].Anyone || st.Grants[0].Address != "::" || st.Grants[0].Family != "ipv6" {
		t.Errorf("status -json: %+v", st.Grants)
	}
	if code, out, _ := k.run("revoke", "-door", "web", "::"); code != 0 || out != "door web: anyone (IPv6) revoked\n" {
		t.Errorf("revoke: exit %d: %s", code, out)
	}
	if set := k.nft("list", "set", "inet", "nftknock", "web_anyone"); strings.Contains(set, "ipv6") {
		t.Errorf("web_anyone after revoke:\n%s", set)
	}
}

// installConfig installs cfg's plan as the daemon would.
func installConfig(fw *nft.Firewall, cfg *config.Config) error {
	p, err := engine.Plan(cfg)
	if err != nil {
		return err
	}
	_, err = fw.Install(p)
	return err
}

// TestKernelStatusNamesKeys: status shows whose key made each grant (the
// element's comment), and with -config the keys each public-key SPA door
// trusts now, with their limits, and what its files hold that it skips.
func TestKernelStatusNamesKeys(t *testing.T) {
	t.Parallel()
	k := newKernel(t)
	dir := t.TempDir()
	pemBytes, _, err := sshspa.GenerateServerKey("")
	if err != nil {
		t.Fatal(err)
	}
	server := filepath.Join(dir, "server.key")
	writeFile(t, server, string(pemBytes))
	alice := sshKey(t, 1)
	bob := sshKey(t, 2)
	keys := filepath.Join(dir, "team.authorized_keys")
	writeFile(t, keys, authorizedLine(alice, "", "alice@laptop")+authorizedLine(bob, `from="10.0.0.0/8",expiry-time="20300101Z"`, "bob@desk")+"ssh-dss AAAA old\n")
	loose := filepath.Join(dir, "loose.authorized_keys")
	writeFile(t, loose, authorizedLine(bob, "", "bob@elsewhere"))
	if err := os.Chmod(loose, 0o666); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "nftknock.toml")
	writeFile(t, cfgFile, fmt.Sprintf("server_key_file = %q\n[[door]]\nname = \"team\"\nspa_port = \"62203:udp\"\nauthorized_keys = [%q, %q]\nopen = [\"22:tcp\"]\nopen_for = \"30s\"\n", server, keys, loose))
	cfg, err := config.Load(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	fw, err := nft.Open(cfg.Table, nftables.WithNetNSFd(k.ns.FD))
	if err != nil {
		t.Fatal(err)
	}
	defer fw.Close()
	if err := installConfig(fw, cfg); err != nil {
		t.Fatal(err)
	}
	aliceLabel := `'alice@laptop' ` + ssh.FingerprintSHA256(alice.PublicKey())
	if _, first, err := fw.Put("team_v4", []nft.Element{{Key: netipMust("192.0.2.2").AsSlice(), Timeout: 30 * time.Second, Comment: aliceLabel}}); err != nil || first != nil {
		t.Fatal(err, first)
	}
	if err := fw.Grant("team", netipMust("2001:db8::2"), time.Minute); err != nil {
		t.Fatal(err)
	}

	code, out, errOut := k.run("status", "-config", cfgFile)
	t.Logf("nftknock status -config %s:\n%s", cfgFile, out)
	for _, want := range []string{
		`(?m)^DOOR +ADDRESS +LEFT +TIMEOUT +BY$`,
		`(?m)^team +192\.0\.2\.2 +\S+ +30s +` + regexp.QuoteMeta(aliceLabel) + `$`,
		`(?m)^team +2001:db8::2 +\S+ +1m +-$`,
		`(?m)^door team trusts 2 keys now:$`,
		`(?m)^  ` + regexp.QuoteMeta(aliceLabel) + ` +ssh-ed25519 +` + regexp.QuoteMeta(keys) + `:1$`,
		`(?m)^  'bob@desk' SHA256:\S+ +ssh-ed25519 +` + regexp.QuoteMeta(keys) + `:2 from="10\.0\.0\.0/8" expires 2030-01-01T00:00:00Z$`,
		`(?m)^  skipped ` + regexp.QuoteMeta(keys) + `:3: key type ssh-dss is not supported \(ssh-ed25519, ecdsa-sha2-nistp256/384/521 and ssh-rsa are\)$`,
		`(?m)^  skipped ` + regexp.QuoteMeta(loose) + `: writable by group or others \(mode 0666\).*Fix: chmod go-w \S+$`,
	} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("status -config: no line matching %s in:\n%s%s", want, out, errOut)
		}
	}
	if code != 0 {
		t.Errorf("exit %d", code)
	}
	_, out, _ = k.run("status", "-json", "-config", cfgFile)
	st := parseStatus(t, out)
	if len(st.Grants) != 2 || st.Grants[0].By != aliceLabel || st.Grants[1].By != "" {
		t.Errorf("grants %+v", st.Grants)
	}
	if len(st.Keys) != 2 || st.Keys[0].Key != aliceLabel || st.Keys[1].From != "10.0.0.0/8" || st.Keys[1].ExpiresAt != "2030-01-01T00:00:00Z" || len(st.Skipped) != 2 {
		t.Errorf("keys %+v, skipped %+v", st.Keys, st.Skipped)
	}
	// Without -config: no keys, and [] rather than null.
	_, out, _ = k.run("status", "-json")
	if st := parseStatus(t, out); st.Keys == nil || len(st.Keys) != 0 || !strings.Contains(out, `"keys": []`) {
		t.Errorf("status -json without -config: %s", out)
	}
}

func sshKey(t *testing.T, seed byte) ssh.Signer {
	t.Helper()
	s, err := ssh.NewSignerFromKey(ed25519.NewKeyFromSeed(append(make([]byte, 31), seed)))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func authorizedLine(s ssh.Signer, options, comment string) string {
	l := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey()))) + " " + comment + "\n"
	if options != "" {
		l = options + " " + l
	}
	return l
}

// TestKernelPerPortDoor: an fwknop door's grants each open one port:
// grant and revoke take -port (and refuse to go without), status shows
// the port of each grant, and "all" for a door that opens all its ports.
func TestKernelPerPortDoor(t *testing.T) {
	t.Parallel()
	k := newKernel(t)
	fw, err := nft.Open("nftknock", nftables.WithNetNSFd(k.ns.FD))
	if err != nil {
		t.Fatal(err)
	}
	defer fw.Close()
	dir := t.TempDir()
	keyFile := func(name string, n int) string {
		p := dir + "/" + name
		if err := os.WriteFile(p, []byte(base64.StdEncoding.EncodeToString(make([]byte, n))+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tcp := func(n uint16) config.Port { return config.Port{Num: n, Proto: config.TCP} }
	cfg := &config.Config{File: "test.toml", NFLOGGroup: 7113, Table: "nftknock", MaxTracked: 100, Doors: []config.Door{
		{Name: "ssh", Kind: &config.Sequence{Sequence: []config.Port{tcp(7000), tcp(8000)}, SeqTimeout: 5 * time.Second}, Open: []config.Port{tcp(22)}, OpenFor: 30 * time.Second, MaxGrants: 1024},
		{Name: "fw", Kind: &config.Fwknop{Port: config.Port{Num: 62201, Proto: config.UDP}, KeyFile: keyFile("fw.key", 32), HMACKeyFile: keyFile("fw.hmac", 64),
			MaxAge: time.Minute, MaxOpenFor: time.Minute, Sources: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}},
			Open: []config.Port{tcp(22), tcp(2222)}, OpenFor: 30 * time.Second, MaxGrants: 1024},
	}}
	if err := installConfig(fw, cfg); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := k.run("grant", "-door", "fw", "-for", "1h", "192.0.2.1"); code != exitFail || !strings.Contains(errOut, "door fw grants per port") {
		t.Errorf("grant without -port through a per-port door: exit %d: %s", code, errOut)
	}
	if code, _, errOut := k.run("grant", "-door", "ssh", "-for", "1h", "-port", "22:tcp", "192.0.2.1"); code != exitFail || !strings.Contains(errOut, "door ssh grants all its opened ports") {
		t.Errorf("grant -port through a door of all its ports: exit %d: %s", code, errOut)
	}
	if code, _, errOut := k.run("grant", "-door", "fw", "-for", "1h", "-port", "22", "192.0.2.1"); code != exitUsage || !strings.Contains(errOut, "with its protocol") {
		t.Errorf("-port without protocol: exit %d: %s", code, errOut)
	}
	if code, out, errOut := k.run("grant", "-door", "fw", "-for", "1h", "-port", "2222:tcp", "192.0.2.1"); code != 0 || !strings.HasPrefix(out, "door fw: 192.0.2.1 to 2222:tcp let in for 1h") {
		t.Errorf("grant -port: exit %d: %s%s", code, out, errOut)
	}
	if code, _, errOut := k.run("grant", "-door", "ssh", "-for", "1h", "192.0.2.1"); code != 0 {
		t.Fatal(errOut)
	}
	if set := k.nft("list", "set", "inet", "nftknock", "fw_v4"); !strings.Contains(set, "192.0.2.1 . tcp . 2222 timeout 1h expires") {
		t.Errorf("fw_v4:\n%s", set)
	}
	code, out, _ := k.run("status")
	if code != 0 || !regexp.MustCompile(`(?m)^DOOR +ADDRESS +PORT +LEFT +TIMEOUT\nssh +192\.0\.2\.1 +all +59m\d+s +1h\nfw +192\.0\.2\.1 +2222:tcp +59m\d+s +1h\n\z`).MatchString(out) {
		t.Errorf("status:\n%s", out)
	}
	_, out, _ = k.run("status", "-json")
	if st := parseStatus(t, out); len(st.Grants) != 2 || st.Grants[0].Port != "" || st.Grants[1].Port != "2222:tcp" {
		t.Errorf("status -json: %+v", st.Grants)
	}
	if code, out, _ := k.run("revoke", "-door", "fw", "-port", "22:tcp", "192.0.2.1"); code != 0 || out != "door fw: 192.0.2.1 to 22:tcp had no grant\n" {
		t.Errorf("revoke of a port not granted: exit %d: %s", code, out)
	}
	if code, out, _ := k.run("revoke", "-door", "fw", "-port", "2222:tcp", "192.0.2.1"); code != 0 || out != "door fw: 192.0.2.1 to 2222:tcp revoked\n" {
		t.Errorf("revoke: exit %d: %s", code, out)
	}
	if set := k.nft("list", "set", "inet", "nftknock", "fw_v4"); strings.Contains(set, "192.0.2.1") {
		t.Errorf("fw_v4 after revoke:\n%s", set)
	}
}

// TestKernelToolAttached: with -config naming attach, status, grant and
// revoke work on the daemon's chain and sets in the admin's table, and
// status says whether the admin's chain jumps to the daemon's.
func TestKernelToolAttached(t *testing.T) {
	t.Parallel()
	k := newKernel(t)
	k.ns.Run(t, `table inet filter {
	chain nftknock {}
	chain input {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		jump nftknock
	}
}
`, "nft", "-f", "-")
	cfgFile := filepath.Join(t.TempDir(), "nftknock.toml")
	if err := os.WriteFile(cfgFile, []byte("attach = \"inet filter input\"\n[[door]]\nname = \"ssh\"\nsequence = [\"7000\", \"8000:udp\"]\nseq_timeout = \"5s\"\nopen = [\"22\"]\nopen_for = \"30s\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	fw, err := nft.OpenAttached(nft.Attach{Table: "filter", Chain: "input"}, "nftknock", nftables.WithNetNSFd(k.ns.FD))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fw.Close() })
	if err := installConfig(fw, cfg); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := k.run("grant", "-config", cfgFile, "-door", "ssh", "-for", "1h", "192.0.2.9"); code != exitOK {
		t.Fatalf("grant: exit %d: %s%s", code, out, errOut)
	}
	if set := k.nft("list", "set", "inet", "filter", "nftknock_ssh_v4"); !strings.Contains(set, "192.0.2.9 timeout 1h") {
		t.Errorf("the grant is not in nftknock_ssh_v4:\n%s", set)
	}
	code, out, errOut := k.run("status", "-config", cfgFile)
	if code != exitOK || !strings.Contains(out, "chain nftknock in table inet filter: installed; doors: ssh\n") ||
		!strings.Contains(out, "jump: `jump nftknock` is rule 2 of 2 in chain input\n") || !strings.Contains(out, "192.0.2.9") {
		t.Errorf("status: exit %d:\n%s%s", code, out, errOut)
	}
	_, out, _ = k.run("status", "-json", "-config", cfgFile)
	st := parseStatus(t, out)
	if st.Table != "filter" || st.Attach == nil || st.Attach.Chain != "input" || len(st.Attach.Jumps) != 1 || !st.Attach.Jumps[0].Present || len(st.Grants) != 1 {
		t.Errorf("status -json: %+v", st)
	}
	k.nft("flush", "chain", "inet", "filter", "input")
	if _, out, _ = k.run("status", "-config", cfgFile); !strings.Contains(out, "jump MISSING: no `jump nftknock` in chain input") {
		t.Errorf("status without the jump:\n%s", out)
	}
	if code, out, errOut := k.run("revoke", "-config", cfgFile, "-door", "ssh", "192.0.2.9"); code != exitOK || !strings.Contains(out, "revoked") {
		t.Errorf("revoke: exit %d: %s%s", code, out, errOut)
	}
}
