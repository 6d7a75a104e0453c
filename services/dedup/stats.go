package dedup

import (
	"context"
	"fmt"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/reach"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/runtime"
)

// stats answers strata repo stats: the mark a collection makes (no lock,
// nothing condemned), each pack's trailer for the codecs of its live
// chunks, the loose chunks' listing, and the last collection's reply. It
// reads every manifest and one range of every pack: an operator's
// question, never asked on the backup path.
func stats(ctx context.Context, rt *runtime.Runtime, repackBelow float64) (*contracts.RepoStatsReply, error) {
	r := &contracts.RepoStatsReply{Schema: contracts.SchemaVersion, ChunkSize: rt.Repo.Config.ChunkSize, RepackBelow: repackBelow}
	sweep, err := rt.Repo.NewSweep(ctx, repo.SweepOptions{RepackBelow: repackBelow})
	if err != nil {
		return nil, err
	}
	m := sweep.Mark(0, 256)
	var merr error
	if err := eachResult(ctx, rt, func(d *contracts.SegmentDone) {
		if merr == nil {
			merr = m.Result(ctx, d)
		}
	}); err != nil {
		return nil, err
	}
	if merr != nil {
		return nil, merr
	}
	// logical bytes and references come from the same walk as the mark
	w := reach.Walker{Catalog: rt.Catalog, Repo: rt.Repo}
	r.Backups, err = w.Walk(ctx, func(_ *contracts.BackupRecord, d contracts.DiskRecord, man *manifest.Manifest) error {
		r.LogicalBytes += d.Size
		r.References += man.DataChunks()
		return m.Manifest(ctx, d.Manifest, man)
	})
	if err != nil {
		return nil, fmt.Errorf("mark: %w", err)
	}
	u, err := m.Usage(ctx)
	if err != nil {
		return nil, err
	}
	r.Packs, r.PackBytes, r.LiveBytes, r.LiveChunks = u.Packs, u.PackBytes, u.LiveBytes, int64(u.LiveChunks)
	r.PacksBelow, r.BelowDeadBytes, r.MovedRecords, r.LiveByCodec = u.PacksBelow, u.BelowDeadBytes, u.MovedRecords, u.LiveByCodec
	r.LooseChunks, r.LooseBytes = u.LooseChunks, u.LooseBytes
	r.DeadBytes = r.PackBytes - r.LiveBytes
	if r.LiveChunks > 0 {
		r.DedupRatio = float64(r.References) / float64(r.LiveChunks)
	}
	if r.LiveBytes > 0 {
		r.CompressionRatio = float64(r.LiveChunks) * float64(r.ChunkSize) / float64(r.LiveBytes)
	}
	if r.LastGC, err = rt.GC.Last(ctx); err != nil {
		return nil, err
	}
	if r.LastGC != nil && !r.LastGC.Finished.IsZero() {
		r.LastGCAt = &r.LastGC.Finished
	}
	return r, nil
}
