package nft

import (
	"strings"
	"testing"
)

// TestElementComment: a comment is written as nft writes it (one TLV, the
// text and its NUL), made readable to nft -f, cut to MaxComment bytes at a
// character boundary, and read back; userdata that does not parse reads
// as no comment, never past its end.
func TestElementComment(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"bob", "bob"},
		{`"alice@laptop" SHA256:x`, `'alice@laptop' SHA256:x`},
		{"a\nb\x00c", "a b c"},
		{strings.Repeat("x", MaxComment+5), strings.Repeat("x", MaxComment)},
		{strings.Repeat("x", MaxComment-1) + "é", strings.Repeat("x", MaxComment-1)},
	} {
		u := commentUserdata(tc.in)
		if int(u[1]) != len(u)-2 || u[len(u)-1] != 0 {
			t.Errorf("%q: TLV % x", tc.in, u)
		}
		if got := commentOf(u); got != tc.want {
			t.Errorf("%q: read back %q, want %q", tc.in, got, tc.want)
		}
	}
	for _, bad := range [][]byte{nil, {0}, {0, 9, 'a'}, {1, 200, 'x'}, {5, 0, 0, 3, 'h', 'i', 0}} {
		got := commentOf(bad)
		if len(bad) == 7 && got != "hi" {
			t.Errorf("% x: %q, want the comment after another TLV", bad, got)
		}
		if len(bad) < 7 && got != "" {
			t.Errorf("% x: %q, want none", bad, got)
		}
	}
}

// FuzzElementComment: any userdata reads without a panic, and any
// comment written reads back cut to MaxComment bytes, with no double
// quote or control character for nft to choke on.
func FuzzElementComment(f *testing.F) {
	f.Add([]byte{0, 4, 'b', 'o', 'b', 0}, "'alice@laptop' SHA256:x")
	f.Fuzz(func(t *testing.T, udata []byte, comment string) {
		commentOf(udata)
		got := commentOf(commentUserdata(comment))
		if len(got) > MaxComment || strings.ContainsAny(got, "\"\n\r\t\x00") {
			t.Errorf("%q reads back as %q", comment, got)
		}
	})
}
