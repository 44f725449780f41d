package nft

import (
	"fmt"
	"testing"
	"time"

	"github.com/nftknock/nftknock/nft/plan"
)

// TestGrantModeFor: the kernel release picks how Grant restarts a timer.
func TestGrantModeFor(t *testing.T) {
	for release, want := range map[string]grantMode{
		"6.18.44-fc-v1045":  grantUpdate,
		"6.12.0":            grantUpdate,
		"7.0.1":             grantUpdate,
		"6.11.9-amd64":      grantDestroy,
		"6.3.0":             grantDestroy,
		"6.1.0-28-amd64":    grantLegacy, // Debian 12
		"5.15.0-91-generic": grantLegacy,
		"":                  grantLegacy,
		"linux":             grantLegacy,
	} {
		if got := grantModeFor(release); got != want {
			t.Errorf("grantModeFor(%q) = %v, want %v", release, got, want)
		}
	}
}

// TestKernelGrantOneBatch: on every path a knock takes, a grant is one
// batch that the kernel does not refuse, and it leaves the element with
// the grant's timeout and a timer that starts now. The paths: a first
// grant; a grant again while the element is live; a grant again at
// offsets from just as the element expired to two seconds after (the
// kernel may or may not have collected it yet; the daemon's estimate of
// the expiry lags by up to a second); a grant after someone flushed the
// set behind the daemon's back; a grant from a Firewall that did not
// install (the nftknock tool). Checked in each mode this kernel can run:
// update and destroy+add. (The legacy mode, for kernels older than 6.3,
// aborts a batch after an expiry by design; TestKernelGrantExpiredFallback
// covers it.)
func TestKernelGrantOneBatch(t *testing.T) {
	t.Parallel()
	requireKernel(t)
	if m := grantModeFor(kernelRelease()); m != grantUpdate {
		t.Fatalf("this kernel (%s) picks mode %v: the test expects a kernel of 6.12 or later", kernelRelease(), m)
	}
	const short, long = time.Second, 4 * time.Second
	type path struct {
		name  string
		setup func(t *testing.T, f *Firewall, ns *netns, addr string) *Firewall // returns the Firewall that grants
	}
	paths := []path{
		{"first", func(t *testing.T, f *Firewall, ns *netns, addr string) *Firewall { return f }},
		{"live", func(t *testing.T, f *Firewall, ns *netns, addr string) *Firewall {
			grant(t, f, "ssh", addr, long)
			time.Sleep(time.Second)
			return f
		}},
		{"flushed set", func(t *testing.T, f *Firewall, ns *netns, addr string) *Firewall {
			grant(t, f, "ssh", addr, long)
			ns.Run(t, "", "nft", "flush", "set", "inet", "nftknock", plan.SetName("ssh", mustAddr(addr).Is6()))
			return f
		}},
		{"tool", func(t *testing.T, f *Firewall, ns *netns, addr string) *Firewall {
			grant(t, f, "ssh", addr, long)
			time.Sleep(time.Second)
			return ns.open(t, "nftknock")
		}},
	}
	for _, off := range []time.Duration{0, 5 * time.Millisecond, 50 * time.Millisecond, 300 * time.Millisecond, time.Second, 2 * time.Second} {
		paths = append(paths, path{fmt.Sprintf("after expiry +%v", off), func(t *testing.T, f *Firewall, ns *netns, addr string) *Firewall {
			grant(t, f, "ssh", addr, short)
			time.Sleep(short + off)
			return f
		}})
	}
	for _, mode := range []grantMode{grantUpdate, grantDestroy} {
		for _, p := range paths {
			t.Run(mode.String()+"/"+p.name, func(t *testing.T) {
				t.Parallel()
				ns := newNetns(t)
				f := ns.open(t, "nftknock")
				f.mode = mode
				install(t, f, defaultPlan("nftknock"))
				for _, addr := range []string{"192.0.2.1", "2001:db8::1"} {
					g := p.setup(t, f, ns, addr)
					g.mode = mode
					before := g.Stats()
					grant(t, g, "ssh", addr, long)
					if d := g.Stats(); d.Batches-before.Batches != 1 || d.Refused != before.Refused {
						t.Errorf("%s: the grant took %d batches, %d refused; want 1, none refused",
							addr, d.Batches-before.Batches, d.Refused-before.Refused)
					}
					el := mustGrantOf(t, f, "ssh", addr)
					if el.Timeout != long || el.Expires < long-500*time.Millisecond {
						t.Errorf("%s: element has timeout %v, expires in %v; want timeout %v and a timer restarted now", addr, el.Timeout, el.Expires, long)
					}
				}
			})
		}
	}
}
