package scheduler

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/policy"
	"github.com/strata-backup/strata/pkg/schedule"
)

// These tests run the scheduler's slot logic on in-memory ports: no NATS.

func mustState(t *testing.T, s *scheduler, p contracts.Policy, since time.Time) *policyState {
	t.Helper()
	set := newPolicySet()
	s.apply(set, policy.Change{Key: p.VM, Policy: &p}, since)
	st, ok := set.states[p.VM]
	if !ok {
		t.Fatalf("policy %+v not loaded", p)
	}
	return st
}

var base = time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)

// Slots missed while no scheduler ran fire on the next tick, once each, in
// order, with the slot's deterministic backup id; a second tick at the
// same time fires nothing.
func TestFireDueCatchesUpMissedSlotsOnce(t *testing.T) {
	s, _, pub, _ := testScheduler()
	st := mustState(t, s, contracts.Policy{VM: "vm1", Source: "file:///a.img", Schedule: "*/10 * * * *", KeyInterval: 7}, base)
	now := base.Add(35 * time.Minute)
	s.fireDue(context.Background(), st, now)
	reqs := pub.requests()
	if len(reqs) != 3 {
		t.Fatalf("fired %d slots by 10:35 since 10:00, want 3 (10:10, 10:20, 10:30)", len(reqs))
	}
	for i, r := range reqs {
		slot := base.Add(time.Duration(i+1) * 10 * time.Minute)
		if !r.Slot.Equal(slot) || r.BackupID != schedule.SlotBackupID("vm1", slot) || r.KeyInterval != 7 || r.Source != "file:///a.img" {
			t.Errorf("request %d: %+v, want slot %s", i, r, slot)
		}
	}
	if !st.handled().Equal(base.Add(30 * time.Minute)) {
		t.Errorf("handled up to %s", st.handled())
	}
	s.fireDue(context.Background(), st, now)
	if n := len(pub.requests()); n != 3 {
		t.Fatalf("a second tick fired again: %d requests", n)
	}
}

// A slot another replica (or this one before a restart) handled already
// is not fired again; a slot while the VM's previous backup still runs is
// recorded as skipped, with the reason.
func TestFireDueSkipsHandledAndBusySlots(t *testing.T) {
	s, recs, pub, _ := testScheduler()
	st := mustState(t, s, contracts.Policy{VM: "vm1", Schedule: "*/10 * * * *"}, base)
	slot1, slot2 := base.Add(10*time.Minute), base.Add(20*time.Minute)
	recs.put(&contracts.BackupRecord{VM: "vm1", ID: schedule.SlotBackupID("vm1", slot1), State: contracts.StateTransferring})
	s.fireDue(context.Background(), st, slot2)
	if n := len(pub.requests()); n != 0 {
		t.Fatalf("published %d requests while the VM's backup runs", n)
	}
	skipped, _, err := recs.Get(context.Background(), "vm1", schedule.SlotBackupID("vm1", slot2))
	if err != nil {
		t.Fatalf("the busy slot left no record: %v", err)
	}
	if skipped.State != contracts.StateSkipped || !strings.Contains(skipped.Error, "still transferring") || !skipped.Slot.Equal(slot2) {
		t.Fatalf("skipped record %+v", skipped)
	}
	if !st.handled().Equal(slot2) {
		t.Fatalf("handled up to %s, want %s", st.handled(), slot2)
	}
}

// A slot that cannot be requested (NATS down) is retried on the next tick,
// and nothing after it is fired before it.
func TestFireDueRetriesAFailedSlot(t *testing.T) {
	s, _, pub, _ := testScheduler()
	st := mustState(t, s, contracts.Policy{VM: "vm1", Schedule: "*/10 * * * *"}, base)
	pub.err = errors.New("nats: no servers available")
	s.fireDue(context.Background(), st, base.Add(25*time.Minute))
	if !st.handled().Equal(base) {
		t.Fatalf("a failed slot counted as handled: %s", st.handled())
	}
	pub.err = nil
	s.fireDue(context.Background(), st, base.Add(26*time.Minute))
	if reqs := pub.requests(); len(reqs) != 2 || !reqs[0].Slot.Equal(base.Add(10*time.Minute)) {
		t.Fatalf("after recovery: %d requests", len(reqs))
	}
}

