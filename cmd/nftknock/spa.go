package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/nftknock/nftknock/knock/spa"
)

// defaultSPAPort is the port `nftknock spa` sends to without -p.
const defaultSPAPort = 62201

var keygenCmd = &command{
	name:     "keygen",
	synopsis: "",
	summary:  "print a new random 256-bit door key (base64) for a key file",
	help: `Prints the base64 of 32 random bytes from the system's secure random
source, and a newline: the contents of a door's key_file. Keep it secret:
on the server, root-owned with mode 0600; on a client, a file only its
user can read. For example:

    umask 077; nftknock keygen > /etc/nftknock/ssh.key`,
	flags: func(fs *flag.FlagSet) func(*env, []string) int {
		return func(e *env, args []string) int {
			if len(args) != 0 {
				return usageErr(e, "keygen", "takes no arguments")
			}
			fmt.Fprint(e.stdout, spa.GenerateKey())
			return exitOK
		}
	},
}

var spaCmd = &command{
	name:     "spa",
	synopsis: "-door NAME -key-file FILE [-allow ADDRESS] [-p PORT] HOST",
	summary:  "open an SPA door with one authenticated UDP datagram",
	help: `Sends HOST one UDP datagram, sealed with the door's key, that asks the
door to open for the datagram's source address, or with -allow for
ADDRESS (the door must have spa_allow_requested = true). Nothing answers:
check by connecting to the port the door opens. A key file that the
group or others can read is refused.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) int {
		door := fs.String("door", "", "the `door` to open (required)")
		keyFile := fs.String("key-file", "", "the door's key `file` (required)")
		allow := fs.String("allow", "", "ask the door to open for this `address` instead of the source")
		port := fs.Int("p", defaultSPAPort, "the door's spa_port")
		return func(e *env, args []string) int {
			if len(args) != 1 {
				return usageErr(e, "spa", "give one HOST")
			}
			if *door == "" || *keyFile == "" {
				return usageErr(e, "spa", "-door and -key-file are required")
			}
			if *port < 1 || *port > 65535 {
				return usageErr(e, "spa", "-p %d is out of range 1-65535", *port)
			}
			var req netip.Addr
			if *allow != "" {
				a, err := netip.ParseAddr(*allow)
				if err != nil || a.Zone() != "" {
					return usageErr(e, "spa", "-allow %q is not an IPv4 or IPv6 address", *allow)
				}
				req = a
			}
			d, err := sealFromFile(*keyFile, *door, req, e.now())
			if err == nil {
				err = sendUDP(args[0], *port, d)
			}
			if err != nil {
				fail(e, "spa", err)
				return exitFail
			}
			return exitOK
		}
	},
}

// sealFromFile reads a client key file and seals a request.
func sealFromFile(path, door string, req netip.Addr, now time.Time) ([]byte, error) {
	raw, err := spa.ReadKeyFile(path)
	if err != nil {
		return nil, err
	}
	k, err := spa.NewKey(raw)
	if err != nil {
		return nil, err
	}
	return spa.Seal(k, door, req, now)
}

func sendUDP(host string, port int, b []byte) error {
	c, err := net.Dial("udp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return err
	}
	defer c.Close()
	n, err := c.Write(b)
	if err == nil && n != len(b) {
		err = errors.New("short write")
	}
	return err
}
