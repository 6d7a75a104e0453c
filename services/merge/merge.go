// Package merge assembles backups: it collects the segment results of a
// backup (duplicates and any order tolerated), and once every segment of
// every disk is in, writes each disk's manifest and the backup record to
// the repository, marks the backup committed in the catalog and hands it to
// the verifier.
package merge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/bus"
	"github.com/strata-backup/strata/pkg/catalog"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/copies"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/mirror"
	"github.com/strata-backup/strata/pkg/policy"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/retention"
	"github.com/strata-backup/strata/pkg/runtime"
)

// Config of the merge service (prefix STRATA_).
type Config struct {
	runtime.Common
	// Copy targets' credentials and lock (STRATA_COPY_*), for policies
	// with a copy target (embedded: envconfig then reads them with the
	// STRATA_ prefix alone).
	copies.Target
	// Hooks observe pruning step by step; nil in production. The e2e suite
	// builds a merge binary whose hook exits where a crash would.
	Hooks Hooks `ignored:"true"`
}

// Hooks are called before each step of pruning one backup (manifests,
// record, catalog); an error stops the prune there, as a crash would.
type Hooks interface {
	BeforePruneStep(step, backupID string) error
}

// Start registers the merge consumer.
func Start(ctx context.Context, rt *runtime.Runtime, cfg Config) error {
	results, err := rt.Bus.JS.Stream(ctx, contracts.StreamResults)
	if err != nil {
		return fmt.Errorf("open results stream: %w", err)
	}
	m := &merger{cat: rt.Catalog, repo: rt.Repo, results: results, pub: rt.Bus, log: rt.Log, fail: rt.FailBackup}
	pr := &pruner{cat: rt.Catalog, store: rt.Repo.Store, hooks: cfg.Hooks, log: rt.Log}
	if rt.Repo.Locked() {
		pr.lockedUntil = rt.Repo.LockedUntil
	}
	svc, err := rt.Bus.AddService("backup assembly, retention and pruning")
	if err != nil {
		return err
	}
	if err := bus.Endpoint(ctx, rt.Bus, svc, "prune", contracts.SubjectMergePrune, func(ctx context.Context, req *contracts.PruneRequest) (contracts.Message, error) {
		rules := retention.Rules{Last: req.KeepLast, Hourly: req.KeepHourly, Daily: req.KeepDaily, Weekly: req.KeepWeekly, Monthly: req.KeepMonthly, Yearly: req.KeepYearly}
		if req.UsePolicy {
			var ok bool
			if rules, ok, err = policyRules(ctx, rt, req.VM); err != nil {
				return nil, err
			} else if !ok || rules.None() {
				return nil, fmt.Errorf("vm %q has no policy with retention rules", req.VM)
			}
		}
		return pr.prune(ctx, req.VM, rules, req.DryRun)
	}); err != nil {
		return err
	}
	if err := bus.Endpoint(ctx, rt.Bus, svc, "remove", contracts.SubjectMergeRemove, func(ctx context.Context, req *contracts.RemoveRequest) (contracts.Message, error) {
		return pr.remove(ctx, req)
	}); err != nil {
		return err
	}
	// Retention runs after every verified backup of a VM with a policy.
	if err := bus.Consume(ctx, rt.Bus, bus.Spec{Stream: contracts.StreamBackups, Durable: contracts.ConsumerMergeRetention,
		Filters: []string{contracts.SubjectBackupVerified}}, func(ctx context.Context, o *contracts.BackupOutcome) error {
		rules, ok, err := policyRules(ctx, rt, o.VM)
		if err != nil || !ok || rules.None() {
			return err
		}
		_, err = pr.prune(ctx, o.VM, rules, false)
		return err
	}); err != nil {
		return err
	}
	// A policy's copy target gets the VM's backups after every verified
	// one (all it lacks: a copy missed while the target was down catches
	// up), then the copy's own retention.
	policies, err := policy.Open(ctx, rt.Bus.JS)
	if err != nil {
		return err
	}
	mirrors, err := mirror.Open(ctx, rt.Bus.JS)
	if err != nil {
		return err
	}
	cp := &copier{rt: rt, cfg: cfg, policies: policies, targets: map[string]*repo.Repository{}}
	if err := bus.Consume(ctx, rt.Bus, bus.Spec{Stream: contracts.StreamBackups, Durable: contracts.ConsumerMergeCopy,
		Filters: []string{contracts.SubjectBackupVerified}, AckWait: 30 * time.Minute, MaxDeliver: 5}, cp.afterVerified); err != nil {
		return err
	}
	// A VM's standby mirror follows its verified backups.
	if err := bus.Consume(ctx, rt.Bus, bus.Spec{Stream: contracts.StreamBackups, Durable: contracts.ConsumerMergeMirror,
		Filters: []string{contracts.SubjectBackupVerified}, AckWait: 30 * time.Minute, MaxDeliver: 3}, func(ctx context.Context, o *contracts.BackupOutcome) error {
		return followMirror(ctx, rt, mirrors, o)
	}); err != nil {
		return err
	}
	return bus.Consume(ctx, rt.Bus, bus.Spec{Stream: contracts.StreamResults, Durable: contracts.ConsumerMerge,
		Filters: []string{contracts.SubjectSegmentDonePrefix + ">"}, Concurrency: 4, AckWait: time.Minute,
		GiveUp: func(ctx context.Context, msg contracts.Message, err error) error {
			d := msg.(*contracts.SegmentDone)
			return rt.FailBackup(ctx, d.VM, d.BackupID, fmt.Sprintf("merge: %v", err))
		}}, m.segmentDone)
}

