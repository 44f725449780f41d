package main

import (
	"flag"
	"fmt"
	"time"

	"github.com/nftknock/nftknock/config"
	"github.com/nftknock/nftknock/knock/rotate"
	"github.com/nftknock/nftknock/knock/spa"
)

// rotatingFlags are `nftknock knock -door NAME -key-file F HOST`'s: the
// door's parameters, defaulting to the config's defaults, so that a door
// that keeps them needs only its name and key here.
type rotatingFlags struct {
	door, keyFile, ports string
	length               int
	every                time.Duration
}

func addRotatingFlags(fs *flag.FlagSet) *rotatingFlags {
	f := &rotatingFlags{}
	fs.StringVar(&f.door, "door", "", "knock on the rotating door `NAME`: send the sequence valid now (no PORT arguments)")
	fs.StringVar(&f.keyFile, "key-file", "", "the rotating door's key `file` (its sequence_key_file; mode 0600)")
	fs.IntVar(&f.length, "length", config.DefaultSequenceLength, "the door's sequence_length")
	fs.StringVar(&f.ports, "ports", config.DefaultSequencePorts, "the door's sequence_ports `range`")
	fs.DurationVar(&f.every, "every", config.DefaultRotateEvery, "the door's rotate_every")
	return f
}

// set tells whether the rotating form was asked for.
func (f *rotatingFlags) set() bool { return f.door != "" || f.keyFile != "" }

// steps computes the sequence the door accepts at now: the one of the
// window of now - every/4 (see rotate.ClientWindow). Usage problems are
// usageErrors.
func (f *rotatingFlags) steps(now time.Time) ([]config.Port, error) {
	switch {
	case f.door == "":
		return nil, usageError("-key-file needs -door NAME")
	case f.keyFile == "":
		return nil, usageError("-door needs -key-file FILE (the door's sequence_key_file)")
	case f.length < config.MinRotatingLength || f.length > config.MaxRotatingLength:
		return nil, usageError(fmt.Sprintf("-length %d: a rotating door's sequence_length is %d-%d", f.length, config.MinRotatingLength, config.MaxRotatingLength))
	case f.every < config.MinRotateEvery:
		return nil, usageError(fmt.Sprintf("-every %s: a rotating door's rotate_every is at least %s", f.every, config.MinRotateEvery))
	}
	ports, err := config.ParsePort(f.ports)
	if err != nil {
		return nil, usageError(fmt.Sprintf("-ports: %v", err))
	}
	if ports.Last <= ports.Num {
		return nil, usageError(fmt.Sprintf("-ports %q: give the door's range, FIRST-LAST[:tcp|udp]", f.ports))
	}
	key, err := spa.ReadKeyFile(f.keyFile)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	w := rotate.ClientWindow(now, f.every)
	return rotate.NewDeriver(key, f.door, f.length, ports).Sequence(w), nil
}
