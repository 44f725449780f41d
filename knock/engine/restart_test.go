package engine

import (
	"strings"
	"testing"

	"github.com/nftknock/nftknock/config"
)

// TestReloadRefusesWhatNeedsARestart: a reload may not move the daemon to
// another table, chain or NFLOG group, nor change whether it owns its table
// (the kernel lets an owner go only with its socket); each refusal names
// the key and says to restart.
func TestReloadRefusesWhatNeedsARestart(t *testing.T) {
	base := config.Config{File: "f.toml", Table: "nftknock", NFLOGGroup: 7113, OwnTable: true}
	if err := sameOwnership(&base, &base); err != nil {
		t.Fatalf("the same config: %v", err)
	}
	for _, c := range []struct {
		change func(*config.Config)
		want   string
	}{
		{func(c *config.Config) { c.Table = "other" }, `table: changed from "nftknock" to "other": restart`},
		{func(c *config.Config) { c.Attach = &config.Attach{Table: "filter", Chain: "input"} }, "attach: changed"},
		{func(c *config.Config) { c.NFLOGGroup = 7114 }, "nflog_group: changed from 7113 to 7114: restart"},
		{func(c *config.Config) { c.OwnTable = false }, "own_table: changed from true to false: restart"},
	} {
		next := base
		c.change(&next)
		if err := sameOwnership(&base, &next); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v, want %q", err, c.want)
		}
	}
}
