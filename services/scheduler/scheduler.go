// Package scheduler turns backup requests (the CLI, event triggers) into
// backups: it names each backup, opens the root span of its trace and
// hands it to the snapshotter. It records every backup's outcome.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/robfig/cron/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/bus"
	"github.com/strata-backup/strata/pkg/catalog"
	"github.com/strata-backup/strata/pkg/fleet"
	"github.com/strata-backup/strata/pkg/metrics"
	"github.com/strata-backup/strata/pkg/policy"
	"github.com/strata-backup/strata/pkg/runtime"
	"github.com/strata-backup/strata/pkg/schedule"
)

// Config of the scheduler (prefix STRATA_).
type Config struct {
	runtime.Common
	// SourceAllow: URL prefixes a triggered backup's source must start
	// with (whole path components), e.g. file:///srv/images/,nbd://kvm1:10809;
	// empty: any source. Every trigger (the API's, NATS's) is checked.
	SourceAllow []string `envconfig:"SOURCE_ALLOW"`
	// Tick is how often due slots are checked; Catchup how far back a
	// (re)started scheduler fires slots missed while no replica ran.
	Tick    time.Duration `envconfig:"SCHEDULER_TICK" default:"1s"`
	Catchup time.Duration `envconfig:"SCHEDULER_CATCHUP" default:"5m"`
	// Deadline: a backup not verified this long after it was requested is
	// failed (its snapshot released, its VM free for the next one); 0: none.
	Deadline time.Duration `envconfig:"BACKUP_DEADLINE" default:"12h"`
	// VerifyJobSchedule (cron, optional seconds field) runs a chunks
	// verification of every backup, spread over the transfer workers;
	// empty: never.
	VerifyJobSchedule string `envconfig:"VERIFY_JOB_SCHEDULE"`
	// GCSchedule (cron, optional seconds field) runs the repository's
	// maintenance — strata gc, with GCRecompress and at most GCRateLimit
	// bytes read per second while rewriting packs — in a quiet window;
	// empty: never (run strata gc yourself).
	GCSchedule   string `envconfig:"GC_SCHEDULE"`
	GCRecompress bool   `envconfig:"GC_RECOMPRESS" default:"true"`
	GCRateLimit  int64  `envconfig:"GC_RATE_LIMIT" default:"0"`
}

// Start registers the scheduler's endpoint and consumers.
func Start(ctx context.Context, rt *runtime.Runtime, cfg Config) error {
	s := &scheduler{cat: rt.Catalog, statuses: rt.Catalog, pub: rt.Bus, fail: rt, tracer: rt.Bus.Tracer, log: rt.Log, chunkSize: rt.Repo.Config.ChunkSize,
		allow: cfg.SourceAllow,
		request: func(ctx context.Context, subject string, req, reply contracts.Message) error {
			return bus.Request(ctx, rt.Bus.NC, subject, req, reply)
		}}
	if err := contracts.CheckSourceAllow(cfg.SourceAllow); err != nil {
		return err
	}
	svc, err := rt.Bus.AddService("backup scheduling: on-demand and event-triggered backups")
	if err != nil {
		return err
	}
	if err := bus.Endpoint(ctx, rt.Bus, svc, "backup", contracts.SubjectSchedulerRun, func(ctx context.Context, t *contracts.BackupTrigger) (contracts.Message, error) {
		return s.start(ctx, t)
	}); err != nil {
		return err
	}
	if err := bus.Endpoint(ctx, rt.Bus, svc, "cancel", contracts.SubjectSchedulerCancel, func(ctx context.Context, req *contracts.CancelRequest) (contracts.Message, error) {
		return s.cancel(ctx, req)
	}); err != nil {
		return err
	}
	if err := bus.Consume(ctx, rt.Bus, bus.Spec{Stream: contracts.StreamBackups, Durable: contracts.ConsumerSchedulerTriggers, Filters: []string{contracts.SubjectTrigger}},
		func(ctx context.Context, t *contracts.BackupTrigger) error {
			_, err := s.start(ctx, t)
			return err
		}); err != nil {
		return err
	}
	if err := bus.Consume(ctx, rt.Bus, bus.Spec{Stream: contracts.StreamBackups, Durable: contracts.ConsumerSchedulerOutcomes,
		Filters: []string{contracts.SubjectBackupVerified, contracts.SubjectBackupFailed}}, s.record); err != nil {
		return err
	}
	if cfg.Deadline > 0 {
		// One pending message per running backup, redelivered by JetStream at
		// its deadline: the cost follows the running backups, not the catalog.
		if err := bus.Consume(ctx, rt.Bus, bus.Spec{Stream: contracts.StreamBackups, Durable: contracts.ConsumerSchedulerDeadlines,
			Filters: []string{contracts.SubjectBackupRequested}, MaxDeliver: 1000, Concurrency: 4},
			func(ctx context.Context, req *contracts.BackupRequested) error {
				return s.enforceDeadline(ctx, req, cfg.Deadline)
			}); err != nil {
			return err
		}
	}
	if cfg.VerifyJobSchedule != "" {
		if err := s.runVerifyJobs(ctx, cfg.VerifyJobSchedule); err != nil {
			return err
		}
	}
	if cfg.GCSchedule != "" {
		if err := s.runMaintenance(ctx, cfg); err != nil {
			return err
		}
	}
	if err := s.runPolicies(ctx, rt.Bus.JS, max(cfg.Tick, 100*time.Millisecond), cfg.Catchup); err != nil {
		return err
	}
	// The per-VM metrics (last verified backup, RPO) come from here: every
	// replica exports the same values from the same watches.
	policies, err := policy.Open(ctx, rt.Bus.JS)
	if err != nil {
		return err
	}
	f, err := fleet.Watch(ctx, rt.Catalog, policies)
	if err != nil {
		return err
	}
	metrics.Install("fleet", f)
	metrics.Install("bad_chunks", fleet.BadChunks(func() (int, error) {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		list, err := rt.Bad.List(ctx)
		return len(list), err
	}))
	return nil
}

