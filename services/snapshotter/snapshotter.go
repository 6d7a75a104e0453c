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
	"net/url"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/bus"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/runtime"
	"github.com/strata-backup/strata/pkg/source"
)

// Config of the snapshotter (prefix STRATA_).
type Config struct {
	runtime.Common
	// KeyInterval: every KeyInterval-th backup of a chain re-reads the whole
	// disk (still deduplicated, so it stores little): the guard against a
	// silently broken change-tracking chain (Xen Orchestra's "key backup
	// interval").
	KeyInterval int `envconfig:"KEY_INTERVAL" default:"20"`
}

// Start registers the snapshotter's consumers.
func Start(ctx context.Context, rt *runtime.Runtime, cfg Config) error {
	s := &snapshotter{rt: rt, keyInterval: max(1, cfg.KeyInterval)}
	if _, err := rt.Bus.AddService("snapshots and segment planning"); err != nil {
		return err
	}
	if err := bus.Consume(ctx, rt.Bus, bus.Spec{Stream: contracts.StreamBackups, Durable: contracts.ConsumerSnapshotterRequests,
		Filters: []string{contracts.SubjectBackupRequested}, Concurrency: 4, MaxDeliver: 30,
		GiveUp: func(ctx context.Context, m contracts.Message, err error) {
			req := m.(*contracts.BackupRequested)
			rt.FailBackup(ctx, req.VM, req.BackupID, err.Error())
		}}, s.plan); err != nil {
		return err
	}
	return bus.Consume(ctx, rt.Bus, bus.Spec{Stream: contracts.StreamBackups, Durable: contracts.ConsumerSnapshotterOutcomes,
		Filters: []string{contracts.SubjectBackupVerified, contracts.SubjectBackupFailed}}, s.release)
}

type snapshotter struct {
	rt          *runtime.Runtime
	keyInterval int
}

// Plan cuts a disk into segments of whole chunks, at most MaxSegmentBytes.
func Plan(size int64, chunkSize int) (chunksPerSegment int, segments int) {
	chunksPerSegment = contracts.MaxSegmentBytes / chunkSize
	total := manifest.ChunkCount(size, chunkSize)
	return chunksPerSegment, int((total + int64(chunksPerSegment) - 1) / int64(chunksPerSegment))
}

func (s *snapshotter) plan(ctx context.Context, req *contracts.BackupRequested) error {
	rec := &contracts.BackupRecord{
		Schema: contracts.SchemaVersion, ID: req.BackupID, VM: req.VM, Source: req.Source,
		State: contracts.StateTransferring, ChunkSize: s.rt.Repo.Config.ChunkSize,
		TraceID: trace.SpanContextFromContext(ctx).TraceID().String(), CreatedAt: req.RequestedAt, UpdatedAt: time.Now().UTC(),
		Slot: req.Slot,
	}
	disk, err := source.Open(ctx, req.Source)
	if err != nil {
		// Unknown VM or unreadable source: record the backup as failed so
		// the user sees why, rather than dropping the request.
		rec.State, rec.Error = contracts.StateFailed, err.Error()
		if _, _, cerr := s.rt.Catalog.Create(ctx, rec); cerr != nil {
			return cerr
		}
		return s.rt.FailBackup(ctx, req.VM, req.BackupID, fmt.Sprintf("open source: %v", err))
	}
	size := disk.Size()
	read := s.whatToRead(ctx, req, disk, rec)
	disk.Close()
	perSeg, segments := Plan(size, rec.ChunkSize)
	rec.Disks = []contracts.DiskRecord{{Index: 0, Name: "disk0", Size: size, Segments: segments,
		ChangeID: string(read.changeID), ChangedBytes: read.changedBytes}}
	sparse, runs := read.sparse, read.runs
	existing, _, err := s.rt.Catalog.Create(ctx, rec)
	if err != nil {
		return err
	}
	if existing.State != contracts.StateTransferring {
		return nil // a redelivered request for a backup that moved on
	}
	// The record exists now; only then look for a running garbage
	// collection (see dedup's collect for why the order matters).
	if _, err := s.rt.Catalog.KV.Get(ctx, contracts.GCLockKey); err == nil {
		return fmt.Errorf("garbage collection running; backup %s waits", rec.ID)
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return err
	}
	rec = existing
	total := manifest.ChunkCount(size, rec.ChunkSize)
	next := 0 // first run that may overlap the current segment
	for i := 0; i < segments; i++ {
		first := int64(i) * int64(perSeg)
		seg := &contracts.Segment{
			Schema: contracts.SchemaVersion, BackupID: rec.ID, VM: rec.VM, Disk: 0, Index: i, Source: rec.Source,
			DiskSize: size, ChunkSize: rec.ChunkSize, FirstChunk: first, Chunks: int(min(int64(perSeg), total-first)),
			Sparse: sparse, Inherit: read.inherit,
		}
		if sparse {
			seg.Runs, next = SegmentRuns(runs, next, first, int64(seg.Chunks))
		}
		if err := s.rt.Bus.Publish(ctx, seg.Subject(), seg, fmt.Sprintf("seg-%s-%d-%d", rec.ID, seg.Disk, i)); err != nil {
			return err
		}
	}
	s.rt.Log.InfoContext(ctx, "backup planned", "vm", rec.VM, "backup", rec.ID, "size", size, "segments", segments, "chunk_size", rec.ChunkSize)
	return nil
}

