// Package snapshotter talks to the source of a backup: it opens (for
// hypervisors: snapshots) the VM's disks, plans the transfer segments,
// records the backup in the catalog and releases the snapshot when the
// backup is verified or has failed.
package snapshotter

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/bus"
	"github.com/strata-backup/strata/pkg/catalog"
	"github.com/strata-backup/strata/pkg/consistency"
	"github.com/strata-backup/strata/pkg/freezes"
	"github.com/strata-backup/strata/pkg/guestfs"
	"github.com/strata-backup/strata/pkg/hooks"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/metrics"
	"github.com/strata-backup/strata/pkg/runtime"
	"github.com/strata-backup/strata/pkg/source"
)

// Config of the snapshotter (prefix STRATA_).
type Config struct {
	runtime.Common
	source.Config
	// KeyInterval: every KeyInterval-th backup of a chain re-reads the whole
	// disk (still deduplicated, so it stores little): the guard against a
	// silently broken change-tracking chain (Xen Orchestra's "key backup
	// interval").
	KeyInterval int `envconfig:"KEY_INTERVAL" default:"20"`
	// HooksDir holds the programs host-side hooks may run (a hook names one
	// by its file name, never a path); empty: host hooks are refused.
	HooksDir string `envconfig:"HOOKS_DIR"`
}

// Start registers the snapshotter's consumers.
func Start(ctx context.Context, rt *runtime.Runtime, cfg Config) error {
	s := &snapshotter{rt: rt, keyInterval: max(1, cfg.KeyInterval), sources: source.NewOpener(cfg.Config), hooksDir: cfg.HooksDir}
	if _, err := rt.Bus.AddService("snapshots and segment planning"); err != nil {
		return err
	}
	// Every snapshotter thaws the guests another left frozen (it died
	// between freeze and thaw), and this one's own on a restart.
	fz, err := freezes.Open(ctx, rt.Bus.JS)
	if err != nil {
		return err
	}
	s.freezes = fz
	go fz.Watch(ctx, time.Second, s.sources.Thaw, rt.Log)
	if err := bus.Consume(ctx, rt.Bus, bus.Spec{Stream: contracts.StreamBackups, Durable: contracts.ConsumerSnapshotterRequests,
		Filters: []string{contracts.SubjectBackupRequested}, Concurrency: 4, MaxDeliver: 30,
		GiveUp: func(ctx context.Context, m contracts.Message, err error) error {
			return rt.FailRequest(ctx, m.(*contracts.BackupRequested), err.Error())
		}}, s.plan); err != nil {
		return err
	}
	return bus.Consume(ctx, rt.Bus, bus.Spec{Stream: contracts.StreamBackups, Durable: contracts.ConsumerSnapshotterOutcomes,
		Filters: []string{contracts.SubjectBackupVerified, contracts.SubjectBackupFailed}, MaxDeliver: 30}, s.release)
}

type snapshotter struct {
	rt          *runtime.Runtime
	keyInterval int
	sources     *source.Opener
	freezes     *freezes.Store // nil in unit tests: freezes not journaled
	hooksDir    string
}

// Plan cuts a disk into segments of whole chunks, at most MaxSegmentBytes.
func Plan(size int64, chunkSize int) (chunksPerSegment int, segments int) {
	return contracts.SegmentLayout(size, chunkSize)
}

// openDisk is one disk of the backup's point in time, open for planning.
type openDisk struct {
	source.PointDisk
	disk source.Disk
}

