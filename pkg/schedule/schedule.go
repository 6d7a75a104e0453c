// Package schedule parses backup schedules and names their slots.
package schedule

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/robfig/cron/v3"

	"github.com/strata-backup/strata/contracts"
)

var parser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// Parse accepts standard 5-field cron, a leading seconds field, and
// descriptors (@daily, @every 90m).
func Parse(expr string) (cron.Schedule, error) {
	s, err := parser.Parse(expr)
	if err != nil {
		return nil, fmt.Errorf("schedule %q: %w", expr, err)
	}
	return s, nil
}

// Jitter is a deterministic delay in [0, max) for one VM's slot: every
// scheduler replica computes the same one, and a fleet's backups spread out
// instead of all starting on the minute.
func Jitter(vm string, slot time.Time, max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	h := sha256.Sum256([]byte(fmt.Sprintf("%s|%d", vm, slot.Unix())))
	return time.Duration(binary.BigEndian.Uint64(h[:8]) % uint64(max))
}

var slotNamespace = uuid.MustParse("6f1a3c5e-6b0e-4b59-9a43-3f3d4a2b9c10")

// SlotBackupID names the backup of one VM's slot. Every replica derives the
// same id, so a slot fired twice (two schedulers, a restart) is one backup:
// JetStream drops the duplicate request and the catalog refuses a second
// entry.
func SlotBackupID(vm string, slot time.Time) string {
	return uuid.NewSHA1(slotNamespace, []byte(fmt.Sprintf("%s|%d", vm, slot.Unix()))).String()
}

// NextRun is when a VM's schedule next starts a backup after now: the
// next slot's time plus its jitter (a slot already due but still inside
// its jitter counts).
func NextRun(vm, expr string, jitter time.Duration, now time.Time) (slot, run time.Time, err error) {
	s, err := Parse(expr)
	if err != nil {
		return slot, run, err
	}
	slot = s.Next(now.Add(-max(jitter, 0)))
	for range 1000 {
		if slot.IsZero() {
			return slot, run, fmt.Errorf("schedule %q never fires", expr)
		}
		if run = slot.Add(Jitter(vm, slot, jitter)); run.After(now) {
			return slot, run, nil
		}
		slot = s.Next(slot)
	}
	return slot, run, fmt.Errorf("schedule %q: no run found after %s", expr, now)
}

// RPO is the policy's recovery point objective: its own, or twice its
// schedule's interval (the gap between the slots after now) plus its
// jitter — one missed slot is tolerated, two are not.
func RPO(p contracts.Policy, now time.Time) time.Duration {
	if p.RPO > 0 {
		return p.RPO
	}
	s, err := Parse(p.Schedule)
	if err != nil {
		return 0
	}
	a := s.Next(now)
	b := s.Next(a)
	if a.IsZero() || b.IsZero() {
		return 0
	}
	return 2*b.Sub(a) + max(p.Jitter, 0)
}
