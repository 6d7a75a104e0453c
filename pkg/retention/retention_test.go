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

// Proxmox Backup Server's prune examples (its tests/prune.rs), reproduced
// with the same backup times, options and expected results. Two cases
// differ by design and are left out: keep-last 0 alone (PBS removes
// everything; here no rule keeps everything), and nothing here can prune
// the newest verified backup (every PBS example keeps it anyway).
func TestPlanReproducesPBSExamples(t *testing.T) {
	list := func(times ...string) []*contracts.BackupRecord {
		var recs []*contracts.BackupRecord
		for _, s := range times {
			at, err := time.Parse(time.RFC3339, s)
			if err != nil {
				t.Fatal(err)
			}
			recs = append(recs, rec(s, at, contracts.StateVerified, ""))
		}
		return recs
	}
	hourly := list("2019-11-15T09:39:15Z", "2019-11-15T10:49:15Z", "2019-11-15T10:59:15Z", "2019-11-15T11:39:15Z", "2019-11-15T11:49:15Z", "2019-11-15T11:59:15Z")
	simple2 := list("2018-11-15T11:59:15Z", "2019-11-15T11:59:15Z", "2019-11-21T11:59:15Z", "2019-11-22T11:59:15Z", "2019-11-29T11:59:15Z",
		"2019-12-01T11:59:15Z", "2019-12-02T11:59:15Z", "2019-12-03T11:59:15Z", "2019-12-04T11:59:15Z")
	simple := list("2019-12-02T11:59:15Z", "2019-12-03T11:59:15Z", "2019-12-04T11:59:15Z", "2019-12-04T12:59:15Z")
	tests := []struct {
		name  string
		recs  []*contracts.BackupRecord
		rules Rules
		// one of: what is kept, or what is pruned (as PBS's test states it)
		keep, prune string
	}{
		{"hourly 3", hourly, Rules{Hourly: 3}, "", "[2019-11-15T10:49:15Z 2019-11-15T11:39:15Z 2019-11-15T11:49:15Z]"},
		{"hourly 2", hourly, Rules{Hourly: 2}, "[2019-11-15T10:59:15Z 2019-11-15T11:59:15Z]", ""},
		{"simple2 daily 1", simple2, Rules{Daily: 1}, "[2019-12-04T11:59:15Z]", ""},
		{"simple2 last 1 daily 1", simple2, Rules{Last: 1, Daily: 1}, "[2019-12-03T11:59:15Z 2019-12-04T11:59:15Z]", ""},
		{"simple2 daily 1 weekly 1", simple2, Rules{Daily: 1, Weekly: 1}, "[2019-12-01T11:59:15Z 2019-12-04T11:59:15Z]", ""},
		{"simple2 daily weekly monthly 1", simple2, Rules{Daily: 1, Weekly: 1, Monthly: 1}, "[2019-11-22T11:59:15Z 2019-12-01T11:59:15Z 2019-12-04T11:59:15Z]", ""},
		{"simple2 monthly 1 yearly 1", simple2, Rules{Monthly: 1, Yearly: 1}, "[2018-11-15T11:59:15Z 2019-12-04T11:59:15Z]", ""},
		{"simple last 4", simple, Rules{Last: 4}, "", "[]"},
		{"simple last 3", simple, Rules{Last: 3}, "", "[2019-12-02T11:59:15Z]"},
		{"simple last 2", simple, Rules{Last: 2}, "", "[2019-12-02T11:59:15Z 2019-12-03T11:59:15Z]"},
		{"simple last 1", simple, Rules{Last: 1}, "", "[2019-12-02T11:59:15Z 2019-12-03T11:59:15Z 2019-12-04T11:59:15Z]"},
		{"simple last 2 daily 2", simple, Rules{Last: 2, Daily: 2}, "", "[]"},
		{"simple daily 3", simple, Rules{Daily: 3}, "", "[2019-12-04T11:59:15Z]"},
		{"simple daily 2", simple, Rules{Daily: 2}, "", "[2019-12-02T11:59:15Z 2019-12-04T11:59:15Z]"},
		{"simple weekly 5", simple, Rules{Weekly: 5}, "", "[2019-12-02T11:59:15Z 2019-12-03T11:59:15Z 2019-12-04T11:59:15Z]"},
		{"simple daily 1 weekly 5", simple, Rules{Daily: 1, Weekly: 5}, "", "[2019-12-02T11:59:15Z 2019-12-03T11:59:15Z 2019-12-04T11:59:15Z]"},
		{"simple monthly 6", simple, Rules{Monthly: 6}, "", "[2019-12-02T11:59:15Z 2019-12-03T11:59:15Z 2019-12-04T11:59:15Z]"},
		{"simple yearly 7", simple, Rules{Yearly: 7}, "", "[2019-12-02T11:59:15Z 2019-12-03T11:59:15Z 2019-12-04T11:59:15Z]"},
		{"simple weekly monthly yearly", simple, Rules{Weekly: 5, Monthly: 6, Yearly: 7}, "", "[2019-12-02T11:59:15Z 2019-12-03T11:59:15Z 2019-12-04T11:59:15Z]"},
	}
	for _, tc := range tests {
		keep, prune := Plan(tc.recs, tc.rules)
		if tc.keep != "" && ids(keep) != tc.keep {
			t.Errorf("%s: keep %s, want %s", tc.name, ids(keep), tc.keep)
		}
		if tc.prune != "" && ids(prune) != tc.prune {
			t.Errorf("%s: prune %s, want %s", tc.name, ids(prune), tc.prune)
		}
	}
}
