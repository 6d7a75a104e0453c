package dedup

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/reach"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/runtime"
)

// drainTimeout bounds how long a collection waits for segments already
// handed to transfer workers.
const drainTimeout = 30 * time.Minute

// collect runs one mark-and-sweep while backups keep running. A chunk a
// running backup may reference is one it uploaded (younger than the grace
// period: never a candidate), one it inherits from its parent (in the
// parent's manifest: marked), or one dedup answered "present" for:
//
//  1. mark: every id in every manifest and in every segment result still in
//     STRATA_RESULTS (running backups); candidates are the unmarked chunk
//     objects older than the grace period;
//  2. condemn: the candidates go to an object and gc.lock moves to phase
//     "sweep"; from then on dedup reads the lock on every request and holds
//     (BucketGCHolds) any condemned chunk it is about to answer "present";
//  3. drain: wait until every segment published before the condemnation
//     has been processed — its "present" answers came before dedup knew
//     the candidates, but its result is now in STRATA_RESULTS or, once
//     committed, in a manifest;
//  4. mark again (results, then manifests: a commit writes the manifest
//     before purging the results) and drop every candidate marked now;
//  5. sweep: claim each remaining candidate in BucketGCHolds ("deleting",
//     create-only: a hold taken first wins), delete it, mark it "deleted".
//     Dedup answers a claimed chunk "missing" only once it is "deleted", so
//     the re-upload always lands after the delete.
//
// With shards > 1 the whole protocol runs once per range of chunk ids (by
// their first byte), so the mark holds one shard's ids at a time: memory
// divided by shards, every manifest read shards times.
func collect(ctx context.Context, rt *runtime.Runtime, grace time.Duration, dryRun bool, shards int, staleLock time.Duration, opts gcOptions) (*contracts.GCReply, error) {
	if err := validShards(shards); err != nil {
		return nil, err
	}
	c := &collection{rt: rt, grace: grace, dryRun: dryRun, opts: opts,
		lock:  contracts.GCLock{ID: uuid.NewString(), Since: time.Now().UTC(), Phase: "mark"},
		reply: &contracts.GCReply{Schema: contracts.SchemaVersion, DryRun: dryRun, GraceSeconds: int64(grace / time.Second)}}
	var err error
	if c.rev, err = rt.GC.Take(ctx, c.lock, staleLock); err != nil {
		return nil, err
	}
	defer rt.GC.Release(context.WithoutCancel(ctx))
	for s := 0; s < shards; s++ {
		lo, hi := s*256/shards, (s+1)*256/shards
		if err := c.shard(ctx, byte(lo), hi); err != nil {
			return nil, err
		}
	}
	// Packs too (a loose repository has none: one empty listing).
	if err := c.packs(ctx); err != nil {
		return nil, err
	}
	r := c.reply
	r.Finished = time.Now().UTC()
	if !dryRun {
		if err := rt.GC.RecordLast(ctx, r); err != nil {
			rt.Log.WarnContext(ctx, "collection finished, its numbers not kept", "err", err)
		}
	}
	rt.Log.InfoContext(ctx, "garbage collection", "dry_run", dryRun, "shards", shards, "backups", r.Backups, "referenced", r.Referenced,
		"chunks", r.Chunks, "young", r.Young, "rescued", r.Rescued, "deleted", r.Deleted, "packs", r.Packs, "packs_deleted", r.PacksDeleted,
		"packs_repacked", r.PacksRepacked, "chunks_moved", r.ChunksMoved, "recompressed", r.Recompressed, "freed_bytes", r.FreedBytes)
	return r, nil
}

// validShards checks STRATA_GC_SHARDS.
func validShards(n int) error {
	if err := contracts.ValidShards(n); err != nil {
		return fmt.Errorf("STRATA_GC_SHARDS: %w", err)
	}
	return nil
}

// collection is one run of collect; its reply sums the shards.
type collection struct {
	rt     *runtime.Runtime
	grace  time.Duration
	dryRun bool
	opts   gcOptions
	lock   contracts.GCLock
	// the last progress report (report)
	lastPhase  string
	lastReport time.Time
	manifests  int64  // read so far, over every mark of this collection
	rev        uint64 // gc.lock's revision, for compare-and-set moves
	reply      *contracts.GCReply
}

