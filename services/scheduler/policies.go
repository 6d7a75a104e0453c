package scheduler

import (
	"container/heap"
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
	key    string // in the policy bucket
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
	set := newPolicySet()
	started := time.Now()
	go func() {
		for c := range changes {
			mu.Lock()
			s.apply(set, c, started.Add(-catchup))
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
				// Only the policies whose next slot is due: a tick costs
				// O(due · log policies), not a pass over every policy.
				mu.Lock()
				ready := set.ready(now)
				mu.Unlock()
				for _, st := range ready {
					next := now.Add(tick) // a slot that could not be fired: the next tick
					if s.fireDue(ctx, st, now) {
						next = st.nextDue()
					}
					mu.Lock()
					set.schedule(st, next)
					mu.Unlock()
				}
			}
		}
	}()
	return nil
}

// policySet is the running policies and when each is next due (a min-heap
// of due times; an entry of a policy replaced or removed since is dropped
// when it comes up).
type policySet struct {
	states map[string]*policyState
	due    dueHeap
}

func newPolicySet() *policySet { return &policySet{states: map[string]*policyState{}} }

type dueEntry struct {
	at time.Time
	st *policyState
}

type dueHeap []dueEntry

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)        { *h = append(*h, x.(dueEntry)) }
func (h *dueHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// ready takes the policies due by now off the heap (schedule puts them
// back).
func (ps *policySet) ready(now time.Time) []*policyState {
	var out []*policyState
	for ps.due.Len() > 0 && !ps.due[0].at.After(now) {
		e := heap.Pop(&ps.due).(dueEntry)
		if ps.states[e.st.key] == e.st {
			out = append(out, e.st)
		}
	}
	return out
}

// schedule puts a policy back on the heap at at, unless it was replaced or
// removed meanwhile.
func (ps *policySet) schedule(st *policyState, at time.Time) {
	if ps.states[st.key] == st {
		heap.Push(&ps.due, dueEntry{at: at, st: st})
	}
}

// nextDue is when the policy's next slot after the handled ones fires
// (its jitter included).
func (st *policyState) nextDue() time.Time {
	slot := st.sched.Next(st.handled())
	return slot.Add(schedule.Jitter(st.policy.VM, slot, st.policy.Jitter))
}

// apply updates the running policies with a change. A policy starts from
// the later of since (the catch-up horizon) and its last update — a new
// policy does not fire slots from before it existed — and a changed one
// from the slots already handled.
func (s *scheduler) apply(set *policySet, c policy.Change, since time.Time) {
	states := set.states
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
	st := &policyState{key: c.Key, policy: p, sched: sched, last: last}
	states[c.Key] = st
	set.schedule(st, st.nextDue())
	s.log.Info("policy loaded", "vm", p.VM, "schedule", p.Schedule)
}

// fireDue fires every slot of one policy that is due by now. A slot that
// cannot be fired (NATS down) is retried on the next tick: false.
func (s *scheduler) fireDue(ctx context.Context, st *policyState, now time.Time) bool {
	for slot := st.sched.Next(st.handled()); !slot.After(now); slot = st.sched.Next(slot) {
		if slot.Add(schedule.Jitter(st.policy.VM, slot, st.policy.Jitter)).After(now) {
			return true
		}
		if err := s.fireSlot(ctx, st.policy, slot); err != nil {
			s.log.Warn("slot not fired; retrying", "vm", st.policy.VM, "slot", slot, "err", err)
			return false
		}
		st.handledUpTo(slot)
	}
	return true
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
