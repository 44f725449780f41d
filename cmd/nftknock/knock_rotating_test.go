package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock/rotate"
	"github.com/nftknock/nftknock/knock/spa"
)

func rotKey(t *testing.T, mode os.FileMode) (string, []byte) {
	t.Helper()
	text := spa.GenerateKey()
	path := filepath.Join(t.TempDir(), "rot.key")
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	raw, err := spa.ParseKey([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return path, raw
}

// TestRotatingSteps: the client sends what the daemon derives for the
// window the client is in (less a quarter window), with the defaults the
// config has.
func TestRotatingSteps(t *testing.T) {
	path, raw := rotKey(t, 0o600)
	f := &rotatingFlags{door: "rot", keyFile: path, length: config.DefaultSequenceLength, ports: config.DefaultSequencePorts, every: config.DefaultRotateEvery}
	every := config.DefaultRotateEvery
	start := rotate.Start(60_000_000, every)
	ports, _ := config.ParsePort(config.DefaultSequencePorts)
	daemon := rotate.NewDeriver(raw, "rot", config.DefaultSequenceLength, ports)
	for _, c := range []struct {
		at     time.Duration // into window 60000000
		window uint64
	}{
		{time.Second, 59_999_999}, // early in a window: the one before
		{every / 2, 60_000_000},
	} {
		got, err := f.steps(start.Add(c.at))
		if err != nil {
			t.Fatal(err)
		}
		if want := daemon.Sequence(c.window); !equalPorts(got, want) {
			t.Errorf("%s into the window: %v, want window %d's %v", c.at, got, c.window, want)
		}
	}
	// Other parameters change the sequence, as they do on the daemon.
	f.length, f.ports = 6, "30000-30999:udp"
	got, err := f.steps(start.Add(every / 2))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 6 || got[0].Proto != config.UDP || got[0].Num < 30000 || got[0].Num > 30999 {
		t.Errorf("-length 6 -ports 30000-30999:udp gave %v", got)
	}
}

func TestRotatingStepsRefuses(t *testing.T) {
	good, _ := rotKey(t, 0o600)
	loose, _ := rotKey(t, 0o644)
	ok := rotatingFlags{door: "rot", keyFile: good, length: 4, ports: "20000-40000:tcp", every: 30 * time.Second}
	for _, c := range []struct {
		name  string
		edit  func(f *rotatingFlags)
		usage bool
		want  string
	}{
		{"no door", func(f *rotatingFlags) { f.door = "" }, true, "-key-file needs -door"},
		{"no key", func(f *rotatingFlags) { f.keyFile = "" }, true, "-door needs -key-file"},
		{"length", func(f *rotatingFlags) { f.length = 40 }, true, "-length 40"},
		{"every", func(f *rotatingFlags) { f.every = time.Millisecond }, true, "-every 1ms"},
		{"single port", func(f *rotatingFlags) { f.ports = "20000" }, true, "give the door's range"},
		{"icmp", func(f *rotatingFlags) { f.ports = "1:icmp" }, true, "-ports:"},
		{"key others can read", func(f *rotatingFlags) { f.keyFile = loose }, false, "readable by group or others"},
	} {
		f := ok
		c.edit(&f)
		_, err := f.steps(time.Now())
		if err == nil || isUsage(err) != c.usage || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v (usage %v), want %q", c.name, err, isUsage(err), c.want)
		}
	}
}

func isUsage(err error) bool {
	var u usageError
	return errors.As(err, &u)
}

func equalPorts(a, b []config.Port) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
