package schedule

import (
	"fmt"
	"testing"
	"time"
)

func TestParseAndSlots(t *testing.T) {
	s, err := Parse("*/2 * * * * *")
	if err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 1, 1, 0, 0, 1, 0, time.UTC)
	if n := s.Next(base); !n.Equal(base.Add(time.Second)) {
		t.Fatalf("next after %v = %v", base, n)
	}
	if _, err := Parse("61 * * * *"); err == nil {
		t.Fatal("bad schedule accepted")
	}
	if _, err := Parse("@every 90m"); err != nil {
		t.Fatal(err)
	}
	a, b := SlotBackupID("vm", base), SlotBackupID("vm", base)
	if a != b || a == SlotBackupID("vm2", base) || a == SlotBackupID("vm", base.Add(time.Second)) {
		t.Fatal("slot ids must be deterministic per vm and slot")
	}
	j := Jitter("vm", base, time.Minute)
	if j < 0 || j >= time.Minute || j != Jitter("vm", base, time.Minute) {
		t.Fatalf("jitter %v", j)
	}
}

// The next run is the first slot whose jittered time is still ahead: a
// slot that passed but whose jitter has not, is it.
func TestNextRun(t *testing.T) {
	now := time.Date(2026, 12, 7, 10, 30, 0, 0, time.UTC)
	slot, run, err := NextRun("web", "0 * * * *", 0, now)
	if err != nil || !slot.Equal(time.Date(2026, 12, 7, 11, 0, 0, 0, time.UTC)) || !run.Equal(slot) {
		t.Fatalf("hourly: %s %s %v", slot, run, err)
	}
	j := time.Hour
	for vm := range 20 {
		name := fmt.Sprint("vm", vm)
		slot, run, err := NextRun(name, "0 * * * *", j, now)
		if err != nil || !run.After(now) || run.Sub(slot) != Jitter(name, slot, j) || run.Sub(now) > 2*time.Hour {
			t.Fatalf("%s: slot %s run %s %v", name, slot, run, err)
		}
		// The slot before it had already run (or it is the 10:00 slot).
		if prev := slot.Add(-time.Hour); prev.Add(Jitter(name, prev, j)).After(now) {
			t.Fatalf("%s: the %s slot runs after now, yet %s was given", name, prev, slot)
		}
	}
	if _, _, err := NextRun("web", "not a schedule", 0, now); err == nil {
		t.Fatal("bad schedule accepted")
	}
}
