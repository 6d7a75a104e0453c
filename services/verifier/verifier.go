// Package verifier decides whether a committed backup is good: always that
// every manifest decodes and every chunk it names is stored, then the
// backup's mode — trivial (size and first MiBs against the source),
// certify (digest of the chunk map from a full source re-read and from
// every stored chunk re-hashed) or chunks (every chunk re-hashed). A bad
// chunk is recorded, every backup referencing it marked damaged, and dedup
// then has the next backup upload it again (self-healing).
package verifier

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/bus"
	"github.com/strata-backup/strata/pkg/catalog"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/metrics"
	"github.com/strata-backup/strata/pkg/policy"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/runtime"
	"github.com/strata-backup/strata/pkg/source"
)

// Config of the verifier (prefix STRATA_).
type Config struct {
	runtime.Common
	source.Config
	// Mode run on commit when the backup's request names none.
	Mode contracts.VerifyMode `envconfig:"VERIFY_MODE" default:"stored"`
	// TrivialMiB: how much of the start of each disk the trivial check
	// compares.
	TrivialMiB int64 `envconfig:"VERIFY_TRIVIAL_MIB" default:"64"`
	// ScratchDir holds restore tests' images (sparse, removed after each);
	// empty: the system's temporary directory.
	ScratchDir string `envconfig:"VERIFY_SCRATCH_DIR"`
	// MaxDeliver: attempts at verifying a committed backup (source or
	// store unreachable) before it is failed with the last error.
	MaxDeliver int `envconfig:"VERIFY_MAX_DELIVER" default:"10"`
	// CheckShards: passes `strata check` makes over the chunk-id space;
	// its memory is the referenced ids of one pass (32 B each).
	CheckShards int `envconfig:"CHECK_SHARDS" default:"1"`
}

// Start registers the verifier's consumer and its endpoints.
func Start(ctx context.Context, rt *runtime.Runtime, cfg Config) error {
	if err := cfg.Mode.Validate(false); err != nil {
		return fmt.Errorf("STRATA_VERIFY_MODE: %w", err)
	}
	if err := contracts.ValidShards(cfg.CheckShards); err != nil {
		return fmt.Errorf("STRATA_CHECK_SHARDS: %w", err)
	}
	policies, err := policy.Open(ctx, rt.Bus.JS)
	if err != nil {
		return err
	}
	v := &verifier{policies: policies, cat: rt.Catalog, bad: rt.Bad, pub: rt.Bus, fail: rt, repo: rt.Repo, js: rt.Bus.JS, log: rt.Log, sources: source.NewOpener(cfg.Config), mode: cfg.Mode, trivialBytes: max(1, cfg.TrivialMiB) << 20, scratch: cfg.ScratchDir, checkShards: cfg.CheckShards}
	svc, err := rt.Bus.AddService("backup verification, chunk verify jobs, damage report")
	if err != nil {
		return err
	}
	if err := bus.Endpoint(ctx, rt.Bus, svc, "verify", contracts.SubjectVerify, func(ctx context.Context, req *contracts.VerifyRequest) (contracts.Message, error) {
		return v.verifyNow(ctx, req)
	}); err != nil {
		return err
	}
	if err := bus.Endpoint(ctx, rt.Bus, svc, "check", contracts.SubjectCheck, func(ctx context.Context, req *contracts.CheckRequest) (contracts.Message, error) {
		return v.health(ctx, req)
	}); err != nil {
		return err
	}
	if err := bus.Consume(ctx, rt.Bus, bus.Spec{Stream: contracts.StreamBackups, Durable: contracts.ConsumerVerifierJobs,
		Filters: []string{contracts.SubjectVerifyJob}, AckWait: time.Minute, MaxDeliver: 3}, v.scheduledJob); err != nil {
		return err
	}
	return bus.Consume(ctx, rt.Bus, bus.Spec{Stream: contracts.StreamBackups, Durable: contracts.ConsumerVerifier,
		Filters: []string{contracts.SubjectBackupCommitted}, Concurrency: 2, AckWait: 10 * time.Minute, MaxDeliver: cfg.MaxDeliver,
		GiveUp: func(ctx context.Context, m contracts.Message, err error) error {
			c := m.(*contracts.BackupCommitted)
			return rt.FailBackup(ctx, c.VM, c.BackupID, "verification: "+err.Error())
		}}, v.verify)
}