// Jitter delays each VM's slot by its own fixed offset: not fired before
// it, fired at it.
func TestFireDueWaitsForTheJitter(t *testing.T) {
	s, _, pub, _ := testScheduler()
	p := contracts.Policy{VM: "vm-jittered", Schedule: "0 * * * *", Jitter: 30 * time.Minute}
	st := mustState(t, s, p, base)
	slot := base.Add(time.Hour)
	off := schedule.Jitter(p.VM, slot, p.Jitter)
	if off <= time.Second {
		t.Fatalf("jitter offset %s: pick another VM name for this test", off)
	}
	s.fireDue(context.Background(), st, slot.Add(off-time.Second))
	if n := len(pub.requests()); n != 0 {
		t.Fatalf("fired %s before its jitter ended", off)
	}
	s.fireDue(context.Background(), st, slot.Add(off))
	if n := len(pub.requests()); n != 1 {
		t.Fatalf("not fired at slot+jitter: %d", n)
	}
}

// A new policy never fires slots from before it existed; a changed one
// continues from the slots handled; a removed one stops; a schedule that
// does not parse is kept out.
func TestApplyPolicyChanges(t *testing.T) {
	s, _, _, _ := testScheduler()
	set := newPolicySet()
	states := set.states
	created := base.Add(-time.Minute)
	p := contracts.Policy{VM: "vm1", Schedule: "*/10 * * * *", UpdatedAt: created}
	s.apply(set, policy.Change{Key: "vm1", Policy: &p}, base.Add(-time.Hour))
	if got := states["vm1"].handled(); !got.Equal(created) {
		t.Fatalf("new policy starts at %s, want its creation %s", got, created)
	}
	states["vm1"].handledUpTo(base.Add(20 * time.Minute))
	p.Schedule, p.UpdatedAt = "*/5 * * * *", base.Add(-30*time.Minute) // an edit older than what was handled
	s.apply(set, policy.Change{Key: "vm1", Policy: &p}, base.Add(-time.Hour))
	if got := states["vm1"].handled(); !got.Equal(base.Add(20 * time.Minute)) {
		t.Fatalf("changed policy restarts at %s", got)
	}
	bad := p
	bad.Schedule = "every other tuesday"
	s.apply(set, policy.Change{Key: "vm1", Policy: &bad}, base)
	if _, ok := states["vm1"]; ok {
		t.Fatal("a policy whose schedule does not parse is running")
	}
	s.apply(set, policy.Change{Key: "vm1", Policy: &p}, base)
	s.apply(set, policy.Change{Key: "vm1"}, base)
	if len(states) != 0 {
		t.Fatal("a removed policy is still running")
	}
	// Entries of replaced and removed policies leave the heap unfired.
	if ready := set.ready(base.Add(24 * time.Hour)); len(ready) != 0 {
		t.Fatalf("%d stale heap entries came up", len(ready))
	}
}

