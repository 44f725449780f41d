package fwknop

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadKeyFile(t *testing.T) {
	dir := t.TempDir()
	raw := bytes.Repeat([]byte{0xc3}, 64)
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	std := base64.StdEncoding.EncodeToString(raw)
	for _, c := range []struct {
		name, content string
		mode          os.FileMode
		err           string // "" for success
	}{
		{"padded", std + "\n", 0o600, ""},
		{"unpadded", strings.TrimRight(std, "=") + "\n", 0o600, ""},
		{"crlf and spaces", "  " + std + "\r\n", 0o400, ""},
		{"group readable", std + "\n", 0o640, "readable by group or others"},
		{"world readable", std + "\n", 0o604, "readable by group or others"},
		{"with its name", "HMAC_KEY_BASE64 " + std + "\n", 0o600, "more than one word"},
		{"two lines", std + "\n" + std + "\n", 0o600, "more than one word"},
		{"empty", "\n", 0o600, "empty"},
		{"not base64", "__CHANGEME__\n", 0o600, "not base64"},
		{"129 bytes", base64.StdEncoding.EncodeToString(make([]byte, MaxHMACKey+1)), 0o600, "holds 129 bytes"},
		{"far too long", strings.Repeat("A", 1000), 0o600, "longer than any fwknop key"},
	} {
		p := write(strings.ReplaceAll(c.name, " ", "_"), c.content, c.mode)
		got, err := ReadKeyFile(p)
		switch {
		case c.err == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.err == "" && !bytes.Equal(got, raw):
			t.Errorf("%s: read %x", c.name, got)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.err)
		case c.err != "" && !strings.Contains(err.Error(), p):
			t.Errorf("%s: the error does not name the file: %v", c.name, err)
		}
	}
	if _, err := ReadKeyFile(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a directory: %v", err)
	}
	if _, err := ReadKeyFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file: no error")
	}
}

// TestGoldenKeysParse: what fwknop --key-gen prints is what a key file
// holds, and NewKey takes it.
func TestGoldenKeysParse(t *testing.T) {
	for name, k := range readGoldenKeys(t) {
		if name == "pass" {
			continue
		}
		enc, err := ParseKey([]byte(k.enc))
		if err != nil || len(enc) != 32 {
			t.Errorf("%s KEY_BASE64: %d bytes, %v", name, len(enc), err)
		}
		mac, err := ParseKey([]byte(k.hmac))
		if err != nil || len(mac) != 64 {
			t.Errorf("%s HMAC_KEY_BASE64: %d bytes, %v", name, len(mac), err)
		}
		if _, err := NewKey(enc, mac); err != nil {
			t.Error(err)
		}
	}
}
