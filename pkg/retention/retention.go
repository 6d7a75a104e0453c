// Package retention decides which backups a policy keeps.
package retention

import (
	"fmt"
	"time"

	"github.com/strata-backup/strata/contracts"
)

// Rules: keep the newest Last backups, then the newest backup of each of
// the last Hourly hours, Daily days, Weekly ISO weeks, Monthly months and
// Yearly years that have one (UTC), with Proxmox Backup Server's
// semantics: the options apply in that order, each one only to the
// backups the ones before neither kept nor passed over, and a period
// already holding a kept backup does not count again. All zero keeps
// everything.
type Rules struct {
	Last, Hourly, Daily, Weekly, Monthly, Yearly int
}

// FromPolicy reads the rules of a policy.
func FromPolicy(p contracts.Policy) Rules {
	return Rules{Last: p.KeepLast, Hourly: p.KeepHourly, Daily: p.KeepDaily, Weekly: p.KeepWeekly, Monthly: p.KeepMonthly, Yearly: p.KeepYearly}
}

// None reports whether the rules keep everything.
func (r Rules) None() bool { return r == Rules{} }

// periods are the options in the order they apply, each with the period a
// backup falls in.
func (r Rules) periods() []struct {
	n   int
	key func(b *contracts.BackupRecord) string
} {
	at := func(layout string) func(b *contracts.BackupRecord) string {
		return func(b *contracts.BackupRecord) string { return b.CreatedAt.UTC().Format(layout) }
	}
	return []struct {
		n   int
		key func(b *contracts.BackupRecord) string
	}{
		{r.Last, func(b *contracts.BackupRecord) string { return b.ID }},
		{r.Hourly, at("2006-01-02T15")},
		{r.Daily, at("2006-01-02")},
		{r.Weekly, func(b *contracts.BackupRecord) string {
			y, w := b.CreatedAt.UTC().ISOWeek()
			return fmt.Sprintf("%d-w%02d", y, w)
		}},
		{r.Monthly, at("2006-01")},
		{r.Yearly, at("2006")},
	}
}

// select marks, newest first, the backups one option keeps (the newest of
// each of its first n periods not covered yet) and those it passes over
// (older backups of a period it kept one of): later options never see
// either. This is PBS's mark_selections.
func selectPeriods(verified []*contracts.BackupRecord, kept map[string]bool, n int, key func(*contracts.BackupRecord) string) {
	if n <= 0 {
		return
	}
	covered := map[string]bool{}
	for _, b := range verified {
		if keep, marked := kept[b.ID]; marked && keep {
			covered[key(b)] = true
		}
	}
	chosen := map[string]bool{}
	for _, b := range verified {
		if _, marked := kept[b.ID]; marked {
			continue
		}
		k := key(b)
		if covered[k] {
			continue
		}
		if chosen[k] {
			kept[b.ID] = false // passed over
			continue
		}
		if len(chosen) >= n {
			return
		}
		chosen[k] = true
		kept[b.ID] = true
	}
}

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
	// kept: true kept, false passed over by an option; absent: not
	// looked at yet
	kept := map[string]bool{}
	var verified []*contracts.BackupRecord // newest first
	for i := len(recs) - 1; i >= 0; i-- {
		if recs[i].State == contracts.StateVerified {
			verified = append(verified, recs[i])
		}
	}
	for _, p := range r.periods() {
		selectPeriods(verified, kept, p.n, p.key)
	}
	if len(verified) > 0 {
		kept[verified[0].ID] = true // the next backup's parent
	}
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