// The verifier's ports: the few methods it uses of the catalog, the
// bad-chunk marks, the bus and the runtime, so that its levels and its
// damage attribution are tested without NATS. The repository is the real
// one (on an in-memory store in unit tests): it is the content layer, not
// a service.
type (
	records interface {
		Get(ctx context.Context, vm, id string) (*contracts.BackupRecord, uint64, error)
		List(ctx context.Context, vm string) ([]*contracts.BackupRecord, error)
		MarkVerified(ctx context.Context, vm, id string, mode contracts.VerifyMode, digests []contracts.DiskDigest) (*contracts.BackupRecord, bool, error)
		RecordVerification(ctx context.Context, vm, id string, mode contracts.VerifyMode, digests []contracts.DiskDigest) error
		SetDamaged(ctx context.Context, vm, id string, damaged bool) (bool, error)
	}
	badMarks interface {
		Mark(ctx context.Context, b contracts.BadChunk) error
		Clear(ctx context.Context, id chunk.ID) error
		List(ctx context.Context) ([]contracts.BadChunk, error)
	}
	publisher interface {
		Publish(ctx context.Context, subject string, m contracts.Message, msgID string) error
	}
	failures interface {
		FailBackup(ctx context.Context, vm, id, reason string) error
	}
	policyList interface {
		List(ctx context.Context) ([]contracts.Policy, error)
	}
)

type verifier struct {
	cat          records
	bad          badMarks
	pub          publisher
	fail         failures
	repo         *repo.Repository
	policies     policyList
	js           jetstream.JetStream // verify jobs' results: integration only
	log          *slog.Logger
	sources      *source.Opener
	mode         contracts.VerifyMode
	trivialBytes int64
	scratch      string
	checkShards  int
	jobRunning   atomic.Bool
}

func (v *verifier) verify(ctx context.Context, c *contracts.BackupCommitted) error {
	rec, _, err := v.cat.Get(ctx, c.VM, c.BackupID)
	if errors.Is(err, catalog.ErrNotFound) {
		return bus.Permanent(err)
	}
	if err != nil {
		return err
	}
	if rec.State != contracts.StateCommitted {
		return nil // already verified or failed: a redelivery
	}
	if problem, err := v.check(ctx, rec, c.Stored); err != nil {
		return err
	} else if problem != "" {
		metrics.Verifications.WithLabelValues(string(contracts.VerifyStored), "failed").Inc()
		return v.fail.FailBackup(ctx, rec.VM, rec.ID, "verification: "+problem)
	}
	mode := cmp.Or(rec.Verify, v.mode)
	var digests []contracts.DiskDigest
	if mode != contracts.VerifyStored {
		// While the backup is committed its source snapshot is still held:
		// trivial and certify compare against exactly what was backed up.
		run := v.newRun()
		reply, err := v.deep(ctx, rec, mode, run)
		if err != nil {
			return err
		}
		if err := v.recordBad(ctx, run, reply); err != nil {
			return err
		}
		if !reply.OK {
			metrics.Verifications.WithLabelValues(string(mode), "failed").Inc()
			return v.fail.FailBackup(ctx, rec.VM, rec.ID, reply.Problem)
		}
		digests = reply.Digests
	}
	now, verified, err := v.cat.MarkVerified(ctx, rec.VM, rec.ID, mode, digests)
	if err != nil {
		return err
	}
	if !verified {
		return nil
	}
	metrics.Verifications.WithLabelValues(string(mode), "passed").Inc()
	metrics.BackupSuccess.Inc()
	if now.FinishedAt != nil {
		metrics.BackupDuration.Observe(now.FinishedAt.Sub(now.CreatedAt).Seconds())
	}
	out := &contracts.BackupOutcome{Schema: contracts.SchemaVersion, BackupID: rec.ID, VM: rec.VM, State: contracts.StateVerified}
	if err := v.pub.Publish(ctx, contracts.SubjectBackupVerified, out, "outcome-"+rec.ID); err != nil {
		return err
	}
	v.log.InfoContext(ctx, "backup verified", "vm", rec.VM, "backup", rec.ID)
	return nil
}

