package fwknop

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/nftknock/nftknock/knock/spa"
)

// ReadKeyFile reads a door's fwknop_key_file or fwknop_hmac_key_file: one
// line holding an access.conf stanza's KEY_BASE64 or HMAC_KEY_BASE64 value
// (what `fwknop --key-gen` prints), and returns the decoded bytes. Like
// spa.ReadKeyFile it refuses a file that is not regular or that group or
// others can read; who may write it (config.CheckPrivate) is the config
// loader's check.
func ReadKeyFile(path string) ([]byte, error) {
	data, err := spa.ReadSecretFile(path)
	if err != nil {
		return nil, err
	}
	raw, err := ParseKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return raw, nil
}

// ParseKey reads a key file's contents: one base64 value, with or without
// its '=' padding, surrounding white space allowed, at most MaxHMACKey
// bytes decoded. NewKey checks the length each key may have.
func ParseKey(text []byte) ([]byte, error) {
	s := strings.TrimSpace(string(text))
	switch {
	case s == "":
		return nil, errors.New("empty: write the stanza's KEY_BASE64 or HMAC_KEY_BASE64 value on one line")
	case strings.ContainsAny(s, " \t\r\n"):
		return nil, errors.New("more than one word: write only the KEY_BASE64 or HMAC_KEY_BASE64 value, on one line, without its name")
	}
	enc := base64.StdEncoding
	if !strings.HasSuffix(s, "=") && len(s)%4 != 0 {
		enc = base64.RawStdEncoding
	}
	if enc.DecodedLen(len(s)) > MaxHMACKey+2 {
		return nil, fmt.Errorf("%d characters: longer than any fwknop key (%d bytes at most)", len(s), MaxHMACKey)
	}
	raw, err := enc.DecodeString(s)
	if err != nil {
		return nil, errors.New("not base64: a key file holds a KEY_BASE64 or HMAC_KEY_BASE64 value (fwknop --key-gen makes them)")
	}
	if len(raw) == 0 || len(raw) > MaxHMACKey {
		return nil, fmt.Errorf("holds %d bytes; an fwknop key has 1-%d", len(raw), MaxHMACKey)
	}
	return raw, nil
}