func (s *snapshotter) plan(ctx context.Context, req *contracts.BackupRequested) error {
	rec := &contracts.BackupRecord{
		Schema: contracts.SchemaVersion, ID: req.BackupID, VM: req.VM, Source: req.Source,
		State: contracts.StateTransferring, ChunkSize: s.rt.Repo.Config.ChunkSize,
		TraceID: trace.SpanContextFromContext(ctx).TraceID().String(), CreatedAt: req.RequestedAt, UpdatedAt: time.Now().UTC(),
		Slot: req.Slot, Verify: req.Verify,
	}
	if existing, _, err := s.rt.Catalog.Get(ctx, req.VM, req.BackupID); err == nil && existing.State != contracts.StateTransferring {
		return nil // a redelivered request for a backup that moved on: take no new snapshot
	}
	point, disks, err := s.open(ctx, req, rec)
	defer func() {
		for _, d := range disks {
			d.disk.Close()
		}
	}()
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return err
		}
		// Unknown VM or unreadable source: record the backup as failed so
		// the user sees why, rather than dropping the request. The failure
		// event releases whatever snapshot was taken.
		now := time.Now().UTC()
		rec.State, rec.Error, rec.FinishedAt = contracts.StateFailed, err.Error(), &now
		_, created, cerr := s.rt.Catalog.Create(ctx, rec)
		if cerr != nil {
			return cerr
		}
		if created { // born failed: FailBackup below finds it final and counts nothing
			metrics.BackupFailure.Inc()
		}
		return s.rt.FailBackup(ctx, req.VM, req.BackupID, fmt.Sprintf("open source: %v", err))
	}
	plans := s.whatToRead(ctx, req, disks, rec)
	rec.VMConfig = point.VM
	if point.Note != "" {
		rec.Note = point.Note
	}
	rec.Consistency, rec.ConsistencyWhy, rec.FrozenMillis = string(point.Consistency.Mode), point.Consistency.Why, point.Consistency.Frozen.Milliseconds()
	trace.SpanFromContext(ctx).SetAttributes(attribute.String("strata.consistency", rec.Consistency), attribute.Int64("strata.frozen_ms", rec.FrozenMillis))
	for i, d := range disks {
		size := d.disk.Size()
		plans[i].cut(size, rec.ChunkSize)
		rec.Disks = append(rec.Disks, contracts.DiskRecord{Index: i, Name: d.Name, Source: d.URL, Size: size, Segments: len(plans[i].segRuns),
			ChangeID: string(plans[i].changeID), ChangedBytes: plans[i].changedBytes, FreeMap: plans[i].freeMap, FreeSkippedBytes: plans[i].freeSkipped})
	}
	markUntouched(rec, plans)
	existing, _, err := s.rt.Catalog.Create(ctx, rec)
	if err != nil {
		return err
	}
	if existing.State != contracts.StateTransferring {
		return nil // a redelivered request for a backup that moved on
	}
	// Publish from the stored record: a redelivery re-publishes the plan
	// it recorded the first time (same message ids, deduplicated).
	rec = existing
	if len(rec.Disks) != len(plans) {
		return bus.Permanent(fmt.Errorf("backup %s was recorded with %d disks, the source now has %d", rec.ID, len(rec.Disks), len(plans)))
	}
	for i, d := range rec.Disks {
		if err := s.publishSegments(ctx, rec, d, plans[i]); err != nil {
			return err
		}
	}
	s.rt.Log.InfoContext(ctx, "backup planned", "vm", rec.VM, "backup", rec.ID, "kind", rec.Kind, "disks", len(rec.Disks), "chunk_size", rec.ChunkSize)
	return nil
}

// open takes the point in time and opens each of its disks. The hooks
// that ran go to rec, whatever happens after.
func (s *snapshotter) open(ctx context.Context, req *contracts.BackupRequested, rec *contracts.BackupRecord) (*source.Point, []openDisk, error) {
	mode, err := consistency.Parse(req.Consistency.Consistency)
	if err != nil {
		return nil, nil, err
	}
	want := consistency.Want{Mode: mode, Required: req.ConsistencyRequired, Mountpoints: req.FreezeMountpoints}
	if s.freezes != nil {
		want.Journal = s.freezes.Journal(req.VM, req.BackupID, req.Source)
	}
	runner := hooks.Runner{Dir: s.hooksDir, Env: []string{"STRATA_VM=" + req.VM, "STRATA_BACKUP_ID=" + req.BackupID, "STRATA_SOURCE=" + req.Source}}
	phase := func(name string, hs []contracts.Hook) func(ctx context.Context, agent consistency.Agent) error {
		if len(hs) == 0 {
			return nil
		}
		return func(ctx context.Context, agent consistency.Agent) error {
			guest, _ := agent.(hooks.Guest)
			runs, err := runner.Run(ctx, name, hs, guest)
			rec.Hooks = append(rec.Hooks, runs...)
			s.traceHooks(ctx, runs)
			return err
		}
	}
	want.PreFreeze, want.PostThaw = phase(hooks.PreFreeze, req.PreFreeze), phase(hooks.PostThaw, req.PostThaw)
	point, err := s.sources.Snapshot(ctx, req.Source, req.BackupID, want)
	if err != nil {
		return nil, nil, err
	}
	var disks []openDisk
	for _, pd := range point.Disks {
		d, err := s.sources.Open(ctx, pd.URL)
		if err != nil {
			return point, disks, fmt.Errorf("open %s: %w", pd.Name, err)
		}
		disks = append(disks, openDisk{pd, d})
	}
	return point, disks, nil
}

