// Package config turns an nftknock TOML file into validated domain types.
//
// Decoding is strict (an unknown key is an error) and happens in two steps,
// as in CoreRAD: the TOML is decoded into raw structs of strings and
// integers, and those are then validated into the types below. Every error
// names the file, the door and the field.
package config

import (
	"fmt"
	"time"
)

// Proto is an IP protocol number a knock or an opened port uses.
type Proto uint8

// The protocols a port may name.
const (
	TCP Proto = 6
	UDP Proto = 17
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// Port is a transport port with its protocol, as knockd writes it:
// "7000", "7000:tcp" or "8000:udp".
type Port struct {
	Num   uint16
	Proto Proto
}

func (p Port) String() string { return fmt.Sprintf("%d:%s", p.Num, p.Proto) }

// Door is one knock sequence and what it opens.
type Door struct {
	// Name is unique, [a-z0-9_]+; the door's sets are <Name>_v4 and <Name>_v6.
	Name string
	// Sequence is the ordered list of knocks.
	Sequence []Port
	// SeqTimeout bounds the whole sequence, counted from the first knock.
	SeqTimeout time.Duration
	// Open lists the ports a completed knock opens to the knocking source.
	Open []Port
	// OpenFor is the timeout of the kernel set element a knock adds.
	OpenFor time.Duration
}

// Config is a whole validated configuration.
type Config struct {
	// File is where the configuration was read from, for messages.
	File string
	// NFLOGGroup is the netlink log group the knock rules log to.
	NFLOGGroup uint16
	// Table is the name of the `table inet` the daemon owns.
	Table string
	// MaxTracked bounds the number of sources whose progress is tracked.
	MaxTracked int
	// Doors are the configured doors, in file order.
	Doors []Door
}

// Defaults for the optional top-level keys.
const (
	DefaultNFLOGGroup = 7113
	DefaultTable      = "nftknock"
	DefaultMaxTracked = 65536
)
