package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// FwknopKeys are an access.conf stanza's KEY_BASE64 and HMAC_KEY_BASE64,
// as `fwknop --key-gen` prints them.
type FwknopKeys struct{ Enc, HMAC string }

// Args are the client's arguments that give it the keys.
func (k FwknopKeys) Args() []string {
	return []string{"--use-hmac", "--key-base64-rijndael", k.Enc, "--key-base64-hmac", k.HMAC}
}

// FwknopKeyGen has the stock client (Debian's fwknop-client) make a key
// pair, with home as its HOME (it keeps files there).
func FwknopKeyGen(home string) (FwknopKeys, error) {
	cmd := exec.Command("fwknop", "--no-rc-file", "--key-gen")
	cmd.Env = fwknopEnv(home)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return FwknopKeys{}, fmt.Errorf("fwknop --key-gen: %v: %s", err, out)
	}
	var k FwknopKeys
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "KEY_BASE64: "); ok {
			k.Enc = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "HMAC_KEY_BASE64: "); ok {
			k.HMAC = strings.TrimSpace(v)
		}
	}
	if k.Enc == "" || k.HMAC == "" {
		return FwknopKeys{}, fmt.Errorf("fwknop --key-gen printed no keys: %s", out)
	}
	return k, nil
}

// Fwknop runs the stock client in the client namespace with home as its
// HOME, and neither reads nor writes its rc files: `fwknop --no-rc-file
// --no-save-args ARGS`. It returns the client's output, and an error if
// it exits other than 0.
func (l *Lab) Fwknop(home string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := Command(ctx, l.Client, append([]string{"fwknop", "--no-rc-file", "--no-save-args"}, args...)...)
	cmd.Env = fwknopEnv(home)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("fwknop %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// FwknopPacket has the stock client build a packet without sending it
// (-T -B FILE) and returns its payload, as the client would send it.
func (l *Lab) FwknopPacket(home string, args ...string) ([]byte, error) {
	f, err := os.CreateTemp(home, "spa-*.pkt")
	if err != nil {
		return nil, err
	}
	f.Close()
	defer os.Remove(f.Name())
	if _, err := l.Fwknop(home, append(args, "-T", "-B", f.Name())...); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(f.Name())
	if err != nil {
		return nil, err
	}
	// The client writes the payload and a newline.
	return []byte(strings.TrimRight(string(data), "\n")), nil
}

// fwknopEnv is the client's environment: this one with HOME set, for the
// files it keeps there.
func fwknopEnv(home string) []string {
	env := []string{"HOME=" + home}
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "HOME=") {
			env = append(env, e)
		}
	}
	return env
}
