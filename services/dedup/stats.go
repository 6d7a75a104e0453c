package dedup

import (
	"context"
	"fmt"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/runtime"
)

// stats answers strata repo stats: the pack mark a collection makes (no
// lock, nothing condemned), each pack's trailer for the codecs of its live
// chunks, the loose chunks' listing, and the last collection's reply. It
// reads every manifest and one range of every pack: an operator's
// question, never asked on the backup path.
func stats(ctx context.Context, rt *runtime.Runtime, repackBelow float64) (*contracts.RepoStatsReply, error) {
	r := &contracts.RepoStatsReply{Schema: contracts.SchemaVersion, ChunkSize: rt.Repo.Config.ChunkSize, RepackBelow: repackBelow, LiveByCodec: map[string]int64{}}
	stored, moved, err := listPacks(ctx, rt.Repo)
	if err != nil {
		return nil, err
	}
	m := newPackMark(rt)
	// logical bytes and references come from the same walk as the mark
	m.onManifest = func(rec *contracts.BackupRecord, d contracts.DiskRecord, ids []chunk.ID) {
		r.LogicalBytes += d.Size
		for _, id := range ids {
			if !id.IsZero() {
				r.References++
			}
		}
	}
	if err := m.mark(ctx, stored, moved); err != nil {
		return nil, err
	}
	r.Backups = m.backups
	for _, recs := range moved {
		r.MovedRecords += len(recs)
	}
	for p, info := range stored {
		r.Packs++
		r.PackBytes += info.Size
		live := m.live.bytes(p)
		r.LiveBytes += live
		r.LiveChunks += int64(len(m.live[p]))
		if live > 0 && float64(live) < repackBelow*float64(info.Size) {
			r.PacksBelow++
			r.BelowDeadBytes += info.Size - live
		}
		if live == 0 {
			continue
		}
		entries, err := rt.Repo.PackIndex(ctx, p, info.Size)
		if err != nil {
			r.LiveByCodec["unreadable"] += live
			continue
		}
		for _, e := range entries {
			if _, ok := m.live[p][e.Loc.Off]; ok {
				name := e.Codec.String()
				if e.Codec == repo.CodecUnknown {
					name = "unknown"
				}
				r.LiveByCodec[name] += int64(e.Loc.Len)
			}
		}
	}
	r.DeadBytes = r.PackBytes - r.LiveBytes
	if err := rt.Repo.Chunks.List(ctx, 0, 256, func(sc repo.StoredChunk) error {
		r.LooseChunks++
		r.LooseBytes += sc.Size
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list loose chunks: %w", err)
	}
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
