package verifier

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/reach"
	"github.com/strata-backup/strata/pkg/repo"
)

// jobBatch is the number of chunk ids per ChunkCheck.
const jobBatch = 64

// chunkJob verifies every chunk of every committed backup once, however
// many backups share it (PBS's verify job), spread over the transfer
// workers as ChunkCheck batches. Bad chunks are recorded and the backups
// they damage marked.
// sample, when set, picks the chunks to read (check --read-data-subset).
func (v *verifier) chunkJob(ctx context.Context, sample func(chunk.ID) bool) (*contracts.VerifyReply, error) {
	start := time.Now()
	ids := map[chunk.ID]chunk.Loc{}
	backups, err := reach.Walker{Catalog: v.cat, Repo: v.repo, Keep: reach.Committed}.Walk(ctx,
		func(_ *contracts.BackupRecord, _ contracts.DiskRecord, man *manifest.Manifest) error {
			for _, r := range man.Data() {
				if sample == nil || sample(r.ID) {
					ids[r.ID] = r.Loc // a chunk stored twice: one copy is read
				}
			}
			return nil
		})
	if err != nil {
		return nil, fmt.Errorf("chunks job: %w", err)
	}
	job := uuid.NewString()
	batches := 0
	batch := &contracts.ChunkCheck{Schema: contracts.SchemaVersion, Job: job}
	flush := func() error {
		if len(batch.IDs) == 0 {
			return nil
		}
		batch.Index = batches
		if err := v.pub.Publish(ctx, batch.Subject(), batch, fmt.Sprintf("chk-%s-%d", job, batches)); err != nil {
			return err
		}
		batches++
		batch.IDs, batch.Packs, batch.Locs = batch.IDs[:0], nil, nil
		return nil
	}
	for id, loc := range ids {
		if loc.InPack() {
			n := slices.Index(batch.Packs, loc.Pack.String())
			if n < 0 {
				n = len(batch.Packs)
				batch.Packs = append(batch.Packs, loc.Pack.String())
			}
			batch.Locs = append(batch.Locs, contracts.ChunkLoc{At: len(batch.IDs), Pack: n, Off: loc.Off, Len: loc.Len})
		}
		batch.IDs = append(batch.IDs, id.String())
		if len(batch.IDs) == jobBatch {
			if err := flush(); err != nil {
				return nil, err
			}
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	v.log.InfoContext(ctx, "chunks job started", "job", job, "backups", backups, "chunks", len(ids), "batches", batches)

	results, err := v.js.Stream(ctx, contracts.StreamResults)
	if err != nil {
		return nil, err
	}
	defer results.Purge(context.WithoutCancel(ctx), jetstream.WithPurgeSubject(contracts.SubjectChunkCheckedPrefix+job+".>"))
	reply := &contracts.VerifyReply{Schema: contracts.SchemaVersion, Mode: contracts.VerifyChunks}
	run := v.newRun()
	pending := make(map[int]bool, batches)
	for i := range batches {
		pending[i] = true
	}
	workers := map[string]int{}
	for len(pending) > 0 {
		for i := range pending {
			raw, err := results.GetLastMsgForSubject(ctx, contracts.ChunkCheckedSubject(job, i))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue
			}
			if err != nil {
				return nil, err
			}
			var done contracts.ChunkChecked
			if err := contracts.Decode(raw.Data, &done); err != nil {
				return nil, fmt.Errorf("chunks job batch %d: %w", i, err)
			}
			res := repo.CheckResult{Checked: done.Checked, Bytes: done.Bytes, Bad: map[chunk.ID]string{}}
			for _, b := range done.Bad {
				if id, err := chunk.ParseID(b.ID); err == nil {
					res.Bad[id] = b.Reason
				}
			}
			run.add(res)
			workers[done.Worker]++
			delete(pending, i)
		}
		if len(pending) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("chunks job %s: %d of %d batches unanswered: %w", job, len(pending), batches, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	reply.ChunksChecked, reply.BytesChecked = run.checked, run.bytes
	if err := v.recordBad(ctx, run, reply); err != nil {
		return nil, err
	}
	reply.OK = len(run.bad) == 0
	if !reply.OK {
		reply.Problem = fmt.Sprintf("chunks job: %d bad chunks damage %d backups", len(run.bad), len(reply.Damaged))
	}
	reply.Seconds = time.Since(start).Seconds()
	v.log.InfoContext(ctx, "chunks job done", "job", job, "checked", reply.ChunksChecked, "bad", len(run.bad),
		"damaged", len(reply.Damaged), "seconds", reply.Seconds, "workers", len(workers))
	return reply, nil
}

// scheduledJob runs a chunks job for a VerifyJob message; one at a time
// per verifier (a slot that finds one running is skipped).
func (v *verifier) scheduledJob(ctx context.Context, j *contracts.VerifyJob) error {
	if !v.jobRunning.CompareAndSwap(false, true) {
		v.log.InfoContext(ctx, "chunks job still running; slot skipped", "slot", j.Slot)
		return nil
	}
	defer v.jobRunning.Store(false)
	_, err := v.chunkJob(ctx, nil)
	return err
}
