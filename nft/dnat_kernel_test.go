package nft

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/integration/neighbours"
	"github.com/nftknock/nftknock/integration/nstest"
)

// FindDNAT against real rulesets in scratch namespaces: nft's own forms of
// DNAT, iptables-nft's, and Docker's as dockerd writes them. Each run
// records what the kernel answered; with -update the recording goes to
// testdata, for the unit tests that replay it without root.

// nativeDNATRuleset holds nft's own ways to DNAT, and rules that look
// alike but must not be reported.
const nativeDNATRuleset = `
table ip natnative {
	set published {
		type inet_service
		flags interval
		elements = { 2222, 3000-3010 }
	}
	map panels {
		type inet_service : ipv4_addr
		elements = { 4443 : 10.0.0.43 }
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		tcp dport 8443 dnat to 172.17.0.2:8080 comment "admin panel"
		udp dport 5353 dnat to 10.0.0.53
		tcp dport 10000-10010 dnat to 10.0.0.9:20000-20010
		tcp dport { 2223, 3333 } dnat to 10.0.0.22:22
		tcp dport @published dnat to 10.0.0.23
		ip daddr 198.51.100.7 tcp dport != 22 dnat to 10.0.0.7
		ip daddr 198.51.100.8 dnat to 10.0.0.8
		dnat to tcp dport map @panels
		tcp dport 8443 redirect to :8080
		jump more
	}
	chain more {
		iifname "eth0" tcp dport 8443 dnat to 10.0.0.44
	}
	chain output {
		type nat hook output priority -100; policy accept;
		tcp dport 8443 dnat to 127.0.0.1:1
	}
}
table inet natboth {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		meta nfproto ipv6 tcp dport 8443 dnat ip6 to [2001:db8::10]:8080
		udp dport 1194 dnat ip to 10.0.0.94
	}
}
table inet filterlike {
	chain input {
		type filter hook input priority filter; policy accept;
		tcp dport 8443 accept
	}
}
`

