package nft

import (
	"net/netip"
	"time"

	"github.com/google/nftables"

	"github.com/nftknock/nftknock/config"
)

func tcp(n uint16) config.Port { return config.Port{Num: n, Proto: config.TCP} }
func udp(n uint16) config.Port { return config.Port{Num: n, Proto: config.UDP} }

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// defaultConfig is the shipped example: door ssh knocks 7000/tcp, 8000/udp,
// 9000/tcp and opens 22/tcp.
func defaultConfig() *config.Config {
	return &config.Config{
		File:       "test.toml",
		NFLOGGroup: config.DefaultNFLOGGroup,
		Table:      config.DefaultTable,
		MaxTracked: config.DefaultMaxTracked,
		Doors: []config.Door{{
			Name:       "ssh",
			Sequence:   []config.Port{tcp(7000), udp(8000), tcp(9000)},
			SeqTimeout: 10 * time.Second,
			TCPFlags:   config.DefaultTCPFlags,
			Open:       []config.Port{tcp(22)},
			OpenFor:    30 * time.Second,
		}},
	}
}

// sharedConfig has two doors that share an opened port (22/tcp) and a knock
// port (9000/tcp: step 3 of ssh, step 1 of admin).
func sharedConfig() *config.Config {
	cfg := defaultConfig()
	cfg.Doors = append(cfg.Doors, config.Door{
		Name:       "admin",
		Sequence:   []config.Port{tcp(9000), udp(7001)},
		SeqTimeout: 5 * time.Second,
		TCPFlags:   config.DefaultTCPFlags,
		Open:       []config.Port{tcp(22), tcp(8443)},
		OpenFor:    time.Hour,
	})
	return cfg
}

// elem is a one-element list for the library's set calls.
func elem(addr string, timeout time.Duration) []nftables.SetElement {
	return []nftables.SetElement{{Key: mustAddr(addr).AsSlice(), Timeout: timeout}}
}

// doorsConfig has a door of each kind besides the fixed knock: an SPA door
// (vpn, 62201/udp) and a rotating door (rot, 20000-40000/tcp).
func doorsConfig() *config.Config {
	cfg := defaultConfig()
	cfg.Doors = append(cfg.Doors, config.Door{
		Name:      "vpn",
		SPAPort:   udp(62201),
		Key:       make([]byte, 32),
		SPAMaxAge: 30 * time.Second,
		TCPFlags:  config.DefaultTCPFlags,
		Open:      []config.Port{udp(1194)},
		OpenFor:   time.Minute,
	}, config.Door{
		Name:           "rot",
		SequenceKey:    make([]byte, 32),
		SequenceLength: 3,
		SequencePorts:  config.Port{Num: 20000, Last: 40000, Proto: config.TCP},
		RotateEvery:    30 * time.Second,
		SeqTimeout:     10 * time.Second,
		TCPFlags:       config.DefaultTCPFlags,
		Open:           []config.Port{tcp(2222)},
		OpenFor:        30 * time.Second,
	})
	return cfg
}

// rotSeqs are two windows' sequences for doorsConfig's rot door; 25000 is
// the first knock of one and a later knock of the other.
var rotSeqs = [][]config.Port{
	{tcp(31000), tcp(25000), tcp(22222)},
	{tcp(25000), tcp(36000), tcp(21111)},
}