// traceHooks records each hook run as a span under the backup's, and in
// the log.
func (s *snapshotter) traceHooks(ctx context.Context, runs []contracts.HookRun) {
	for _, r := range runs {
		end := time.Now()
		_, span := s.rt.Bus.Tracer.Start(ctx, "hook "+r.Phase, trace.WithTimestamp(end.Add(-time.Duration(r.Millis)*time.Millisecond)),
			trace.WithAttributes(attribute.String("strata.hook.command", r.Command), attribute.Bool("strata.hook.host", r.Host),
				attribute.Int("strata.hook.exit", r.Exit), attribute.String("strata.hook.output", r.Output)))
		level := slog.LevelInfo
		if r.Error != "" {
			span.SetStatus(codes.Error, r.Error)
			level = slog.LevelWarn
		}
		span.End(trace.WithTimestamp(end))
		s.rt.Log.Log(ctx, level, "hook ran", "phase", r.Phase, "command", r.Command, "host", r.Host, "exit", r.Exit, "ms", r.Millis, "error", r.Error)
	}
}

func (s *snapshotter) publishSegments(ctx context.Context, rec *contracts.BackupRecord, d contracts.DiskRecord, plan readPlan) error {
	perSeg, segments := Plan(d.Size, rec.ChunkSize)
	total := manifest.ChunkCount(d.Size, rec.ChunkSize)
	for i := 0; i < segments; i++ {
		if d.IsUntouched(i) {
			continue // nothing to read: merge inherits it from the parent
		}
		first := int64(i) * int64(perSeg)
		seg := &contracts.Segment{
			Schema: contracts.SchemaVersion, BackupID: rec.ID, VM: rec.VM, Disk: d.Index, Index: i, Source: d.Source,
			DiskSize: d.Size, ChunkSize: rec.ChunkSize, FirstChunk: first, Chunks: int(min(int64(perSeg), total-first)),
			Sparse: plan.sparse, Inherit: plan.inherit, PutFirst: plan.putFirst, Parent: plan.parent,
		}
		if plan.sparse && i < len(plan.segRuns) {
			seg.Runs = plan.segRuns[i]
		}
		if err := s.rt.Bus.Publish(ctx, seg.Subject(), seg, fmt.Sprintf("seg-%s-%d-%d", rec.ID, seg.Disk, i)); err != nil {
			return err
		}
	}
	return nil
}

// markUntouched records the segments that have nothing to read: of an
// incremental, unchanged since the parent; of a full, nothing allocated
// (all zeros). They are never published: an unchanged or empty window
// costs no message, no worker and no catalog update, so a big sparse disk
// costs what it holds. One segment is always published, so that a backup
// of an unchanged (or empty) disk still reaches merge.
func markUntouched(rec *contracts.BackupRecord, plans []readPlan) {
	published := false
	for i := range rec.Disks {
		d, p := &rec.Disks[i], plans[i]
		for seg, runs := range p.segRuns {
			if p.sparse && len(runs) == 0 && (published || !lastSegment(rec, plans, i, seg)) {
				d.MarkUntouched(seg)
			} else {
				published = true
			}
		}
	}
}

// lastSegment: segment seg of disk is the backup's last one.
func lastSegment(rec *contracts.BackupRecord, plans []readPlan, disk, seg int) bool {
	return disk == len(rec.Disks)-1 && seg == len(plans[disk].segRuns)-1
}

// readPlan says which chunks of a disk to read.
type readPlan struct {
	sparse, inherit bool       // sparse: only runs; inherit: the rest from the parent (else zero)
	putFirst        bool       // the chunks read are expected new: conditional PUTs first
	parent          string     // a full read's parent manifest of this disk (Segment.Parent)
	runs            [][2]int64 // chunk runs to read
	changeID        source.ChangeID
	changedBytes    int64
	freeMap         string                 // --skip-free: what the filesystems' bitmaps gave
	freeSkipped     int64                  // bytes of chunks not read because wholly free
	segRuns         [][]contracts.ChunkRun // per segment: its part of runs (relative), set by cut
}

