// Package snapshotter talks to the source of a backup: it opens (for
// hypervisors: snapshots) the VM's disks, plans the transfer segments,
// records the backup in the catalog and releases the snapshot when the
// backup is verified or has failed.
package snapshotter

import (
	"context"
	"fmt"
	"time"

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
}

// Start registers the snapshotter's consumers.
func Start(ctx context.Context, rt *runtime.Runtime, cfg Config) error {
	s := &snapshotter{rt: rt}
	if _, err := rt.Bus.AddService("snapshots and segment planning"); err != nil {
		return err
	}
	if err := bus.Consume(ctx, rt.Bus, bus.Spec{Stream: contracts.StreamBackups, Durable: contracts.ConsumerSnapshotterRequests,
		Filters: []string{contracts.SubjectBackupRequested}, Concurrency: 4}, s.plan); err != nil {
		return err
	}
	return bus.Consume(ctx, rt.Bus, bus.Spec{Stream: contracts.StreamBackups, Durable: contracts.ConsumerSnapshotterOutcomes,
		Filters: []string{contracts.SubjectBackupVerified, contracts.SubjectBackupFailed}}, s.release)
}

type snapshotter struct{ rt *runtime.Runtime }

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
	// Read only what holds data: a 3 GiB disk with 600 MB used costs 600 MB.
	var runs [][2]int64
	extents, _, extErr := disk.ChangedExtents(ctx, "")
	sparse := extErr == nil
	if sparse {
		runs = source.ChunkRuns(extents, rec.ChunkSize)
	} else {
		s.rt.Log.WarnContext(ctx, "source cannot list allocated extents; reading the whole disk", "err", extErr)
	}
	disk.Close()
	perSeg, segments := Plan(size, rec.ChunkSize)
	rec.Disks = []contracts.DiskRecord{{Index: 0, Name: "disk0", Size: size, Segments: segments}}
	existing, _, err := s.rt.Catalog.Create(ctx, rec)
	if err != nil {
		return err
	}
	if existing.State != contracts.StateTransferring {
		return nil // a redelivered request for a backup that moved on
	}
	rec = existing
	total := manifest.ChunkCount(size, rec.ChunkSize)
	next := 0 // first run that may overlap the current segment
	for i := 0; i < segments; i++ {
		first := int64(i) * int64(perSeg)
		seg := &contracts.Segment{
			Schema: contracts.SchemaVersion, BackupID: rec.ID, VM: rec.VM, Disk: 0, Index: i, Source: rec.Source,
			DiskSize: size, ChunkSize: rec.ChunkSize, FirstChunk: first, Chunks: int(min(int64(perSeg), total-first)),
			Sparse: sparse,
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