// The scheduler's ports: the few methods it uses of the catalog, the bus
// and the runtime, so that its slot logic is tested without NATS.
type (
	records interface {
		Get(ctx context.Context, vm, id string) (*contracts.BackupRecord, uint64, error)
		List(ctx context.Context, vm string) ([]*contracts.BackupRecord, error)
		Create(ctx context.Context, r *contracts.BackupRecord) (existing *contracts.BackupRecord, created bool, err error)
	}
	statuses interface {
		NoteOutcome(ctx context.Context, vm, id string) (*contracts.VMStatus, error)
	}
	publisher interface {
		Publish(ctx context.Context, subject string, m contracts.Message, msgID string) error
	}
	// failures records outcomes (runtime.Runtime).
	failures interface {
		FailBackup(ctx context.Context, vm, id, reason string) error
		FailRequest(ctx context.Context, req *contracts.BackupRequested, reason string) error
	}
)

type scheduler struct {
	cat       records
	statuses  statuses
	pub       publisher
	fail      failures
	tracer    trace.Tracer
	log       *slog.Logger
	chunkSize int
	allow     []string // STRATA_SOURCE_ALLOW
	// request asks a service (micro endpoint) and decodes its reply.
	request func(ctx context.Context, subject string, req, reply contracts.Message) error
}

// runVerifyJobs publishes a VerifyJob at every slot of the schedule. Every
// scheduler replica does; the slot's message id collapses the duplicates.
func (s *scheduler) runVerifyJobs(ctx context.Context, expr string) error {
	sched, err := schedule.Parse(expr)
	if err != nil {
		return fmt.Errorf("STRATA_VERIFY_JOB_SCHEDULE: %w", err)
	}
	atSlots(ctx, sched, func(next time.Time) {
		job := &contracts.VerifyJob{Schema: contracts.SchemaVersion, Slot: next.UTC()}
		if err := s.pub.Publish(ctx, contracts.SubjectVerifyJob, job, "verify-job-"+next.UTC().Format(time.RFC3339Nano)); err != nil {
			s.log.WarnContext(ctx, "verify job not started", "slot", next, "err", err)
		}
	})
	return nil
}

// atSlots calls f at every slot of sched, in its own goroutine, until ctx
// ends.
func atSlots(ctx context.Context, sched cron.Schedule, f func(slot time.Time)) {
	go func() {
		for next := sched.Next(time.Now()); ; next = sched.Next(next) {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(next)):
			}
			f(next)
		}
	}()
}

// runMaintenance asks dedup for a collection (compaction, recompression)
// at every slot of STRATA_GC_SCHEDULE. Every scheduler replica asks; the
// gc lock lets one run and the others are told it already runs.
func (s *scheduler) runMaintenance(ctx context.Context, cfg Config) error {
	sched, err := schedule.Parse(cfg.GCSchedule)
	if err != nil {
		return fmt.Errorf("STRATA_GC_SCHEDULE: %w", err)
	}
	if cfg.GCRateLimit < 0 {
		return fmt.Errorf("STRATA_GC_RATE_LIMIT %d: want bytes per second, 0 for none", cfg.GCRateLimit)
	}
	atSlots(ctx, sched, func(next time.Time) {
		req := &contracts.GCRequest{Schema: contracts.SchemaVersion, Recompress: cfg.GCRecompress, RateLimit: cfg.GCRateLimit}
		var reply contracts.GCReply
		rctx, cancel := context.WithTimeout(ctx, 24*time.Hour)
		err := s.request(rctx, contracts.SubjectDedupGC, req, &reply)
		cancel()
		switch {
		case err != nil && strings.Contains(err.Error(), "already running"):
			s.log.InfoContext(ctx, "scheduled gc: another collection runs", "slot", next)
		case err != nil:
			s.log.WarnContext(ctx, "scheduled gc failed", "slot", next, "err", err)
		default:
			s.log.InfoContext(ctx, "scheduled gc", "slot", next, "freed_bytes", reply.FreedBytes, "packs_repacked", reply.PacksRepacked, "recompressed", reply.Recompressed)
		}
	})
	return nil
}