// cut splits the plan's runs by segment: O(runs + segments).
func (p *readPlan) cut(size int64, chunkSize int) {
	perSeg, segments := Plan(size, chunkSize)
	total := manifest.ChunkCount(size, chunkSize)
	p.segRuns = make([][]contracts.ChunkRun, segments)
	next := 0
	for i := range p.segRuns {
		first := int64(i) * int64(perSeg)
		if p.sparse {
			p.segRuns[i], next = SegmentRuns(p.runs, next, first, min(int64(perSeg), total-first))
		}
	}
}

// whatToRead decides between an incremental (changed extents since the
// parent, the rest inherited) and a full read (allocated extents, the rest
// zero), for all disks of the backup at once, and records the decision in
// rec. Any doubt means a full read: a missing or refused change id is never
// taken as "nothing changed".
func (s *snapshotter) whatToRead(ctx context.Context, req *contracts.BackupRequested, disks []openDisk, rec *contracts.BackupRecord) []readPlan {
	rec.Kind = contracts.KindFull
	plans := make([]readPlan, len(disks))
	parent, err := s.rt.Catalog.Latest(ctx, req.VM)
	// A VM's first full mostly reads chunks the repository has never seen:
	// asking dedup about each first costs a request per chunk for nothing.
	// A later full (key interval, damaged parent, CBT reset) mostly re-reads
	// stored chunks, so it asks first.
	firstFull := errors.Is(err, catalog.ErrNotFound)
	if err == nil {
		rec.FullReason = s.incrementalRefused(req, parent, disks)
		for i, d := range disks {
			if rec.FullReason != "" {
				break
			}
			since := source.ChangeID(parent.Disks[i].ChangeID)
			if since == "" {
				rec.FullReason = fmt.Sprintf("%s: the parent recorded no change id (no change tracking): full read, deduplicated against the parent", d.Name)
				break
			}
			ext, changeID, cerr := d.disk.ChangedExtents(ctx, since)
			switch {
			case errors.Is(cerr, source.ErrNoChangeTracking):
				rec.FullReason = fmt.Sprintf("%s: source has no change tracking: full read, deduplicated against the parent", d.Name)
			case cerr != nil:
				rec.FullReason = fmt.Sprintf("%s: change tracking refused (%v): full read, deduplicated against the parent", d.Name, cerr)
			default:
				plans[i] = readPlan{sparse: true, inherit: true, runs: source.ChunkRuns(ext, rec.ChunkSize), changeID: changeID}
				for _, e := range ext {
					plans[i].changedBytes += e.Length
				}
			}
		}
		if rec.FullReason == "" {
			rec.Kind, rec.Parent, rec.ChainDepth = contracts.KindIncremental, parent.ID, parent.ChainDepth+1
			return plans
		}
	}
	for i, d := range disks {
		// Read only what holds data: a 3 GiB disk with 600 MB used costs 600 MB.
		ext, changeID, err := d.disk.ChangedExtents(ctx, "")
		if err != nil {
			s.rt.Log.WarnContext(ctx, "source cannot list allocated extents; reading the whole disk", "disk", d.Name, "err", err)
			plans[i] = readPlan{putFirst: firstFull}
		} else {
			plans[i] = readPlan{sparse: true, runs: source.ChunkRuns(ext, rec.ChunkSize), changeID: changeID, putFirst: firstFull}
		}
		if req.SkipFree {
			s.skipFree(ctx, d, &plans[i], rec.ChunkSize)
		}
		// A damaged parent is not compared against: its bad chunks must be
		// uploaded again, which only dedup's answer brings about.
		if parent != nil && err == nil && !parent.Damaged && sameDisk(parent.Source, req.Source) && i < len(parent.Disks) &&
			parent.Disks[i].Size == d.disk.Size() && parent.Disks[i].Manifest != "" {
			plans[i].parent = parent.Disks[i].Manifest
			rec.Base = parent.ID
		}
	}
	return plans
}

