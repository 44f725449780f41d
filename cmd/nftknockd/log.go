package main

import (
	"fmt"
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"
)

// newLogger logs one readable line per event to w. Under systemd, when
// stderr is the journal, it leaves out the timestamp: journald adds its own.
func newLogger(w *os.File) *zap.Logger {
	enc := zap.NewDevelopmentEncoderConfig()
	enc.EncodeLevel = zapcore.CapitalLevelEncoder
	enc.CallerKey = ""
	enc.StacktraceKey = ""
	if stderrIsJournal(w) {
		enc.TimeKey = ""
	} else {
		enc.EncodeTime = zapcore.RFC3339TimeEncoder
	}
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.Lock(w), zap.InfoLevel)
	return zap.New(core)
}

// stderrIsJournal follows systemd.exec(5): JOURNAL_STREAM holds the device
// and inode of the journal stream connected to stdout/stderr.
func stderrIsJournal(w *os.File) bool {
	js := os.Getenv("JOURNAL_STREAM")
	if js == "" {
		return false
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(w.Fd()), &st); err != nil {
		return false
	}
	return js == fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}