// readPlan says which chunks of the disk to read.
type readPlan struct {
	sparse, inherit bool       // sparse: only runs; inherit: the rest from the parent (else zero)
	runs            [][2]int64 // chunk runs to read
	changeID        source.ChangeID
	changedBytes    int64
}

// whatToRead decides between an incremental (changed extents since the
// parent, the rest inherited) and a full read (allocated extents, the rest
// zero), and records the decision in rec. Any doubt means a full read:
// a missing or refused change id is never taken as "nothing changed".
func (s *snapshotter) whatToRead(ctx context.Context, req *contracts.BackupRequested, disk source.Disk, rec *contracts.BackupRecord) readPlan {
	rec.Kind = contracts.KindFull
	parent, err := s.rt.Catalog.Latest(ctx, req.VM)
	if err == nil {
		switch {
		case parent.ChainDepth+1 >= cmp.Or(req.KeyInterval, s.keyInterval):
			rec.FullReason = fmt.Sprintf("key interval: %d incrementals since the last full", parent.ChainDepth)
		case len(parent.Disks) != 1 || parent.Disks[0].Size != disk.Size():
			rec.FullReason = "disk layout or size changed since the parent"
		case !sameDisk(parent.Source, req.Source):
			rec.FullReason = "source changed since the parent"
		default:
			ext, changeID, cerr := disk.ChangedExtents(ctx, source.ChangeID(parent.ID))
			if cerr == nil {
				rec.Kind, rec.Parent, rec.ChainDepth = contracts.KindIncremental, parent.ID, parent.ChainDepth+1
				p := readPlan{sparse: true, inherit: true, runs: source.ChunkRuns(ext, rec.ChunkSize), changeID: changeID}
				for _, e := range ext {
					p.changedBytes += e.Length
				}
				return p
			}
			if errors.Is(cerr, source.ErrNoChangeTracking) {
				rec.FullReason = "source has no change tracking: full read, deduplicated against the parent"
			} else {
				rec.FullReason = fmt.Sprintf("change tracking refused (%v): full read", cerr)
			}
		}
	}
	// Read only what holds data: a 3 GiB disk with 600 MB used costs 600 MB.
	ext, changeID, err := disk.ChangedExtents(ctx, "")
	if err != nil {
		s.rt.Log.WarnContext(ctx, "source cannot list allocated extents; reading the whole disk", "err", err)
		return readPlan{}
	}
	return readPlan{sparse: true, runs: source.ChunkRuns(ext, rec.ChunkSize), changeID: changeID}
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

// release lets go of the snapshot. A file source holds none; hypervisor
// sources delete theirs here.
func (s *snapshotter) release(ctx context.Context, o *contracts.BackupOutcome) error {
	s.rt.Log.InfoContext(ctx, "snapshot released", "vm", o.VM, "backup", o.BackupID, "outcome", o.State)
	return nil
}
