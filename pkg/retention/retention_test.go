package retention

import (
	"fmt"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
)

func rec(id string, at time.Time, st contracts.State, parent string) *contracts.BackupRecord {
	return &contracts.BackupRecord{ID: id, CreatedAt: at, State: st, Parent: parent}
}

func ids(rs []*contracts.BackupRecord) string {
	var s []string
	for _, r := range rs {
		s = append(s, r.ID)
	}
	return fmt.Sprint(s)
}

func TestPlan(t *testing.T) {
	day := func(d, h int) time.Time { return time.Date(2026, 3, d, h, 0, 0, 0, time.UTC) }
	recs := []*contracts.BackupRecord{
		rec("a", day(1, 1), contracts.StateVerified, ""),
		rec("b", day(1, 2), contracts.StateVerified, "a"),
		rec("f", day(1, 3), contracts.StateFailed, ""),
		rec("c", day(2, 1), contracts.StateVerified, "b"),
		rec("d", day(3, 1), contracts.StateVerified, "c"),
		rec("s", day(3, 2), contracts.StateSkipped, ""),
		rec("e", day(3, 3), contracts.StateVerified, "d"),
	}
	tests := []struct {
		rules       Rules
		keep, prune string
	}{
		{Rules{}, "[a b f c d s e]", "[]"},
		{Rules{Last: 2}, "[d s e]", "[a b f c]"},
		{Rules{Last: 1, Daily: 3}, "[b f c s e]", "[a d]"}, // newest of each day,
		{Rules{Monthly: 1}, "[e]", "[a b f c d s]"},
	}
	for _, tc := range tests {
		keep, prune := Plan(recs, tc.rules)
		if ids(keep) != tc.keep || ids(prune) != tc.prune {
			t.Errorf("%+v: keep %s prune %s; want keep %s prune %s", tc.rules, ids(keep), ids(prune), tc.keep, tc.prune)
		}
	}
	// A running backup's parent is never pruned.
	running := append(recs, rec("g", day(4, 1), contracts.StateTransferring, "c"))
	_, prune := Plan(running, Rules{Last: 1})
	if ids(prune) != "[a b f d s]" {
		t.Errorf("with g running on parent c: prune %s, want [a b f d s]", ids(prune))
	}
}