// iptablesDNATRules are iptables' ways, as iptables-nft writes them: a
// native port match or an xt match (multiport; tcp with --tcp-option),
// then an xt DNAT target.
var iptablesDNATRules = [][]string{
	{"iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-m", "multiport", "--dports", "8443,9000:9010", "-j", "DNAT", "--to-destination", "10.0.0.5:8080"},
	{"iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "7443", "--tcp-option", "2", "-j", "DNAT", "--to-destination", "10.0.0.6"},
	{"iptables", "-t", "nat", "-A", "PREROUTING", "-p", "udp", "--dport", "5000:5010", "-j", "DNAT", "--to-destination", "10.0.0.7:6000-6010"},
	{"iptables", "-t", "nat", "-A", "PREROUTING", "-p", "udp", "-m", "multiport", "!", "--dports", "53,67", "-j", "DNAT", "--to-destination", "10.0.0.66"},
	{"iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "8443", "-j", "REDIRECT", "--to-ports", "8080"},
	{"iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "8443", "-j", "DNAT", "--to-destination", "10.0.0.1"},
	{"ip6tables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "8443", "-j", "DNAT", "--to-destination", "[2001:db8::9]:8080"},
}

// nativeDNATPorts are the ports the native test asks about.
var nativeDNATPorts = []config.Port{
	tcp(8443), udp(5353), tcp(10005), tcp(3005), tcp(22), udp(1194), tcp(4443),
	tcp(7443), udp(53), {Num: 60000, Last: 61000, Proto: config.UDP}, tcp(3333), udp(5005),
}

// wantNativeDNAT is what FindDNAT must report for nativeDNATRuleset and
// iptablesDNATRules, handles left out.
var wantNativeDNAT = []string{
	`table ip natnative chain prerouting: tcp dport 8443 dnat to 172.17.0.2:8080 comment "admin panel" for 8443:tcp`,
	`table ip natnative chain prerouting: udp dport 5353 dnat to 10.0.0.53 for 5353:udp`,
	`table ip natnative chain prerouting: tcp dport 10000-10010 dnat to 10.0.0.9:20000-20010 for 10005:tcp`,
	`table ip natnative chain prerouting: tcp dport { 2223, 3333 } dnat to 10.0.0.22:22 for 3333:tcp`,
	`table ip natnative chain prerouting: tcp dport { 2222, 3000-3010 } dnat to 10.0.0.23 for 3005:tcp`,
	// Every TCP port but 22 (the address is not a port: it may match).
	`table ip natnative chain prerouting: tcp dport != 22 dnat to 10.0.0.7 for 8443:tcp`,
	`table ip natnative chain prerouting: tcp dport != 22 dnat to 10.0.0.7 for 10005:tcp`,
	`table ip natnative chain prerouting: tcp dport != 22 dnat to 10.0.0.7 for 3005:tcp`,
	`table ip natnative chain prerouting: tcp dport != 22 dnat to 10.0.0.7 for 4443:tcp`,
	`table ip natnative chain prerouting: tcp dport != 22 dnat to 10.0.0.7 for 7443:tcp`,
	`table ip natnative chain prerouting: tcp dport != 22 dnat to 10.0.0.7 for 3333:tcp`,
	// No protocol, no port: every port of the address.
	`table ip natnative chain prerouting: all ports dnat to 10.0.0.8 for 8443:tcp`,
	`table ip natnative chain prerouting: all ports dnat to 10.0.0.8 for 5353:udp`,
	`table ip natnative chain prerouting: all ports dnat to 10.0.0.8 for 10005:tcp`,
	`table ip natnative chain prerouting: all ports dnat to 10.0.0.8 for 3005:tcp`,
	`table ip natnative chain prerouting: all ports dnat to 10.0.0.8 for 22:tcp`,
	`table ip natnative chain prerouting: all ports dnat to 10.0.0.8 for 1194:udp`,
	`table ip natnative chain prerouting: all ports dnat to 10.0.0.8 for 4443:tcp`,
	`table ip natnative chain prerouting: all ports dnat to 10.0.0.8 for 7443:tcp`,
	`table ip natnative chain prerouting: all ports dnat to 10.0.0.8 for 53:udp`,
	`table ip natnative chain prerouting: all ports dnat to 10.0.0.8 for 60000-61000:udp`,
	`table ip natnative chain prerouting: all ports dnat to 10.0.0.8 for 3333:tcp`,
	`table ip natnative chain prerouting: all ports dnat to 10.0.0.8 for 5005:udp`,
	`table ip natnative chain prerouting: tcp dport 4443 dnat to the destination in map panels for 4443:tcp`,
	// A regular chain: any nat chain may jump to it. The output chain
	// and the redirects are not reported.
	`table ip natnative chain more: tcp dport 8443 dnat to 10.0.0.44 for 8443:tcp`,
	`table inet natboth chain prerouting: tcp dport 8443 dnat to [2001:db8::10]:8080 for 8443:tcp`,
	`table inet natboth chain prerouting: udp dport 1194 dnat to 10.0.0.94 for 1194:udp`,
	`table ip nat chain PREROUTING: tcp dport { 8443, 9000-9010 } dnat to 10.0.0.5:8080 (an iptables DNAT rule) for 8443:tcp`,
	`table ip nat chain PREROUTING: tcp dport 7443 dnat to 10.0.0.6 (an iptables DNAT rule) for 7443:tcp`,
	`table ip nat chain PREROUTING: udp dport 5000-5010 dnat to 10.0.0.7:6000-6010 (an iptables DNAT rule) for 5005:udp`,
	`table ip nat chain PREROUTING: udp dport != { 53, 67 } dnat to 10.0.0.66 (an iptables DNAT rule) for 5353:udp`,
	`table ip nat chain PREROUTING: udp dport != { 53, 67 } dnat to 10.0.0.66 (an iptables DNAT rule) for 1194:udp`,
	`table ip nat chain PREROUTING: udp dport != { 53, 67 } dnat to 10.0.0.66 (an iptables DNAT rule) for 60000-61000:udp`,
	`table ip nat chain PREROUTING: udp dport != { 53, 67 } dnat to 10.0.0.66 (an iptables DNAT rule) for 5005:udp`,
	`table ip6 nat chain PREROUTING: tcp dport 8443 dnat to [2001:db8::9]:8080 (an iptables DNAT rule) for 8443:tcp`,
}

func TestKernelFindDNATNative(t *testing.T) {
	ns := newNetns(t)
	nstest.Require(t, "iptables", "ip6tables")
	ns.nftInput(t, nativeDNATRuleset)
	for _, argv := range iptablesDNATRules {
		ns.Run(t, "", argv...)
	}
	found := findDNATRecording(t, ns, nativeDNATPorts, "testdata/dnat_native.netlink",
		"nf_tables' answers to FindDNAT for nativeDNATRuleset and iptablesDNATRules (dnat_kernel_test.go),\n"+
			"recorded by TestKernelFindDNATNative -update.")
	checkDNAT(t, found, wantNativeDNAT)
	checkHandles(t, ns, found)
}

// dockerDNATPorts are the ports the Docker test asks about: two that
// dockerd publishes, the container's own port, and one nothing touches.
var dockerDNATPorts = []config.Port{tcp(8443), udp(5353), tcp(8080), tcp(22)}

// wantDockerDNAT is what FindDNAT must report for a container at ip
// published with -p 8443:8080 -p 5353:8080/udp.
func wantDockerDNAT(ip string) []string {
	return []string{
		"table ip nat chain DOCKER: tcp dport 8443 dnat to " + ip + ":8080 (an iptables DNAT rule) for 8443:tcp",
		"table ip nat chain DOCKER: udp dport 5353 dnat to " + ip + ":8080 (an iptables DNAT rule) for 5353:udp",
	}
}

func TestKernelFindDNATDocker(t *testing.T) {
	ns := newNetns(t)
	nstest.Require(t, neighbours.DockerTools...)
	d, err := neighbours.StartDocker(ns.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	})
	if err := d.ImportBusybox("nftknock-busybox"); err != nil {
		t.Fatal(err)
	}
	ip, err := d.RunEcho("web", "nftknock-busybox", "8443:8080", "5353:8080/udp")
	if err != nil {
		t.Fatal(err)
	}
	found := findDNATRecording(t, ns, dockerDNATPorts, "testdata/dnat_docker.netlink",
		"nf_tables' answers to FindDNAT with Debian's docker.io 20.10 running a container\n"+
			"published with -p 8443:8080 -p 5353:8080/udp, recorded by TestKernelFindDNATDocker -update.")
	checkDNAT(t, found, wantDockerDNAT(ip))
	checkHandles(t, ns, found)
}

// findDNATRecording runs FindDNAT in the namespace through a recorder,
// and with -update writes the recording to path.
func findDNATRecording(t *testing.T, ns *netns, ports []config.Port, path, comment string) []DNAT {
	t.Helper()
	real, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: ns.FD})
	if err != nil {
		t.Fatal(err)
	}
	defer real.Close()
	capt := &netlinkCapture{}
	found, err := FindDNAT(ports, nftables.WithTestDial(capt.recorder(real)))
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := capt.write(path, comment); err != nil {
			t.Fatal(err)
		}
	}
	return found
}

