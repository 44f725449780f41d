package fwknop

// An fwknop SPA encoder, written from the format (fwknop's documentation,
// not its code) for tests only: fuzz seeds and packets the stock client
// cannot be made to send. It shares nothing with the decoder, the key
// derivation included, so that a mistake in one is not hidden by the same
// mistake in the other; the golden tests check both against the client.

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"strconv"
	"strings"
	"time"
)

var b64 = base64.RawStdEncoding

// spaFields are the plaintext fields, before their base64 encoding.
type spaFields struct {
	rand       string
	user       string
	time       int64
	version    string
	typ        int
	message    string
	nat        string // "" leaves the field out
	serverAuth string // "" leaves the field out
	timeout    string // "" leaves the field out
}

// accessFields is a valid access request at t.
func accessFields(t time.Time, message string) spaFields {
	return spaFields{rand: "1234567890123456", user: "alice", time: t.Unix(), version: Version, typ: 1, message: message}
}

// encode joins the fields as the client does, without the digest.
func (f spaFields) encode() string {
	parts := []string{f.rand, b64.EncodeToString([]byte(f.user)), strconv.FormatInt(f.time, 10),
		f.version, strconv.Itoa(f.typ), b64.EncodeToString([]byte(f.message))}
	if f.nat != "" {
		parts = append(parts, b64.EncodeToString([]byte(f.nat)))
	}
	if f.serverAuth != "" {
		parts = append(parts, b64.EncodeToString([]byte(f.serverAuth)))
	}
	if f.timeout != "" {
		parts = append(parts, f.timeout)
	}
	return strings.Join(parts, ":")
}

// withDigest appends ":" and the SHA-256 digest, as the client does.
func withDigest(encoded string) string {
	sum := sha256.Sum256([]byte(encoded))
	return encoded + ":" + b64.EncodeToString(sum[:])
}

// testKDF is EVP_BytesToKey(MD5, one round), written apart from the
// decoder's.
func testKDF(pass, salt []byte) (key, iv []byte) {
	var out, d []byte
	for len(out) < 48 {
		h := md5.New()
		h.Write(d)
		h.Write(pass)
		h.Write(salt)
		d = h.Sum(nil)
		out = append(out, d...)
	}
	return out[:32], out[32:48]
}

// sealPlain pads plain (PKCS#7), encrypts it with salt and returns the
// wire payload.
func sealPlain(encKey, hmacKey, salt, plain []byte) []byte {
	pad := aes.BlockSize - len(plain)%aes.BlockSize
	padded := append([]byte(plain), strings.Repeat(string(rune(pad)), pad)...)
	return sealPadded(encKey, hmacKey, salt, padded)
}

// sealPadded encrypts padded, whole AES blocks padding included, as it is.
func sealPadded(encKey, hmacKey, salt, padded []byte) []byte {
	key, iv := testKDF(encKey, salt)
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(err)
	}
	ct := make([]byte, len(padded))
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(ct, padded)
	blob := append(append([]byte("Salted__"), salt...), ct...)
	return sealBlob(hmacKey, blob)
}

// sealBlob base64-encodes blob, drops the "U2FsdGVkX1" prefix its
// "Salted__" header gives it, and appends the HMAC.
func sealBlob(hmacKey, blob []byte) []byte {
	enc := b64.EncodeToString(blob)
	if !strings.HasPrefix(enc, saltedPrefix) {
		panic("blob does not begin with Salted__")
	}
	return sealText(hmacKey, enc[len(saltedPrefix):])
}

// sealText appends to rest the HMAC of "U2FsdGVkX1" + rest: a payload that
// authenticates whatever rest holds.
func sealText(hmacKey []byte, rest string) []byte {
	m := hmac.New(sha256.New, hmacKey)
	m.Write([]byte(saltedPrefix + rest))
	return []byte(rest + b64.EncodeToString(m.Sum(nil)))
}

// seal is sealPlain with a random salt and the digest appended.
func seal(encKey, hmacKey []byte, f spaFields) []byte {
	salt := make([]byte, 8)
	rand.Read(salt)
	return sealPlain(encKey, hmacKey, salt, []byte(withDigest(f.encode())))
}