// report publishes where the collection is (contracts.GCProgress), at most
// twice a second and at the end of each phase.
func (c *collection) report(phase string, done, total, bytes int64) {
	if c.dryRun && phase != "marking" {
		return
	}
	end := total > 0 && done >= total
	if !end && phase == c.lastPhase && time.Since(c.lastReport) < 500*time.Millisecond {
		return
	}
	c.lastPhase, c.lastReport = phase, time.Now()
	b, err := contracts.Encode(&contracts.GCProgress{Schema: contracts.SchemaVersion, GC: c.lock.ID, Phase: phase, Done: done, Total: total, Bytes: bytes})
	if err == nil {
		c.rt.Bus.NC.Publish(contracts.SubjectGCProgress, b) // core NATS: best effort
	}
}

// setPhase moves gc.lock (compare-and-set: another collector taking over a
// lock it found stale makes this one stop).
func (c *collection) setPhase(ctx context.Context, phase, condemned string) error {
	c.lock.Phase, c.lock.Condemned = phase, condemned
	rev, err := c.rt.GC.Move(ctx, c.lock, c.rev)
	if err != nil {
		return err
	}
	c.rev = rev
	return nil
}

// shard runs the five steps over chunk ids whose first byte is in [lo, hi).
func (c *collection) shard(ctx context.Context, lo byte, hi int) error {
	rt, reply := c.rt, c.reply
	inShard := func(id chunk.ID) bool { return int(id[0]) >= int(lo) && int(id[0]) < hi }
	m := &mark{c: c, rt: rt, ids: map[chunk.ID]struct{}{}, manifests: map[string]bool{}, inShard: inShard}
	if err := m.results(ctx); err != nil {
		return err
	}
	if err := m.allManifests(ctx); err != nil {
		return err
	}
	reply.Backups = m.backups

	type candidate struct {
		id   chunk.ID
		key  string
		size int64
	}
	var candidates []candidate
	cutoff := c.lock.Since.Add(-c.grace)
	err := rt.Repo.Chunks.List(ctx, lo, hi, func(sc repo.StoredChunk) error {
		reply.Chunks++
		if m.has(sc.ID) {
			return nil
		}
		if sc.Modified.After(cutoff) {
			reply.Young++
			return nil
		}
		candidates = append(candidates, candidate{sc.ID, sc.Name, sc.Size})
		return nil
	})
	if err != nil {
		return err
	}
	if c.dryRun || len(candidates) == 0 {
		reply.Referenced += len(m.ids)
		for _, cd := range candidates {
			reply.Deleted++
			reply.FreedBytes += cd.size
		}
		return nil
	}

	// 2. condemn
	var list bytes.Buffer
	for _, cd := range candidates {
		list.Write(cd.id[:])
	}
	done, err := c.condemn(ctx, fmt.Sprintf("gc/%s-%02x.condemned", c.lock.ID, lo), list.Bytes(), false)
	if err != nil {
		return err
	}
	defer done()

	// 4. mark again
	if err := m.results(ctx); err != nil {
		return err
	}
	if err := m.allManifests(ctx); err != nil {
		return err
	}
	reply.Referenced += len(m.ids)

	// 5. sweep
	for i, cd := range candidates {
		c.report("sweeping chunks", int64(i+1), int64(len(candidates)), reply.FreedBytes)
		if m.has(cd.id) {
			reply.Rescued++
			continue
		}
		claimed, err := rt.GC.Claim(ctx, c.lock.ID, cd.id.String())
		if err != nil {
			return err
		}
		if !claimed {
			reply.Rescued++ // a backup reuses it: held
			continue
		}
		if err := rt.Repo.Chunks.Delete(ctx, cd.id); err != nil {
			return fmt.Errorf("sweep %s: %w", cd.key, err)
		}
		if err := rt.GC.Deleted(ctx, c.lock.ID, cd.id.String()); err != nil {
			return err
		}
		reply.Deleted++
		reply.FreedBytes += cd.size
	}
	// Back to marking: dedup stops holding this shard's candidates (and,
	// seeing the lock change, forgets its cache of present chunks).
	return c.setPhase(ctx, "mark", "")
}

