package neighbours

import (
	"errors"
)

// UFWTools are the programs ufw needs here (Debian's ufw, and the
// iptables-nft it drives).
var UFWTools = append([]string{"ufw", "iptables", "ip6tables"}, SandboxTools...)

// UFW is ufw enabled in a server namespace. It is no daemon: each ufw
// call loads its rules through iptables-nft and exits. The files it
// writes (/etc/ufw, /lib/ufw, /etc/default/ufw) are private copies.
type UFW struct {
	sb *sandbox
}

// StartUFW enables ufw in network namespace netns with its defaults (deny
// incoming, allow outgoing) and `ufw allow` of each of allow ("22/tcp").
func StartUFW(netns string, allow ...string) (_ *UFW, err error) {
	sb, err := newSandbox(netns, "ufw")
	if err != nil {
		return nil, err
	}
	u := &UFW{sb: sb}
	defer func() {
		if err != nil {
			err = errors.Join(err, u.Close())
		}
	}()
	for _, p := range []string{"/etc/ufw", "/lib/ufw", "/etc/default/ufw"} {
		if err := sb.bindCopy(p); err != nil {
			return u, err
		}
	}
	for _, a := range allow {
		if _, err := u.Cmd("allow", a); err != nil {
			return u, err
		}
	}
	_, err = u.Cmd("--force", "enable")
	return u, err
}

// Cmd runs ufw with args.
func (u *UFW) Cmd(args ...string) (string, error) {
	return u.sb.run(nil, append([]string{"ufw"}, args...)...)
}

// Reload is `ufw reload`: ufw flushes and reloads its chains.
func (u *UFW) Reload() error {
	_, err := u.Cmd("reload")
	return err
}

// Close releases the sandbox and its private copies; ufw's rules stay in
// the network namespace, and go with it.
func (u *UFW) Close() error { return u.sb.close() }
