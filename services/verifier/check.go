package verifier

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/reach"
	"github.com/strata-backup/strata/pkg/repo"
)

// health is `strata check` (restic's check, PBS's verify): it looks for
// itself rather than trusting earlier findings.
//
//  1. every known bad chunk is read again; one a later backup repaired is
//     cleared;
//  2. per shard of the chunk-id space: the ids every committed backup's
//     manifests reference (a manifest that does not decode is a finding)
//     against a listing of the stored chunks; a referenced chunk the
//     store does not hold is marked bad ("missing"), exactly as the
//     verifier marks what it finds;
//  3. with ReadData: a chunks job over the referenced chunks (or a random
//     ReadDataPercent of them) on the transfer workers, which re-hashes
//     each and records what is bad;
//  4. every backup's damaged flag is refreshed; VMs whose newest backup
//     failed are listed.
//
// Memory: one shard's referenced ids (32 B each) at a time.
func (v *verifier) health(ctx context.Context, req *contracts.CheckRequest) (*contracts.CheckReply, error) {
	start := time.Now()
	reply := &contracts.CheckReply{Schema: contracts.SchemaVersion, BadChunks: []contracts.BadChunk{}, Repaired: []string{},
		Damaged: []contracts.BackupRef{}, Failed: []contracts.FailedBackup{}, FailedIgnored: []contracts.FailedBackup{}, BadManifests: []contracts.BadManifest{}}
	bad, err := v.recheckKnownBad(ctx, reply)
	if err != nil {
		return nil, err
	}
	shards := req.Shards
	if shards == 0 {
		shards = v.checkShards
	}
	for s := 0; s < shards; s++ {
		lo, hi := s*256/shards, (s+1)*256/shards
		if err := v.checkShard(ctx, byte(lo), hi, bad, reply); err != nil {
			return nil, err
		}
	}
	if req.ReadData || req.ReadDataPercent > 0 {
		var sample func(chunk.ID) bool
		if p := req.ReadDataPercent; p > 0 && p < 100 {
			// A random window of the id space each run, as restic's
			// --read-data-subset=N%: repeated checks cover different chunks.
			from, width := rand.Uint32(), uint32(p/100*float64(1<<32-1))
			sample = func(id chunk.ID) bool { return binary.BigEndian.Uint32(id[:4])-from < width }
		}
		job, err := v.chunkJob(ctx, sample)
		if err != nil {
			return nil, err
		}
		reply.ChunksRead, reply.BytesRead = job.ChunksChecked, job.BytesChecked
		for _, b := range job.BadChunks {
			if id, err := chunk.ParseID(b.ID); err == nil {
				bad[id] = b.Reason
			}
		}
	}
	scan, err := v.scanDamage(ctx, bad, true)
	if err != nil {
		return nil, err
	}
	reply.Damaged = append(reply.Damaged, scan.damaged...)
	reply.Failed = append(reply.Failed, scan.failed...)
	reply.FailedIgnored = append(reply.FailedIgnored, scan.ignored...)
	reply.BadManifests = append(reply.BadManifests, scan.badManifests...)
	reply.Backups = scan.backups
	// The bad chunks as recorded now (new findings included).
	if reply.BadChunks, err = v.bad.List(ctx); err != nil {
		return nil, err
	}
	if reply.BadChunks == nil {
		reply.BadChunks = []contracts.BadChunk{}
	}
	reply.Healthy = len(reply.BadChunks) == 0 && len(reply.Damaged) == 0 && len(reply.Failed) == 0 && len(reply.BadManifests) == 0
	reply.Seconds = time.Since(start).Seconds()
	v.log.InfoContext(ctx, "check", "healthy", reply.Healthy, "referenced", reply.Referenced, "listed", reply.Listed,
		"missing", reply.Missing, "read", reply.ChunksRead, "bad", len(reply.BadChunks), "damaged", len(reply.Damaged), "seconds", reply.Seconds)
	return reply, nil
}