// The ports merge depends on: the few methods it uses of the catalog, the
// repository, the results stream and the bus, so that its logic is
// unit-tested with in-memory fakes (merge_test.go) and only the
// integration tests need NATS.
type (
	// records: the backup records' transitions merge makes.
	records interface {
		Get(ctx context.Context, vm, id string) (*contracts.BackupRecord, uint64, error)
		RecordSegment(ctx context.Context, vm, id string, s catalog.SegmentResult) (*contracts.BackupRecord, bool, error)
		Commit(ctx context.Context, vm, id string, disks []catalog.CommittedDisk) (*contracts.BackupRecord, bool, error)
	}
	// manifests: where chunk maps are read and written.
	manifests interface {
		GetManifest(ctx context.Context, key string) (*manifest.Manifest, error)
		PutManifest(ctx context.Context, vm string, m *manifest.Manifest) (string, error)
		// Cover keeps what a backup needs locked as long as the backup
		// (a no-op in a repository without Object Lock).
		Cover(ctx context.Context, made time.Time, mans ...*manifest.Manifest) (repo.LockStats, error)
		Forget(packs map[chunk.PackID]time.Time)
	}
	// resultStream: the segment results (STRATA_RESULTS).
	resultStream interface {
		GetLastMsgForSubject(ctx context.Context, subject string) (*jetstream.RawStreamMsg, error)
		Purge(ctx context.Context, opts ...jetstream.StreamPurgeOpt) error
	}
	// publisher: events to other services.
	publisher interface {
		Publish(ctx context.Context, subject string, m contracts.Message, msgID string) error
	}
)

type merger struct {
	cat     records
	repo    manifests
	results resultStream
	pub     publisher
	log     *slog.Logger
	// fail fails a backup and announces it (runtime.FailBackup).
	fail func(ctx context.Context, vm, id, reason string) error
}

func (m *merger) segmentDone(ctx context.Context, d *contracts.SegmentDone) error {
	if d.Failed != "" {
		// Only a backup still transferring fails: a late report (a segment
		// done, then given up on when its ack was lost) changes nothing.
		rec, _, err := m.cat.Get(ctx, d.VM, d.BackupID)
		if errors.Is(err, catalog.ErrNotFound) {
			return bus.Permanent(err)
		}
		if err != nil {
			return err
		}
		if rec.State != contracts.StateTransferring {
			m.log.WarnContext(ctx, "segment failure after the transfer", "vm", d.VM, "backup", d.BackupID, "state", rec.State, "reason", d.Failed)
			return nil
		}
		return m.fail(ctx, d.VM, d.BackupID, d.Failed)
	}
	rec, _, err := m.cat.RecordSegment(ctx, d.VM, d.BackupID, catalog.SegmentResult{Disk: d.Disk, Index: d.Index,
		UploadedChunks: int64(d.UploadedChunks), UploadedBytes: d.UploadedBytes, ReadBytes: d.ReadBytes})
	if errors.Is(err, catalog.ErrNotFound) || errors.Is(err, catalog.ErrInvalid) {
		return bus.Permanent(err)
	}
	if err != nil {
		return err
	}
	// Checked on every result, not only when this one completed the set: a
	// merge that crashed after recording the last bit finishes the job when
	// that last result is redelivered.
	if rec.State != contracts.StateTransferring || rec.SegmentsDone() < rec.Segments() {
		return nil
	}
	return m.commit(ctx, rec, d)
}