// dnatSummary is a finding as checkDNAT compares it: without the handle,
// which depends on how the ruleset was built.
func dnatSummary(d DNAT) string {
	return strings.Replace(d.String(), fmt.Sprintf(" handle %d", d.Handle), "", 1) + " for " + d.Port.String()
}

func checkDNAT(t *testing.T, found []DNAT, want []string) {
	t.Helper()
	got := make([]string, len(found))
	for i, d := range found {
		got[i] = dnatSummary(d)
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("FindDNAT found:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

var handleRE = regexp.MustCompile(`# handle (\d+)$`)

// checkHandles checks that each finding's handle is, in `nft -a list
// chain`, a rule that DNATs.
func checkHandles(t *testing.T, ns *netns, found []DNAT) {
	t.Helper()
	for _, d := range found {
		out := ns.nft(t, "-a", "list", "chain", d.Family, d.Table, d.Chain)
		ok := false
		for _, line := range strings.Split(out, "\n") {
			if m := handleRE.FindStringSubmatch(strings.TrimSpace(line)); m != nil && m[1] == fmt.Sprint(d.Handle) {
				ok = strings.Contains(line, "dnat") || strings.Contains(line, "DNAT")
			}
		}
		if !ok {
			t.Errorf("%s: no DNAT rule with that handle in:\n%s", d, out)
		}
	}
}

// BenchmarkKernelFindDNAT is one search of a namespace holding
// nativeDNATRuleset and iptablesDNATRules: 8 chains, 22 rules, of which
// it reads the 5 chains that may DNAT arriving connections.
func BenchmarkKernelFindDNAT(b *testing.B) {
	ns := newNetns(b)
	nstest.Require(b, "iptables", "ip6tables")
	ns.nftInput(b, nativeDNATRuleset)
	for _, argv := range iptablesDNATRules {
		ns.Run(b, "", argv...)
	}
	for b.Loop() {
		if _, err := FindDNAT(nativeDNATPorts, nftables.WithNetNSFd(ns.FD)); err != nil {
			b.Fatal(err)
		}
	}
}
