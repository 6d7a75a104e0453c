package scheduler

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
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
func (s *scheduler) runPolicies(ctx context.Context, js jetstream.JetStream, tick, catchup time.Duration) error {
	policies, err := policy.Open(ctx, js)
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
			s.apply(states, c, started.Add(-catchup))
			mu.Unlock()
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

// apply updates the running policies with a change. A policy starts from
// the later of since (the catch-up horizon) and its last update — a new
// policy does not fire slots from before it existed — and a changed one
// from the slots already handled.
func (s *scheduler) apply(states map[string]*policyState, c policy.Change, since time.Time) {
	if c.Err != nil {
		s.log.Error("policy refused", "key", c.Key, "err", c.Err)
	}
	if c.Policy == nil {
		delete(states, c.Key)
		return
	}
	p := *c.Policy
	sched, err := schedule.Parse(p.Schedule) // checked by the watch; a bad one is kept out all the same
	if err != nil {
		s.log.Error("policy refused", "key", c.Key, "err", err)
		delete(states, c.Key)
		return
	}
	last := since
	if old, ok := states[c.Key]; ok {
		last = old.handled()
	}
	if p.UpdatedAt.After(last) {
		last = p.UpdatedAt
	}
	states[c.Key] = &policyState{policy: p, sched: sched, last: last}
	s.log.Info("policy loaded", "vm", p.VM, "schedule", p.Schedule)
}

// fireDue fires every slot of one policy that is due by now. A slot that
// cannot be fired (NATS down) is retried on the next tick.
func (s *scheduler) fireDue(ctx context.Context, st *policyState, now time.Time) {
	for slot := st.sched.Next(st.handled()); !slot.After(now); slot = st.sched.Next(slot) {
		if slot.Add(schedule.Jitter(st.policy.VM, slot, st.policy.Jitter)).After(now) {
			return
		}
		if err := s.fireSlot(ctx, st.policy, slot); err != nil {
			s.log.Warn("slot not fired; retrying", "vm", st.policy.VM, "slot", slot, "err", err)
			return
		}
		st.handledUpTo(slot)
	}
}

func (s *scheduler) fireSlot(ctx context.Context, p contracts.Policy, slot time.Time) error {
	id := schedule.SlotBackupID(p.VM, slot)
	ctx, span := s.tracer.Start(ctx, "backup "+p.VM, trace.WithNewRoot(), trace.WithAttributes(
		attribute.String("strata.vm", p.VM), attribute.String("strata.backup_id", id), attribute.String("strata.slot", slot.Format(time.RFC3339))))
	defer span.End()
	recs, err := s.cat.List(ctx, p.VM)
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
				ChunkSize: s.chunkSize, CreatedAt: now, UpdatedAt: now, FinishedAt: &now, Slot: &slot,
				TraceID: span.SpanContext().TraceID().String()}
			if _, _, err := s.cat.Create(ctx, skipped); err != nil {
				return err
			}
			s.log.InfoContext(ctx, "slot skipped: previous backup still running", "vm", p.VM, "slot", slot, "running", r.ID)
			return nil
		}
	}
	req := &contracts.BackupRequested{Schema: contracts.SchemaVersion, BackupID: id, VM: p.VM, Source: p.Source,
		RequestedAt: time.Now().UTC(), Slot: &slot, KeyInterval: p.KeyInterval, Verify: p.Verify, SkipFree: p.SkipFree, Consistency: p.Consistency}
	if err := s.pub.Publish(ctx, contracts.SubjectBackupRequested, req, "req-"+id); err != nil {
		return err
	}
	s.log.InfoContext(ctx, "scheduled backup requested", "vm", p.VM, "backup", id, "slot", slot)
	return nil
}