// commit assembles and stores the backup's manifests and commits it; last
// is the result that completed it (in hand: the stream may not show it
// yet on the replica a read reaches).
func (m *merger) commit(ctx context.Context, rec *contracts.BackupRecord, last *contracts.SegmentDone) error {
	disks := make([]catalog.CommittedDisk, len(rec.Disks))
	stored := make([][]contracts.ChunkRun, len(rec.Disks))
	mans := make([]*manifest.Manifest, len(rec.Disks))
	defer func() { // a disk holding a lot of data has a spill file
		for _, man := range mans {
			if man != nil {
				man.Close()
			}
		}
	}()
	for i, disk := range rec.Disks {
		man, zero, err := m.assemble(ctx, rec, disk, last, &stored[i])
		if err != nil {
			return err
		}
		mans[i] = man
		if man.Spilled() {
			m.log.InfoContext(ctx, "manifest spilled to a temporary file", "vm", rec.VM, "backup", rec.ID, "disk", disk.Index, "data_chunks", man.DataChunks())
		}
		key, err := m.repo.PutManifest(ctx, rec.VM, man)
		if err != nil {
			return err
		}
		disks[i] = catalog.CommittedDisk{Manifest: key, Chunks: man.Count(), ZeroChunks: zero}
	}
	// Before the commit: a committed backup never needs an object whose
	// lock ends before its own.
	locks, err := m.repo.Cover(ctx, time.Now(), mans...)
	if err != nil {
		return fmt.Errorf("lock what backup %s needs: %w", rec.ID, err)
	}
	if err := m.announceDates(ctx, locks.Packs); err != nil {
		m.repo.Forget(locks.Packs) // read and announced again at the redelivery
		return err
	}
	if locks.Objects > 0 {
		trace.SpanFromContext(ctx).SetAttributes(attribute.Int("strata.lock.objects", locks.Objects), attribute.Int("strata.lock.extended", locks.Extended))
		m.log.InfoContext(ctx, "locks cover the backup", "vm", rec.VM, "backup", rec.ID, "objects", locks.Objects, "extended", locks.Extended)
	}
	committed, ok, err := m.cat.Commit(ctx, rec.VM, rec.ID, disks)
	if err != nil {
		return err
	}
	if !ok {
		return nil // failed meanwhile, or another merge instance won
	}
	msg := &contracts.BackupCommitted{Schema: contracts.SchemaVersion, BackupID: rec.ID, VM: rec.VM}
	runs := 0
	for _, r := range stored {
		runs += len(r)
	}
	if runs <= maxStoredRuns {
		msg.Stored = stored
	}
	if err := m.pub.Publish(ctx, contracts.SubjectBackupCommitted, msg, "committed-"+rec.ID); err != nil {
		return err
	}
	m.log.InfoContext(ctx, "backup committed", "vm", rec.VM, "backup", rec.ID, "stored_bytes", committed.StoredBytes())
	// The results are in the manifests now; drop them from the stream.
	if err := m.results.Purge(ctx, jetstream.WithPurgeSubject(contracts.SubjectSegmentDonePrefix+rec.ID+".>")); err != nil {
		m.log.WarnContext(ctx, "purge segment results", "backup", rec.ID, "err", err)
	}
	return nil
}