// check returns a description of what is wrong with the backup ("" when
// nothing), or an error when it could not look (retry later). An
// incremental checks only the chunks that differ from its verified parent:
// its cost follows the change, not the disk size. Chunks the backup's own
// workers stored with an acknowledged PUT (stored, per disk: runs of chunk
// positions) are not asked about again — minutes ago the store said yes,
// and a collection deletes nothing younger than its grace period — so a
// first full costs no request per chunk here either.
func (v *verifier) check(ctx context.Context, rec *contracts.BackupRecord, stored [][]contracts.ChunkRun) (string, error) {
	for d, disk := range rec.Disks {
		// The parent's map loads while this one does: both are on the path
		// of every incremental.
		var parent *manifest.Manifest
		loaded := make(chan struct{})
		go func() {
			defer close(loaded)
			parent = v.verifiedParentManifest(ctx, rec, disk.Index)
		}()
		man, err := v.repo.GetManifest(ctx, disk.Manifest)
		<-loaded
		if err != nil {
			return err.Error(), nil
		}
		if man.DiskSize != disk.Size || man.BackupID != rec.ID {
			return fmt.Sprintf("manifest %s describes backup %s of %d bytes, want %s of %d", disk.Manifest, man.BackupID, man.DiskSize, rec.ID, disk.Size), nil
		}
		if parent != nil && parent.Count() != man.Count() {
			parent = nil // another shape: check every chunk
		}
		// Batches checked a few at a time: an incremental's changed chunks
		// are one round of requests, not a queue of batches.
		var mu sync.Mutex
		var problem string
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(4)
		flush := func(batch []chunk.ID) {
			g.Go(func() error {
				p, err := v.missing(gctx, batch)
				if p != "" {
					mu.Lock()
					problem = cmp.Or(problem, p)
					mu.Unlock()
				}
				return err
			})
		}
		// What was asked already, and packs looked at, in bounded sets: a
		// disk full of data has tens of millions of chunks, and a repeat
		// the sets forgot costs one more question, not memory.
		seen := newWindow[chunk.ID](1 << 16)
		packs := newWindow[chunk.PackID](1 << 14) // packed chunks: one request per pack
		var runs []contracts.ChunkRun             // stored by this backup's workers, in disk order
		if d < len(stored) {
			runs = stored[d]
		}
		var batch []chunk.ID
		for i, ref := range man.Data() {
			id := ref.ID
			for len(runs) > 0 && int64(runs[0].Start)+int64(runs[0].Count) <= i {
				runs = runs[1:]
			}
			if len(runs) > 0 && int64(runs[0].Start) <= i {
				seen.add(id) // stored minutes ago: present, and so are its repeats
				continue
			}
			if parent != nil && parent.ID(i) == id {
				continue
			}
			if seen.has(id) {
				continue
			}
			seen.add(id)
			if l := ref.Loc; l.InPack() {
				if !packs.has(l.Pack) {
					packs.add(l.Pack)
					g.Go(func() error {
						// A pack compaction moved is read through its records.
						present, err := v.repo.PackPresent(gctx, l.Pack)
						if err == nil && !present {
							mu.Lock()
							problem = cmp.Or(problem, fmt.Sprintf("pack %s missing (holds chunk %s)", repo.Where(id, l), id))
							mu.Unlock()
						}
						return err
					})
				}
				continue
			}
			batch = append(batch, id)
			if len(batch) == 256 {
				flush(batch)
				batch = nil
			}
		}
		if len(batch) > 0 {
			flush(batch)
		}
		if err := g.Wait(); err != nil {
			return "", err
		}
		if problem != "" {
			return problem, nil
		}
	}
	return "", nil
}

func (v *verifier) missing(ctx context.Context, ids []chunk.ID) (string, error) {
	if len(ids) == 0 {
		return "", nil
	}
	missing, err := v.repo.Chunks.Missing(ctx, ids)
	if err != nil || len(missing) == 0 {
		return "", err
	}
	var names []string
	for _, id := range missing[:min(3, len(missing))] {
		names = append(names, repo.Where(id, chunk.Loc{}))
	}
	return fmt.Sprintf("%d chunk objects missing, e.g. %s", len(missing), strings.Join(names, ", ")), nil
}

// verifiedParentManifest returns the chunk ids of the parent's disk when
// the parent is verified and has the same shape; nil otherwise (then every
// chunk is checked).
func (v *verifier) verifiedParentManifest(ctx context.Context, rec *contracts.BackupRecord, disk int) *manifest.Manifest {
	from := cmp.Or(rec.Parent, rec.Base) // an incremental's parent, or what a full read compared against
	if from == "" {
		return nil
	}
	parent, _, err := v.cat.Get(ctx, rec.VM, from)
	if err != nil || parent.State != contracts.StateVerified || disk >= len(parent.Disks) {
		return nil
	}
	pm, err := v.repo.GetManifest(ctx, parent.Disks[disk].Manifest)
	if err != nil {
		return nil
	}
	return pm
}

// window is a set that keeps at least the last limit keys added: two
// generations of maps, the older dropped when the newer fills.
type window[K comparable] struct {
	limit      int
	young, old map[K]struct{}
}

func newWindow[K comparable](limit int) *window[K] {
	return &window[K]{limit: limit, young: map[K]struct{}{}, old: map[K]struct{}{}}
}

func (w *window[K]) has(k K) bool {
	if _, ok := w.young[k]; ok {
		return true
	}
	_, ok := w.old[k]
	return ok
}

func (w *window[K]) add(k K) {
	if len(w.young) >= w.limit {
		w.old, w.young = w.young, make(map[K]struct{}, w.limit)
	}
	w.young[k] = struct{}{}
}
