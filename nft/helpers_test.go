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
