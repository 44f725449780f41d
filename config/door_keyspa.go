package config

import (
	"fmt"
	"path/filepath"
	"time"
)

// KeySPA is a public-key single-packet authorization door's kind: one UDP
// datagram to Port, signed with an SSH key that one of the
// AuthorizedKeys files lists and sealed to the server's key
// (server_key_file), opens it (knock/sshspa).
type KeySPA struct {
	// Port is the UDP port the datagrams go to.
	Port Port
	// AuthorizedKeys are the paths (globs allowed) of the OpenSSH
	// authorized_keys files whose keys may knock (read by the daemon).
	AuthorizedKeys []string
	// ServerKeyFile is the configuration's top-level server_key_file,
	// copied here so that the door has it (read by the daemon).
	ServerKeyFile string
	// MaxAge and AllowRequested are as an SPA door's.
	MaxAge         time.Duration
	AllowRequested bool
}

// KindName implements Kind.
func (*KeySPA) KindName() string { return "public-key single-packet authorization" }

// Claims implements Kind: the SPA port, the door's own, as a shared-key
// SPA door's.
func (k *KeySPA) Claims() []Claim { return []Claim{spaClaim(k.Port)} }

// maxAuthorizedKeys bounds a door's authorized_keys list (each entry may
// be a glob: knock/authkeys bounds the files it names together).
const maxAuthorizedKeys = 64

// keySPAKind comes before spaKind in Kinds: a door with authorized_keys is
// a public-key door though it has spa_port, the shared-key kind's
// selector too.
var keySPAKind = KindSpec{
	Name:      "a public-key SPA door (one with authorized_keys)",
	Selectors: []string{"authorized_keys"},
	Keys:      []string{"authorized_keys", "spa_port", "spa_max_age", "spa_allow_requested"},
	Refuse: map[string]string{
		"key_file":    "a public-key SPA door (one with authorized_keys) opens for the SSH keys its files list, with no shared key: remove %s (or authorized_keys, for a shared-key SPA door)",
		"seq_timeout": "an SPA door has no knock sequence to time out: remove %s",
	},
	Parse: parseKeySPA,
}

func parseKeySPA(p *DoorParser) Kind {
	k := &KeySPA{}
	if !p.Has("spa_port") {
		p.Errorf("spa_port", "missing: a public-key SPA door needs the UDP port its datagrams go to, e.g. \"62203:udp\"")
	} else {
		k.Port = spaPort(p)
	}
	paths, ok := p.Strings("authorized_keys")
	switch {
	case ok && len(paths) == 0:
		p.Errorf("authorized_keys", "empty: list the authorized_keys files whose keys may knock, e.g. [\"/etc/nftknock/team.authorized_keys\", \"/home/*/.ssh/authorized_keys\"]")
	case len(paths) > maxAuthorizedKeys:
		p.Errorf("authorized_keys", "%d entries; at most %d are allowed (a glob names many files)", len(paths), maxAuthorizedKeys)
	}
	for j, s := range paths {
		field := fmt.Sprintf("authorized_keys[%d]", j)
		if !filepath.IsAbs(s) {
			p.Errorf(field, "%q must be an absolute path", s)
			continue
		}
		if _, err := filepath.Match(s, ""); err != nil {
			p.Errorf(field, "%q is not a valid glob: %v", s, err)
			continue
		}
		k.AuthorizedKeys = append(k.AuthorizedKeys, s)
	}
	k.MaxAge = p.Duration("spa_max_age", DefaultSPAMaxAge, maxSPAMaxAge)
	k.AllowRequested, _ = p.Bool("spa_allow_requested")
	return k
}

// needServerKey gives each public-key SPA door of cfg the top-level
// server_key_file, or reports the doors that have none to use.
func (v *validator) needServerKey(cfg *Config) {
	for i := range cfg.Doors {
		k, ok := cfg.Doors[i].Kind.(*KeySPA)
		if !ok {
			continue
		}
		if cfg.ServerKeyFile == "" {
			v.add(i, cfg.Doors[i].Name, "authorized_keys",
				"a public-key SPA door needs the server's key to open its datagrams: set server_key_file at the top level, before the first [[door]] (e.g. server_key_file = \"/etc/ssh/ssh_host_ed25519_key\", or a key from nftknock keygen -server FILE)")
			continue
		}
		k.ServerKeyFile = cfg.ServerKeyFile
	}
}
