package scheduler

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/robfig/cron/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/policy"
	"github.com/strata-backup/strata/pkg/schedule"
)

// policyState is one policy as the scheduler runs it.
type policyState struct {
	policy contracts.Policy
	sched  cron.Schedule
	// last: slots up to here are handled. Written by the ticker, read by
	// the watcher when the policy changes: behind mu.
	mu   sync.Mutex
	last time.Time
}

func (st *policyState) handled() time.Time {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.last
}

func (st *policyState) handledUpTo(t time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.last = t
}

// runPolicies keeps the policies in memory (a KV watch) and fires due
// slots every tick. Replicas coordinate through the slot's deterministic
// backup id (schedule.SlotBackupID): each replica fires every slot, and the
// duplicates collapse, so no slot is lost while any replica runs and none
// is doubled. A (re)started scheduler looks back `catchup` for slots that
// fired while no replica was up.
func (s *scheduler) runPolicies(ctx context.Context, tick, catchup time.Duration) error {
	policies, err := policy.Open(ctx, s.rt.Bus.JS)
	if err != nil {
		return err
	}
	changes, err := policies.Watch(ctx)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	states := map[string]*policyState{}
	started := time.Now()
	go func() {
		for c := range changes {
			mu.Lock()
			if c.Err != nil {
				s.rt.Log.Error("policy refused", "key", c.Key, "err", c.Err)
			}
			if c.Policy == nil {
				delete(states, c.Key)
				mu.Unlock()
				continue
			}
			p := *c.Policy
			sched, _ := schedule.Parse(p.Schedule) // parsed by the watch
			last := started.Add(-catchup)
			if old, ok := states[c.Key]; ok {
				last = old.handled()
			}
			if p.UpdatedAt.After(last) {
				last = p.UpdatedAt // a new policy does not fire slots from before it existed
			}
			states[c.Key] = &policyState{policy: p, sched: sched, last: last}
			mu.Unlock()
			s.rt.Log.Info("policy loaded", "vm", p.VM, "schedule", p.Schedule)
		}
	}()
	go func() {
		t := time.NewTicker(tick)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				mu.Lock()
				due := make([]*policyState, 0, len(states))
				for _, st := range states {
					due = append(due, st)
				}
				mu.Unlock()
				for _, st := range due {
					s.fireDue(ctx, st, now)
				}
			}
		}
	}()
	return nil
}

// fireDue fires every slot of one policy that is due by now. A slot that
// cannot be fired (NATS down) is retried on the next tick.
func (s *scheduler) fireDue(ctx context.Context, st *policyState, now time.Time) {
	for slot := st.sched.Next(st.handled()); !slot.After(now); slot = st.sched.Next(slot) {
		if slot.Add(schedule.Jitter(st.policy.VM, slot, st.policy.Jitter)).After(now) {
			return
		}
		if err := s.fireSlot(ctx, st.policy, slot); err != nil {
			s.rt.Log.Warn("slot not fired; retrying", "vm", st.policy.VM, "slot", slot, "err", err)
			return
		}
		st.handledUpTo(slot)
	}
}

func (s *scheduler) fireSlot(ctx context.Context, p contracts.Policy, slot time.Time) error {
	id := schedule.SlotBackupID(p.VM, slot)
	ctx, span := s.rt.Bus.Tracer.Start(ctx, "backup "+p.VM, trace.WithNewRoot(), trace.WithAttributes(
		attribute.String("strata.vm", p.VM), attribute.String("strata.backup_id", id), attribute.String("strata.slot", slot.Format(time.RFC3339))))
	defer span.End()
	recs, err := s.rt.Catalog.List(ctx, p.VM)
	if err != nil {
		return err
	}
	for _, r := range recs {
		if r.ID == id {
			return nil // this slot was handled already (another replica, or before a restart)
		}
	}
	for _, r := range recs {
		if !r.State.Final() {
			// One backup per VM at a time: record the skipped slot.
			now := time.Now().UTC()
			skipped := &contracts.BackupRecord{Schema: contracts.SchemaVersion, ID: id, VM: p.VM, Source: p.Source,
				State: contracts.StateSkipped, Error: fmt.Sprintf("backup %s still %s", r.ID, r.State),
				ChunkSize: s.rt.Repo.Config.ChunkSize, CreatedAt: now, UpdatedAt: now, FinishedAt: &now, Slot: &slot,
				TraceID: span.SpanContext().TraceID().String()}
			if _, _, err := s.rt.Catalog.Create(ctx, skipped); err != nil {
				return err
			}
			s.rt.Log.InfoContext(ctx, "slot skipped: previous backup still running", "vm", p.VM, "slot", slot, "running", r.ID)
			return nil
		}
	}
	req := &contracts.BackupRequested{Schema: contracts.SchemaVersion, BackupID: id, VM: p.VM, Source: p.Source,
		RequestedAt: time.Now().UTC(), Slot: &slot, KeyInterval: p.KeyInterval, Verify: p.Verify, SkipFree: p.SkipFree}
	if err := s.rt.Bus.Publish(ctx, contracts.SubjectBackupRequested, req, "req-"+id); err != nil {
		return err
	}
	s.rt.Log.InfoContext(ctx, "scheduled backup requested", "vm", p.VM, "backup", id, "slot", slot)
	return nil
}