// enforceDeadline fails a backup still running at its deadline. A request
// the snapshotter never got to is recorded as failed too, so the user sees
// it rather than a backup that never appears.
func (s *scheduler) enforceDeadline(ctx context.Context, req *contracts.BackupRequested, deadline time.Duration) error {
	if wait := time.Until(req.RequestedAt.Add(deadline)); wait > 0 {
		return bus.Later(wait)
	}
	reason := fmt.Sprintf("not finished within the backup deadline (STRATA_BACKUP_DEADLINE=%s)", deadline)
	rec, _, err := s.cat.Get(ctx, req.VM, req.BackupID)
	if errors.Is(err, catalog.ErrNotFound) {
		return s.fail.FailRequest(ctx, req, reason+"; never planned")
	}
	if err != nil {
		return err
	}
	if rec.State.Final() {
		return nil
	}
	return s.fail.FailBackup(ctx, req.VM, req.BackupID, reason)
}

// start names a new backup and requests it. The root span of the backup's
// trace starts here (as a child of the caller's span, when it sent one).
func (s *scheduler) start(ctx context.Context, t *contracts.BackupTrigger) (*contracts.BackupAccepted, error) {
	if len(s.allow) > 0 && !contracts.SourceUnder(s.allow, t.Source) {
		return nil, bus.Permanent(fmt.Errorf("source %q refused: not under STRATA_SOURCE_ALLOW (%s)", t.Source, strings.Join(s.allow, ", ")))
	}
	id, err := uuid.NewV7() // time-ordered: ids sort by start time
	if err != nil {
		return nil, err
	}
	ctx, span := s.tracer.Start(ctx, "backup "+t.VM, trace.WithAttributes(
		attribute.String("strata.vm", t.VM), attribute.String("strata.backup_id", id.String()), attribute.String("strata.source", t.Source)))
	defer span.End()
	req := &contracts.BackupRequested{Schema: contracts.SchemaVersion, BackupID: id.String(), VM: t.VM, Source: t.Source, RequestedAt: time.Now().UTC(), Verify: t.Verify, SkipFree: t.SkipFree,
		Consistency: t.Consistency}
	if err := s.pub.Publish(ctx, contracts.SubjectBackupRequested, req, "req-"+req.BackupID); err != nil {
		return nil, err
	}
	s.log.InfoContext(ctx, "backup requested", "vm", t.VM, "backup", req.BackupID, "source", t.Source)
	return &contracts.BackupAccepted{Schema: contracts.SchemaVersion, BackupID: req.BackupID, TraceID: span.SpanContext().TraceID().String()}, nil
}

// cancel fails a running backup on the user's request: its outcome is
// published, so segments not yet read are skipped, its snapshot released
// and waiting clients return.
func (s *scheduler) cancel(ctx context.Context, req *contracts.CancelRequest) (*contracts.CancelReply, error) {
	rec, _, err := s.cat.Get(ctx, req.VM, req.BackupID)
	if err != nil {
		return nil, err
	}
	reply := &contracts.CancelReply{Schema: contracts.SchemaVersion, State: rec.State, Reason: rec.Error}
	if rec.State.Final() {
		return reply, nil
	}
	if err := s.fail.FailBackup(ctx, req.VM, req.BackupID, "cancelled by the user"); err != nil {
		return nil, err
	}
	if rec, _, err = s.cat.Get(ctx, req.VM, req.BackupID); err != nil {
		return nil, err
	}
	reply.State, reply.Reason, reply.Cancelled = rec.State, rec.Error, rec.Error == "cancelled by the user"
	return reply, nil
}

// record notes a backup's outcome in its VM's status (the fleet view and
// the per-VM metrics); redelivered until that held.
func (s *scheduler) record(ctx context.Context, o *contracts.BackupOutcome) error {
	s.log.InfoContext(ctx, "backup finished", "vm", o.VM, "backup", o.BackupID, "state", o.State, "reason", o.Reason)
	if _, err := s.statuses.NoteOutcome(ctx, o.VM, o.BackupID); err != nil {
		if errors.Is(err, catalog.ErrNotFound) || errors.Is(err, catalog.ErrInvalid) {
			return bus.Permanent(err)
		}
		return err
	}
	return nil
}