// announceDates tells every dedup instance's pack index the retain-until
// dates Cover set or read, so garbage collection knows them without
// asking S3. Announced before the commit: a committed backup's pack
// dates are in the stream.
func (m *merger) announceDates(ctx context.Context, packs map[chunk.PackID]time.Time) error {
	var batch []contracts.PackDate
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		msg := &contracts.PackRetained{Schema: contracts.SchemaVersion, Packs: batch}
		batch = nil
		return m.pub.Publish(ctx, contracts.SubjectPackRetained, msg, "")
	}
	for p, until := range packs {
		batch = append(batch, contracts.PackDate{Pack: p.String(), Until: until.UTC()})
		if len(batch) == contracts.MaxPackDates {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// maxStoredRuns bounds the runs of acknowledged uploads a BackupCommitted
// message carries (about 30 bytes each, well under NATS's 1 MB payload):
// beyond it the verifier simply checks every chunk.
const maxStoredRuns = 16384

// assemble builds one disk's manifest from its segment results and appends
// the runs of chunks its workers stored to *stored. Segments are taken in
// disk order and appended to the manifest as they come, so the work and
// the memory follow the chunks that hold data: an untouched segment of a
// full costs nothing, one of an incremental the parent's data in it.
func (m *merger) assemble(ctx context.Context, rec *contracts.BackupRecord, disk contracts.DiskRecord, last *contracts.SegmentDone, stored *[]contracts.ChunkRun) (*manifest.Manifest, int64, error) {
	man := manifest.New(rec.ID, disk.Index, rec.ChunkSize, disk.Size)
	var parent *manifest.Manifest // loaded on the first inherited chunk
	defer func() {
		if parent != nil {
			parent.Close()
		}
	}()
	loadParent := func() (*manifest.Manifest, error) {
		if parent == nil {
			var err error
			parent, err = m.parentManifest(ctx, rec, disk)
			return parent, err
		}
		return parent, nil
	}
	perSeg, segs := contracts.SegmentLayout(disk.Size, rec.ChunkSize)
	if segs != disk.Segments {
		return nil, 0, bus.Permanent(fmt.Errorf("disk %d of %d bytes has %d segments, the record says %d", disk.Index, disk.Size, segs, disk.Segments))
	}
	for seg := 0; seg < disk.Segments; seg++ {
		first := int64(seg) * int64(perSeg)
		end := min(first+int64(perSeg), man.Count())
		if disk.IsUntouched(seg) { // never published: unchanged since the parent, or (a full) nothing allocated
			if rec.Parent == "" {
				continue // a full: the window is zeros
			}
			p, err := loadParent()
			if err != nil {
				return nil, 0, fmt.Errorf("untouched segment %d of disk %d: %w", seg, disk.Index, err)
			}
			if err := inheritRange(man, p, first, end); err != nil {
				return nil, 0, fmt.Errorf("untouched segment %d of disk %d: %w", seg, disk.Index, err)
			}
			continue
		}
		subject := contracts.SegmentDoneSubject(rec.ID, disk.Index, seg)
		var d contracts.SegmentDone
		if last != nil && last.BackupID == rec.ID && last.Disk == disk.Index && last.Index == seg {
			d = *last
		} else if err := m.readResult(ctx, subject, &d); err != nil {
			return nil, 0, err
		}
		if d.FirstChunk != first || int64(len(d.IDs)) != end-first {
			return nil, 0, bus.Permanent(fmt.Errorf("result %s covers chunks [%d, %d), the segment is [%d, %d)", subject, d.FirstChunk, d.FirstChunk+int64(len(d.IDs)), first, end))
		}
		if err := applyResult(man, &d, loadParent); err != nil {
			return nil, 0, fmt.Errorf("result %s: %w", subject, err)
		}
		for _, r := range d.Stored { // validated against the segment's ids
			if len(*stored) <= maxStoredRuns {
				*stored = append(*stored, contracts.ChunkRun{Start: int(d.FirstChunk) + r.Start, Count: r.Count})
			}
		}
	}
	return man, man.ZeroChunks(), nil
}

// readResult reads a segment's result from the results stream. A read
// may reach a replica a moment behind the consumer that delivered the
// last result (a 3-node cluster under load): not found is asked again a
// few times before it fails the attempt — a failed attempt is retried
// through a redelivery, which a server may lose (nats-server#5727: the
// ack floor moved past a NAK'd result and left a backup transferring).
func (m *merger) readResult(ctx context.Context, subject string, d *contracts.SegmentDone) error {
	var raw *jetstream.RawStreamMsg
	var err error
	for attempt := 0; ; attempt++ {
		raw, err = m.results.GetLastMsgForSubject(ctx, subject)
		if !errors.Is(err, jetstream.ErrMsgNotFound) || attempt == 5 {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(50<<attempt) * time.Millisecond):
		}
	}
	if err != nil {
		return fmt.Errorf("read result %s: %w", subject, err)
	}
	if err := contracts.Decode(raw.Data, d); err != nil {
		return bus.Permanent(fmt.Errorf("result %s: %w", subject, err))
	}
	return nil
}

// applyResult appends one segment's chunks to man, taking inherited ones
// from the parent (loaded on first need).
func applyResult(man *manifest.Manifest, d *contracts.SegmentDone, parent func() (*manifest.Manifest, error)) error {
	refs := make([]chunk.Ref, len(d.IDs))
	for i, s := range d.IDs {
		at := d.FirstChunk + int64(i)
		switch s {
		case contracts.InheritID:
			p, err := parent()
			if err != nil {
				return err
			}
			if p.Count() != man.Count() {
				return bus.Permanent(fmt.Errorf("chunk %d inherited from a parent of %d chunks, the disk has %d", at, p.Count(), man.Count()))
			}
			refs[i] = p.Ref(at)
		case "":
		default:
			id, err := chunk.ParseID(s)
			if err != nil {
				return bus.Permanent(err)
			}
			refs[i].ID = id
		}
	}
	for _, l := range d.Locs { // validated: At inside the result, Pack in Packs
		p, err := chunk.ParsePackID(d.Packs[l.Pack])
		if err != nil {
			return bus.Permanent(err)
		}
		if refs[l.At].ID.IsZero() {
			return bus.Permanent(fmt.Errorf("result places zero chunk %d in pack %s", d.FirstChunk+int64(l.At), p))
		}
		refs[l.At].Loc = chunk.Loc{Pack: p, Off: l.Off, Len: l.Len}
	}
	for i, r := range refs {
		if err := man.Append(d.FirstChunk+int64(i), r); err != nil {
			return bus.Permanent(err)
		}
	}
	return nil
}

// inheritRange appends the parent's chunks in [from, to) to man.
func inheritRange(man, p *manifest.Manifest, from, to int64) error {
	if p.Count() != man.Count() {
		return bus.Permanent(fmt.Errorf("the parent has %d chunks, the disk %d", p.Count(), man.Count()))
	}
	for i, r := range p.DataIn(from, to) {
		if err := man.Append(i, r); err != nil {
			return bus.Permanent(err)
		}
	}
	return nil
}

// parentManifest loads the manifest an incremental inherits from. Every
// manifest is a complete chunk map, so a restore never walks a chain and
// dropping an old backup never rewrites a newer one.
func (m *merger) parentManifest(ctx context.Context, rec *contracts.BackupRecord, disk contracts.DiskRecord) (*manifest.Manifest, error) {
	if rec.Parent == "" {
		return nil, bus.Permanent(fmt.Errorf("backup %s inherits chunks but has no parent", rec.ID))
	}
	parent, _, err := m.cat.Get(ctx, rec.VM, rec.Parent)
	if err != nil {
		return nil, fmt.Errorf("parent backup %s: %w", rec.Parent, err)
	}
	if disk.Index >= len(parent.Disks) || parent.Disks[disk.Index].Manifest == "" {
		return nil, bus.Permanent(fmt.Errorf("parent backup %s has no manifest for disk %d", rec.Parent, disk.Index))
	}
	pm, err := m.repo.GetManifest(ctx, parent.Disks[disk.Index].Manifest)
	if err != nil {
		return nil, bus.Permanent(fmt.Errorf("parent of %s: %w", rec.ID, err))
	}
	if pm.DiskSize != disk.Size {
		return nil, bus.Permanent(fmt.Errorf("parent manifest %s is for a %d-byte disk, this one is %d", parent.Disks[disk.Index].Manifest, pm.DiskSize, disk.Size))
	}
	return pm, nil
}