// condemn stores the candidates' list under key, moves gc.lock to the
// sweep phase naming it (a list of chunk ids, or with packs of pack ids),
// and drains the segments handed out before (steps 2 and 3). done
// removes the list.
func (c *collection) condemn(ctx context.Context, key string, list []byte, packs bool) (done func(), err error) {
	if err := c.rt.Repo.Store.Put(ctx, key, list); err != nil {
		return nil, fmt.Errorf("write condemned list: %w", err)
	}
	done = func() { c.rt.Repo.Store.Delete(context.WithoutCancel(ctx), key) }
	chunks := key
	if packs {
		chunks, c.lock.CondemnedPacks = "", key
	}
	if err := c.setPhase(ctx, "sweep", chunks); err != nil {
		done()
		return nil, err
	}
	if err := drainSegments(ctx, c.rt); err != nil {
		done()
		return nil, err
	}
	return done, nil
}

// drainSegments waits until every segment in STRATA_SEGMENTS now has been
// processed (work queue: acknowledged segments leave the stream).
func drainSegments(ctx context.Context, rt *runtime.Runtime) error {
	stream, err := rt.Bus.JS.Stream(ctx, contracts.StreamSegments)
	if err != nil {
		return fmt.Errorf("segments stream: %w", err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("segments stream: %w", err)
	}
	last := info.State.LastSeq
	deadline := time.Now().Add(drainTimeout)
	for {
		info, err := stream.Info(ctx)
		if err != nil {
			return fmt.Errorf("segments stream: %w", err)
		}
		if info.State.Msgs == 0 || info.State.FirstSeq > last {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("segments published before the collection are still unprocessed after %s; nothing deleted", drainTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// mark is the set of referenced chunk ids of one shard: 32 B per distinct
// id in it.
type mark struct {
	c         *collection // progress reports; nil: none
	rt        *runtime.Runtime
	inShard   func(chunk.ID) bool
	ids       map[chunk.ID]struct{}
	manifests map[string]bool // read already
	backups   int
}

func (m *mark) has(id chunk.ID) bool {
	_, ok := m.ids[id]
	return ok
}

// allManifests marks the ids of every manifest not read yet. A manifest
// that cannot be read aborts the collection: never sweep on an incomplete
// mark.
func (m *mark) allManifests(ctx context.Context) error {
	w := reach.Walker{Catalog: m.rt.Catalog, Repo: m.rt.Repo, Skip: func(key string) bool { return m.manifests[key] }}
	n, err := w.Walk(ctx, func(_ *contracts.BackupRecord, d contracts.DiskRecord, man *manifest.Manifest) error {
		for _, id := range man.IDs {
			if !id.IsZero() && m.inShard(id) {
				m.ids[id] = struct{}{}
			}
		}
		m.manifests[d.Manifest] = true
		if m.c != nil {
			m.c.manifests++
			m.c.report("marking", m.c.manifests, 0, 0)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("mark: %w", err)
	}
	m.backups = n
	return nil
}

// results marks every chunk id named by the segment results of running
// backups.
func (m *mark) results(ctx context.Context) error {
	return eachResult(ctx, m.rt, func(d *contracts.SegmentDone) {
		for _, s := range d.IDs {
			if id, err := chunk.ParseID(s); err == nil && m.inShard(id) {
				m.ids[id] = struct{}{}
			}
		}
	})
}

// eachResult calls f with every segment result now in STRATA_RESULTS (the
// results of running backups; a commit purges its own).
func eachResult(ctx context.Context, rt *runtime.Runtime, f func(*contracts.SegmentDone)) error {
	stream, err := rt.Bus.JS.Stream(ctx, contracts.StreamResults)
	if err != nil {
		return fmt.Errorf("results stream: %w", err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("results stream: %w", err)
	}
	if info.State.Msgs == 0 {
		return nil
	}
	last := info.State.LastSeq
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return fmt.Errorf("read results: %w", err)
	}
	for {
		batch, err := cons.Fetch(256, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return fmt.Errorf("read results: %w", err)
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			meta, err := msg.Metadata()
			if err != nil {
				return err
			}
			var d contracts.SegmentDone
			if err := contracts.Decode(msg.Data(), &d); err == nil {
				f(&d)
			}
			if meta.Sequence.Stream >= last {
				return nil
			}
		}
		if err := batch.Error(); err != nil {
			return fmt.Errorf("read results: %w", err)
		}
		if n == 0 {
			return nil // the rest was purged (committed) meanwhile: in manifests now
		}
	}
}
