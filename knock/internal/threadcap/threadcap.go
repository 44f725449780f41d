// Package threadcap runs a function on an OS thread that has lost some
// capabilities, so that a test run as root meets the kernel's checks as
// nftknockd under its unit does (CAP_NET_ADMIN alone).
package threadcap

import (
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// Without runs f on a thread of its own whose effective set lacks caps
// (unix.CAP_* numbers below 32) and returns f's error. Capabilities are per
// thread: this one is never unlocked, so it ends with its goroutine instead
// of running other code without them.
func Without(f func() error, caps ...uint) error {
	errc := make(chan error, 1)
	go func() {
		// Unless f returns: it called runtime.Goexit (t.Fatal, say).
		err := errors.New("the function run without capabilities did not return")
		defer func() { errc <- err }()
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if e := unix.Capget(&hdr, &data[0]); e != nil {
			err = fmt.Errorf("capget: %w", e)
			return
		}
		for _, c := range caps {
			data[0].Effective &^= 1 << c
		}
		if e := unix.Capset(&hdr, &data[0]); e != nil {
			err = fmt.Errorf("capset: %w", e)
			return
		}
		err = f()
	}()
	return <-errc
}
