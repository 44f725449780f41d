package config

import (
	"slices"
	"testing"
	"time"
)

const keySPADoor = `
[[door]]
name = "team"
spa_port = "62203:udp"
authorized_keys = ["/etc/nftknock/team.authorized_keys", "/home/*/.ssh/authorized_keys"]
open = ["22:tcp"]
open_for = "30s"
`

// TestKeySPADoor: authorized_keys makes a door a public-key SPA door
// (spa_port, the shared-key kind's selector, is its key too), with the
// top-level server_key_file handed to it and the SPA defaults.
func TestKeySPADoor(t *testing.T) {
	cfg, err := Parse("f.toml", []byte(`server_key_file = "/etc/ssh/ssh_host_ed25519_key"`+"\n"+keySPADoor))
	if err != nil {
		t.Fatal(err)
	}
	k, ok := cfg.Doors[0].Kind.(*KeySPA)
	if !ok {
		t.Fatalf("kind %T, want *KeySPA", cfg.Doors[0].Kind)
	}
	if k.Port != (Port{Num: 62203, Proto: UDP}) || k.MaxAge != 30*time.Second || k.AllowRequested ||
		!slices.Equal(k.AuthorizedKeys, []string{"/etc/nftknock/team.authorized_keys", "/home/*/.ssh/authorized_keys"}) ||
		k.ServerKeyFile != "/etc/ssh/ssh_host_ed25519_key" || cfg.ServerKeyFile != k.ServerKeyFile {
		t.Errorf("door %+v, config server_key_file %q", k, cfg.ServerKeyFile)
	}
	if c := k.Claims(); len(c) != 1 || c[0].Port != k.Port || c[0].Field != "spa_port" {
		t.Errorf("claims %+v", c)
	}
}

func TestKeySPADoorRejects(t *testing.T) {
	const server = `server_key_file = "/etc/ssh/ssh_host_ed25519_key"` + "\n"
	door := func(extra string) string {
		return "[[door]]\nname = \"team\"\nopen = [\"22:tcp\"]\nopen_for = \"30s\"\n" + extra
	}
	const keys = `authorized_keys = ["/etc/nftknock/team.authorized_keys"]` + "\n"
	const port = `spa_port = "62203:udp"` + "\n"
	checkRejects(t, []rejectCase{
		{"no server key", keySPADoor, []string{`f.toml:5: door "team": authorized_keys: a public-key SPA door needs the server's key`, "set server_key_file at the top level"}},
		{"relative server key", `server_key_file = "host.key"` + "\n" + keySPADoor, []string{`f.toml:1: server_key_file: "host.key" must be an absolute path`}},
		{"server key in a door", door(keys + port + "server_key_file = \"/k\"\n"), []string{`door "team": server_key_file: unknown key in [[door]]`}},
		{"no port", server + door(keys), []string{`door "team": spa_port: missing: a public-key SPA door needs the UDP port`}},
		{"tcp port", server + door(keys+`spa_port = "62203:tcp"`+"\n"), []string{`spa_port:`, `UDP port`}},
		{"key_file too", server + door(keys+port+"key_file = \"/etc/nftknock/k\"\n"), []string{`door "team": key_file: a public-key SPA door (one with authorized_keys) opens for the SSH keys its files list, with no shared key`}},
		{"empty list", server + door("authorized_keys = []\n"+port), []string{`authorized_keys: empty: list the authorized_keys files`}},
		{"not a list", server + door("authorized_keys = \"/etc/k\"\n"+port), []string{`authorized_keys: want a list of strings`}},
		{"relative path", server + door(`authorized_keys = ["/etc/a", "team.keys"]`+"\n"+port), []string{`authorized_keys[1]: "team.keys" must be an absolute path`}},
		{"bad glob", server + door(`authorized_keys = ["/home/[/.ssh/authorized_keys"]`+"\n"+port), []string{`authorized_keys[0]: "/home/[/.ssh/authorized_keys" is not a valid glob`}},
		{"sequence too", server + door(keys+port+"sequence = [\"7000\"]\n"), []string{`door "team": sequence: a door has either authorized_keys or sequence, not both`}},
		{"seq_timeout", server + door(keys+port+"seq_timeout = \"5s\"\n"), []string{`seq_timeout: an SPA door has no knock sequence to time out`}},
		{"port of another SPA door", server + door(keys+port) + "[[door]]\nname = \"vpn\"\nspa_port = \"62203:udp\"\nkey_file = \"/etc/nftknock/vpn.key\"\nopen = [\"1194:udp\"]\nopen_for = \"30s\"\n",
			[]string{`door "vpn": spa_port: 62203:udp overlaps 62203:udp, door "team"'s SPA port`}},
		{"port opened", server + door(keys+`spa_port = "22:tcp"`+"\n"), []string{`spa_port:`}},
		{"spa_max_age on a knock door", door("sequence = [\"7000\"]\nseq_timeout = \"5s\"\n") + "spa_max_age = \"5s\"\n", []string{`door "team": spa_max_age: only a public-key SPA door (one with authorized_keys) or an SPA door (one with spa_port) has spa_max_age`}},
	})
}
