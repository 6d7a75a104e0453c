// Package retention decides which backups a policy keeps.
package retention

import (
	"fmt"
	"time"

	"github.com/strata-backup/strata/contracts"
)

// Rules: keep the newest Last backups, plus the newest backup of each of
// the last Daily days, Weekly ISO weeks and Monthly months that have one
// (GFS). All zero keeps everything.
type Rules struct {
	Last, Daily, Weekly, Monthly int
}

// FromPolicy reads the rules of a policy.
func FromPolicy(p contracts.Policy) Rules {
	return Rules{Last: p.KeepLast, Daily: p.KeepDaily, Weekly: p.KeepWeekly, Monthly: p.KeepMonthly}
}

// None reports whether the rules keep everything.
func (r Rules) None() bool { return r.Last == 0 && r.Daily == 0 && r.Weekly == 0 && r.Monthly == 0 }

// Plan splits a VM's backups into keep and prune. Only verified backups
// count toward the rules; the newest verified backup is always kept (it is
// the next backup's parent), and so is every backup that is not final yet
// or is the parent of one that is not. Failed and skipped entries older
// than the oldest kept verified backup are pruned; newer ones are kept
// (they hold no data, and they tell the story of recent runs).
func Plan(recs []*contracts.BackupRecord, r Rules) (keep, prune []*contracts.BackupRecord) {
	if r.None() {
		return recs, nil
	}
	kept := map[string]bool{}
	var verified []*contracts.BackupRecord // newest first
	for i := len(recs) - 1; i >= 0; i-- {
		if recs[i].State == contracts.StateVerified {
			verified = append(verified, recs[i])
		}
	}
	for i, b := range verified {
		if i < max(r.Last, 1) {
			kept[b.ID] = true
		}
	}
	bucket := func(n int, key func(time.Time) string) {
		seen := map[string]bool{}
		for _, b := range verified {
			if len(seen) >= n {
				break
			}
			k := key(b.CreatedAt.UTC())
			if !seen[k] {
				seen[k] = true
				kept[b.ID] = true
			}
		}
	}
	bucket(r.Daily, func(t time.Time) string { return t.Format("2006-01-02") })
	bucket(r.Weekly, func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%d-w%02d", y, w) })
	bucket(r.Monthly, func(t time.Time) string { return t.Format("2006-01") })
	oldestKept := time.Time{}
	for _, b := range verified {
		if kept[b.ID] {
			oldestKept = b.CreatedAt
		}
	}
	for _, b := range recs {
		if !b.State.Final() {
			kept[b.ID] = true
			if b.Parent != "" {
				kept[b.Parent] = true
			}
		}
	}
	for _, b := range recs {
		switch {
		case kept[b.ID]:
			keep = append(keep, b)
		case b.State != contracts.StateVerified && !b.CreatedAt.Before(oldestKept):
			keep = append(keep, b)
		default:
			prune = append(prune, b)
		}
	}
	return keep, prune
}
