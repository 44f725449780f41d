package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// TestLoggerLeavesTimestampsToJournald: with stderr connected to the
// journal (JOURNAL_STREAM names its device and inode), lines carry no
// timestamp; otherwise they start with one.
func TestLoggerLeavesTimestampsToJournald(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	stamp := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d`)

	t.Setenv("JOURNAL_STREAM", "")
	newLogger(f).Info("door opened", zap.String("door", "ssh"))
	t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino+1)) // some other stream
	newLogger(f).Info("door opened", zap.String("door", "ssh"))
	t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino))
	newLogger(f).Info("door opened", zap.String("door", "ssh"))

	out, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 3 {
		t.Fatalf("got %d lines, want 3:\n%s", len(lines), out)
	}
	if !stamp.MatchString(lines[0]) || !stamp.MatchString(lines[1]) {
		t.Errorf("not under journald, a line must start with a timestamp:\n%s\n%s", lines[0], lines[1])
	}
	if want := "INFO\tdoor opened\t{\"door\": \"ssh\"}"; lines[2] != want {
		t.Errorf("under journald: %q, want %q", lines[2], want)
	}
}