// skipFree takes the chunks the guest's filesystems mark wholly free out
// of a full read: they are stored as zeros. The bitmaps are read from the
// same snapshot the backup reads; anything not understood is read in full.
func (s *snapshotter) skipFree(ctx context.Context, d openDisk, p *readPlan, chunkSize int) {
	free, rep, err := guestfs.FreeChunks(d.disk, chunkSize)
	if err != nil {
		p.freeMap = "nothing skipped: " + err.Error()
		return
	}
	p.freeMap = "filesystem bitmaps: " + strings.Join(rep.Volumes, "; ")
	if len(free) == 0 {
		return
	}
	if !p.sparse {
		p.sparse, p.runs = true, [][2]int64{{0, manifest.ChunkCount(d.disk.Size(), chunkSize)}}
	}
	var removed int64
	p.runs, removed = source.SubtractRuns(p.runs, free)
	p.freeSkipped = removed * int64(chunkSize)
	s.rt.Log.InfoContext(ctx, "free blocks skipped", "disk", d.Name, "bytes", p.freeSkipped, "map", p.freeMap)
}

// incrementalRefused says why the backup cannot be an incremental of
// parent before asking the source anything, or "".
func (s *snapshotter) incrementalRefused(req *contracts.BackupRequested, parent *contracts.BackupRecord, disks []openDisk) string {
	if parent.ChainDepth+1 >= cmp.Or(req.KeyInterval, s.keyInterval) {
		return fmt.Sprintf("key interval: %d incrementals since the last full", parent.ChainDepth)
	}
	if !sameDisk(parent.Source, req.Source) {
		return "source changed since the parent"
	}
	if parent.Damaged {
		// Inherited chunks would carry the damage forward; a full read
		// uploads the bad chunks again (dedup answers them missing).
		return "the parent backup is damaged (bad chunks): full re-read, which repairs them"
	}
	if len(parent.Disks) != len(disks) {
		return fmt.Sprintf("the VM has %d disks, its parent backup %d", len(disks), len(parent.Disks))
	}
	for i, d := range disks {
		if p := parent.Disks[i]; p.Name != d.Name || p.Size != d.disk.Size() {
			return fmt.Sprintf("disk %d is %s of %d bytes, in the parent %s of %d bytes", i, d.Name, d.disk.Size(), p.Name, p.Size)
		}
	}
	return ""
}

// sameDisk compares two source URLs by scheme and path: the endpoint's
// address may move (a new qemu-nbd port, a renamed host) without the disk
// changing.
func sameDisk(a, b string) bool {
	ua, errA := url.Parse(a)
	ub, errB := url.Parse(b)
	return errA == nil && errB == nil && ua.Scheme == ub.Scheme && ua.Path == ub.Path
}

// SegmentRuns returns the part of runs (ordered [first, end) chunk
// ranges) inside the segment [first, first+count), relative to first, and
// the index of the first run that may reach past it: called segment after
// segment, the whole plan costs O(runs + segments).
func SegmentRuns(runs [][2]int64, next int, first, count int64) ([]contracts.ChunkRun, int) {
	end := first + count
	var out []contracts.ChunkRun
	for i := next; i < len(runs) && runs[i][0] < end; i++ {
		lo, hi := max(runs[i][0], first), min(runs[i][1], end)
		if lo < hi {
			out = append(out, contracts.ChunkRun{Start: int(lo - first), Count: int(hi - lo)})
		}
		if runs[i][1] <= end {
			next = i + 1
		}
	}
	return out, next
}

// release lets go of the snapshot once the backup is verified or has
// failed. A file or NBD source holds none; vSphere snapshots are removed
// (idempotent: a redelivered outcome finds it gone).
func (s *snapshotter) release(ctx context.Context, o *contracts.BackupOutcome) error {
	rec, _, err := s.rt.Catalog.Get(ctx, o.VM, o.BackupID)
	if errors.Is(err, catalog.ErrNotFound) {
		return nil // never planned: nothing was taken
	}
	if err != nil {
		return err
	}
	released, err := s.sources.Release(ctx, rec.Source, rec.ID, o.State == contracts.StateVerified)
	if err != nil {
		return fmt.Errorf("release snapshot of backup %s: %w", rec.ID, err)
	}
	if released {
		s.rt.Log.InfoContext(ctx, "snapshot released", "vm", o.VM, "backup", o.BackupID, "outcome", o.State)
	}
	return nil
}