// recheckKnownBad reads every marked chunk again, clears the repaired ones
// and returns the ones still bad.
func (v *verifier) recheckKnownBad(ctx context.Context, reply *contracts.CheckReply) (map[chunk.ID]string, error) {
	known, err := v.bad.List(ctx)
	if err != nil {
		return nil, err
	}
	ids := make([]chunk.ID, len(known))
	for i, b := range known {
		ids[i], _ = chunk.ParseID(b.ID) // validated by List
	}
	// A repair is stored on its own (see repo.ReadChunk), so that is where
	// a chunk marked bad is looked for.
	found, err := repo.CheckChunks(ctx, v.repo, repo.Refs(ids, nil), 8)
	if err != nil {
		return nil, err
	}
	still := map[chunk.ID]string{}
	for i, b := range known {
		if reason, bad := found.Bad[ids[i]]; bad {
			still[ids[i]] = reason
			continue
		}
		if err := v.bad.Clear(ctx, ids[i]); err != nil {
			return nil, err
		}
		reply.Repaired = append(reply.Repaired, b.ID)
		v.log.InfoContext(ctx, "bad chunk repaired", "chunk", b.ID)
	}
	return still, nil
}

// checkShard compares the referenced ids in [lo, hi) with the store's
// listing and marks the missing ones bad.
func (v *verifier) checkShard(ctx context.Context, lo byte, hi int, bad map[chunk.ID]string, reply *contracts.CheckReply) error {
	referenced := map[chunk.ID]bool{} // id → seen in the listing
	w := reach.Walker{Catalog: v.cat, Repo: v.repo, Keep: reach.Committed,
		// Unreadable manifests are findings of the damage scan, which reads
		// every manifest once more; here they only contribute no ids.
		BadManifest: func(_ *contracts.BackupRecord, _ contracts.DiskRecord, err error) error {
			if repo.IsBadManifest(err) {
				return nil
			}
			return err
		}}
	inPack := map[chunk.ID]chunk.PackID{} // referenced chunks stored in a pack
	_, err := w.Walk(ctx, func(_ *contracts.BackupRecord, _ contracts.DiskRecord, man *manifest.Manifest) error {
		for _, r := range man.Data() {
			if id := r.ID; int(id[0]) >= int(lo) && int(id[0]) < hi {
				referenced[id] = false
				if l := r.Loc; l.InPack() {
					inPack[id] = l.Pack
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	err = v.repo.Chunks.List(ctx, lo, hi, func(sc repo.StoredChunk) error {
		reply.Listed++
		if _, ok := referenced[sc.ID]; ok {
			referenced[sc.ID] = true
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(inPack) > 0 {
		// Packs are named by their own ids, not their chunks': one listing
		// of all of them answers for every packed chunk of the shard.
		packs := map[chunk.PackID]bool{}
		if err := v.repo.ListPacks(ctx, 0, 256, func(p chunk.PackID, _ objstore.Info) error {
			packs[p] = true
			return nil
		}); err != nil {
			return err
		}
		// A pack compaction rewrote is read through its moved records;
		// whether each chunk really is where they say is the chunk check's
		// to find (it reads them).
		if err := v.repo.ListMoved(ctx, func(p chunk.PackID, _ []objstore.Info) error {
			packs[p] = true
			return nil
		}); err != nil {
			return err
		}
		for id, p := range inPack {
			if !referenced[id] && packs[p] {
				referenced[id] = true
				reply.Listed++
			}
		}
	}
	reply.Referenced += int64(len(referenced))
	missing := map[chunk.ID]string{}
	for id, listed := range referenced {
		if !listed {
			if _, known := bad[id]; !known {
				where := repo.Where(id, chunk.Loc{Pack: inPack[id]})
				missing[id] = "missing from the store (" + where + ")"
			}
		}
	}
	reply.Missing += int64(len(missing))
	if len(missing) == 0 {
		return nil
	}
	now := time.Now().UTC()
	for id, reason := range missing {
		if err := v.bad.Mark(ctx, contracts.BadChunk{ID: id.String(), Reason: reason, FoundAt: now}); err != nil {
			return err
		}
		bad[id] = reason
		v.log.ErrorContext(ctx, "bad chunk", "chunk", id.String(), "reason", reason)
	}
	return nil
}