// The due heap hands out exactly the policies whose next slot (jitter
// included) has come, each once, and a policy rescheduled at its next
// slot comes up again then.
func TestDueHeap(t *testing.T) {
	s, _, _, _ := testScheduler()
	set := newPolicySet()
	for i := 0; i < 100; i++ {
		p := contracts.Policy{VM: fmt.Sprintf("vm%03d", i), Schedule: fmt.Sprintf("%d * * * *", i%60), UpdatedAt: base}
		s.apply(set, policy.Change{Key: p.VM, Policy: &p}, base)
	}
	// By 10:29:30 the policies at minutes 0..29 of the hour (from 10:00
	// on: minute 0 is next due at 11:00) — 29 minutes × 2 policies.
	now := base.Add(29*time.Minute + 30*time.Second)
	ready := set.ready(now)
	if len(ready) != 58 {
		t.Fatalf("%d policies due by 10:29:30, want 58", len(ready))
	}
	for _, st := range ready {
		if !s.fireDue(context.Background(), st, now) {
			t.Fatal("fireDue failed")
		}
		set.schedule(st, st.nextDue())
	}
	if again := set.ready(now); len(again) != 0 {
		t.Fatalf("%d policies due again at the same time", len(again))
	}
	if next := set.ready(base.Add(time.Hour + 29*time.Minute + 30*time.Second)); len(next) != 100 {
		t.Fatalf("%d due an hour later, want all 100", len(next))
	}
}

// BenchmarkTick: a scheduler tick with 10,000 policies, none due (the
// common case) and all due at once.
func BenchmarkTick(b *testing.B) {
	s, _, _, _ := testScheduler()
	set := newPolicySet()
	for i := 0; i < 10000; i++ {
		p := contracts.Policy{VM: fmt.Sprintf("vm%05d", i), Schedule: "0 1 * * *", Jitter: time.Hour, UpdatedAt: base}
		s.apply(set, policy.Change{Key: p.VM, Policy: &p}, base)
	}
	b.Run("none-due", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if len(set.ready(base.Add(time.Minute))) != 0 {
				b.Fatal("due")
			}
		}
	})
	day := 0
	b.Run("all-due-rescheduled", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			day++
			now := base.Add(time.Duration(day) * 24 * time.Hour)
			ready := set.ready(now)
			for _, st := range ready {
				st.handledUpTo(now)
				set.schedule(st, st.nextDue())
			}
			if len(ready) != 10000 {
				b.Fatalf("%d due", len(ready))
			}
		}
	})
}

// The deadline fails a backup still running, records a request nobody
// planned, and leaves a finished backup alone; before it, it waits.
func TestEnforceDeadline(t *testing.T) {
	s, recs, _, fail := testScheduler()
	ctx := context.Background()
	old := time.Now().Add(-13 * time.Hour)
	running := &contracts.BackupRequested{VM: "vm1", BackupID: "b-running", RequestedAt: old}
	done := &contracts.BackupRequested{VM: "vm1", BackupID: "b-done", RequestedAt: old}
	lost := &contracts.BackupRequested{VM: "vm1", BackupID: "b-never-planned", RequestedAt: old}
	young := &contracts.BackupRequested{VM: "vm1", BackupID: "b-young", RequestedAt: time.Now()}
	recs.put(&contracts.BackupRecord{VM: "vm1", ID: "b-running", State: contracts.StateTransferring})
	recs.put(&contracts.BackupRecord{VM: "vm1", ID: "b-done", State: contracts.StateVerified})
	recs.put(&contracts.BackupRecord{VM: "vm1", ID: "b-young", State: contracts.StateTransferring})
	for _, r := range []*contracts.BackupRequested{running, done, lost} {
		if err := s.enforceDeadline(ctx, r, 12*time.Hour); err != nil {
			t.Fatalf("%s: %v", r.BackupID, err)
		}
	}
	if err := s.enforceDeadline(ctx, young, 12*time.Hour); err == nil {
		t.Fatal("a backup inside its deadline was not deferred")
	}
	if !strings.Contains(fail.failed["b-running"], "STRATA_BACKUP_DEADLINE") || !strings.Contains(fail.failed["b-never-planned"], "never planned") {
		t.Fatalf("failed: %v", fail.failed)
	}
	if _, ok := fail.failed["b-done"]; ok {
		t.Fatal("a verified backup was failed by its deadline")
	}
	if _, ok := fail.failed["b-young"]; ok {
		t.Fatal("a backup inside its deadline was failed")
	}
}
