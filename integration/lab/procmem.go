package lab

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// MemSampler reads a process's peak resident memory (VmHWM) and its
// resident memory (VmRSS) from /proc every 100 ms, for benchmarks that
// report a daemon's peak RSS.
type MemSampler struct {
	quit     chan struct{}
	done     chan struct{}
	once     sync.Once
	hwm, rss int64
	timeline []int64 // VmRSS once a second
}

// SampleMem starts sampling pid.
func SampleMem(pid int) *MemSampler {
	s := &MemSampler{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			if hwm, rss, err := MemStatus(pid); err == nil {
				s.hwm, s.rss = max(s.hwm, hwm), max(s.rss, rss)
				if i%10 == 0 {
					s.timeline = append(s.timeline, rss)
				}
			}
			select {
			case <-s.quit:
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// Stop ends sampling (after one last sample) and returns the highest
// VmHWM and VmRSS seen, in bytes. It may be called more than once.
func (s *MemSampler) Stop() (hwm, rss int64) {
	s.once.Do(func() { close(s.quit) })
	<-s.done
	return s.hwm, s.rss
}

// Timeline stops sampling, as Stop does, and returns VmRSS once a second.
func (s *MemSampler) Timeline() []int64 {
	s.Stop()
	return s.timeline
}

// MemStatus returns VmHWM and VmRSS of pid, in bytes.
func MemStatus(pid int) (hwm, rss int64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	found := 0
	for _, line := range strings.Split(string(data), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok || (key != "VmHWM" && key != "VmRSS") {
			continue
		}
		f := strings.Fields(val) // "12345 kB"
		if len(f) != 2 || f[1] != "kB" {
			return 0, 0, fmt.Errorf("/proc/%d/status: %q", pid, line)
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, 0, err
		}
		if key == "VmHWM" {
			hwm = n << 10
		} else {
			rss = n << 10
		}
		found++
	}
	if found != 2 {
		return 0, 0, errors.New("no VmHWM/VmRSS in /proc status")
	}
	return hwm, rss, nil
}

// CPUTime is the CPU time pid has used, user and system, from
// /proc/<pid>/stat (fields 14 and 15, in clock ticks of 1/100 s).
func CPUTime(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(data), ')')
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too short", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}
