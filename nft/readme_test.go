package nft

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestREADMEShowsRuleset keeps the README's `nft list ruleset` excerpt
// true: leaving out counters' values and live elements, it must be the
// ruleset Install writes for the default config (testdata/ruleset.nft,
// which TestKernelInstallRuleset checks against the kernel).
func TestREADMEShowsRuleset(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/ruleset.nft")
	if err != nil {
		t.Fatal(err)
	}
	block := regexp.MustCompile("(?s)```\n(table inet nftknock \\{\n.*?\n\\})\n```").FindSubmatch(readme)
	if block == nil {
		t.Fatal("README.md has no ``` block holding `table inet nftknock { ... }`")
	}
	if got, want := normalizeListing(string(block[1])), normalizeListing(string(want)); got != want {
		t.Errorf("README.md's ruleset excerpt is not what Install writes for the default config.\nREADME:\n%s\n\ntestdata/ruleset.nft:\n%s", got, want)
	}
}

var (
	counterRE  = regexp.MustCompile(`counter packets \d+ bytes \d+`)
	elementsRE = regexp.MustCompile(`(?m)^\s*elements = \{[^}]*\}\n`)
)

func normalizeListing(s string) string {
	s = elementsRE.ReplaceAllString(s, "")
	s = counterRE.ReplaceAllString(s, "counter")
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		lines = append(lines, strings.TrimRight(l, " \t"))
	}
	return strings.TrimSpace(strings.Join(lines, "\n"))
}
