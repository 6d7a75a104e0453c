package dedup

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/metrics"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/reach"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/runtime"
)

// drainTimeout bounds how long a collection waits for segments already
// handed to transfer workers.
const drainTimeout = 30 * time.Minute

// collect runs one mark-and-sweep while backups keep running, over every
// kind of storage unit the content layer has (chunk objects of their own,
// packs: repo.Sweep) with the same steps. A unit a running backup may
// reference is one it wrote (younger than the grace period: never a
// candidate), one it inherits from its parent (in the parent's manifest:
// marked), or one dedup answered "present" for or located a chunk in:
//
//  1. mark: every chunk and pack location in every manifest and in every
//     segment result still in STRATA_RESULTS (running backups), through
//     the moved records of compacted packs; candidates are the units
//     nothing marks (or, packs, whose live bytes fall under the repack
//     threshold, or that hold S2 chunks when recompressing), older than
//     the grace period;
//  2. condemn: the candidates go to objects and gc.lock moves to phase
//     "sweep"; from then on dedup reads the lock on every request and holds
//     (BucketGCHolds) any condemned unit it is about to answer "present"
//     or locate a chunk in;
//  3. drain: wait until every segment published before the condemnation
//     has been processed — its answers came before dedup knew the
//     candidates, but its result is now in STRATA_RESULTS or, once
//     committed, in a manifest;
//  4. mark again (results, then manifests: a commit writes the manifest
//     before purging the results) and keep every dead candidate marked now;
//  5. sweep: claim each remaining candidate in BucketGCHolds ("deleting",
//     create-only: a hold taken first wins), delete it — or rewrite it:
//     its live chunks copied into new packs, moved records written, the
//     old pack deleted — and mark it "deleted". Dedup answers a claimed
//     unit's chunks "missing" only once it is "deleted", so a re-upload
//     always lands after the delete. Rewrites finish before the phase
//     ends.
//
// With shards > 1 the whole protocol runs once per range of units (chunk
// ids by their first byte, packs by their id's last), so the mark holds
// one shard's references at a time: memory divided by shards, every
// manifest read shards times.
func collect(ctx context.Context, rt *runtime.Runtime, grace time.Duration, dryRun bool, shards int, staleLock time.Duration, opts gcOptions) (reply *contracts.GCReply, err error) {
	if !dryRun {
		defer func() { metrics.GCRuns.WithLabelValues(map[bool]string{true: "ok", false: "error"}[err == nil]).Inc() }()
	}
	if err := validShards(shards); err != nil {
		return nil, err
	}
	c := &collection{rt: rt, grace: grace, dryRun: dryRun, opts: opts,
		lock:  contracts.GCLock{ID: uuid.NewString(), Since: time.Now().UTC(), Phase: "mark"},
		reply: &contracts.GCReply{Schema: contracts.SchemaVersion, DryRun: dryRun, GraceSeconds: int64(grace / time.Second), RepackBelow: opts.repackBelow}}
	if c.rev, err = rt.GC.Take(ctx, c.lock, staleLock); err != nil {
		return nil, err
	}
	defer rt.GC.Release(context.WithoutCancel(ctx))
	so := repo.SweepOptions{ID: c.lock.ID, Cutoff: c.lock.Since.Add(-grace), RepackBelow: opts.repackBelow,
		Recompress: opts.recompress, Codec: opts.recompressCodec,
		Announce: func(ctx context.Context, ann *contracts.PackStored) error {
			return rt.Bus.Publish(ctx, contracts.PackStoredSubject(ann.Pack), ann, ann.Pack)
		},
		Step:      c.hook,
		LockDates: opts.lockDates,
		Done: func(ctx context.Context, hold string) error {
			c.rewritten++
			c.report("old packs rewritten and deleted", c.rewritten, c.rewrites, c.sweep.Rewrites().Read)
			return rt.GC.Deleted(ctx, c.lock.ID, hold)
		},
	}
	if opts.rateLimit > 0 {
		so.Limit = rate.NewLimiter(rate.Limit(opts.rateLimit), int(min(opts.rateLimit, repo.MaxRunBytes)))
	}
	if c.sweep, err = rt.Repo.NewSweep(ctx, so); err != nil {
		return nil, err
	}
	for s := 0; s < shards; s++ {
		lo, hi := s*256/shards, (s+1)*256/shards
		if err := c.shard(ctx, byte(lo), hi); err != nil {
			return nil, err
		}
	}
	r := c.reply
	r.DanglingPacks = c.sweep.Dangling()
	st := c.sweep.Rewrites()
	r.PacksRepacked += st.Packs
	r.PacksWritten += st.NewPacks
	r.ChunksMoved += st.Moved
	r.BytesRead += st.Read
	r.BytesWritten += st.Written
	r.Recompressed += st.Recompressed
	r.RecompSaved += st.RecompSaved
	r.FreedBytes -= st.Written
	if r.MovedRecords, r.MovedDeleted, err = c.sweep.DropMoved(ctx, dryRun); err != nil {
		return nil, err
	}
	r.Finished = time.Now().UTC()
	if !dryRun {
		metrics.GCFreedBytes.Add(float64(max(0, r.FreedBytes)))
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
	sweep  *repo.Sweep
	// the last progress report (report)
	lastPhase  string
	lastReport time.Time
	manifests  int64  // read so far, over every mark of this collection
	rewrites   int64  // packs to rewrite, over the shards so far
	rewritten  int64  // and rewritten
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

// shard runs the five steps over the units of one shard.
func (c *collection) shard(ctx context.Context, lo byte, hi int) error {
	rt, reply := c.rt, c.reply
	m := c.sweep.Mark(lo, hi)
	if err := c.mark(ctx, m); err != nil {
		return err
	}
	units, census, err := m.Candidates(ctx)
	if err != nil {
		return err
	}
	reply.Chunks += census.Chunks
	reply.Young += census.Young
	reply.Locked += census.Locked
	reply.LockedBytes += census.LockedBytes
	reply.Packs += census.Packs
	reply.PackBytes += census.PackBytes
	reply.LiveBytes += census.LiveBytes
	if c.dryRun || len(units) == 0 {
		reply.Referenced += m.Referenced()
		for _, u := range units {
			c.freed(u)
		}
		return nil
	}
	for _, u := range units {
		if u.Rewrite {
			c.rewrites++
		}
	}

	// 2, 3. condemn, drain
	done, err := c.condemn(ctx, lo, units)
	if err != nil {
		return err
	}
	defer done()
	if err := c.hook("condemned", ""); err != nil {
		return err
	}

	// 4. mark again
	if err := c.mark(ctx, m); err != nil {
		return err
	}
	reply.Referenced += m.Referenced()

	// 5. sweep
	for i, u := range units {
		c.report("sweeping", int64(i+1), int64(len(units)), reply.FreedBytes)
		if m.Needed(u) {
			reply.Rescued++
			continue
		}
		claimed, err := rt.GC.Claim(ctx, c.lock.ID, u.Hold)
		if err != nil {
			return err
		}
		if !claimed {
			reply.Rescued++ // a backup reuses it: held
			continue
		}
		if err := c.sweep.Free(ctx, u, m); err != nil {
			switch {
			case errors.Is(err, objstore.ErrLocked):
				// Its retention was extended after it was made: the store
				// refused, nothing was destroyed; a later run frees it.
				rt.Log.InfoContext(ctx, "unreferenced but under Object Lock", "unit", u.Name, "err", err)
				reply.Locked++
				reply.LockedBytes += u.Size
			case errors.Is(err, repo.ErrNotRepacked):
				rt.Log.WarnContext(ctx, "pack left whole", "pack", u.Name, "err", err)
				reply.PacksNotMoved++
			default:
				return err
			}
			if err := rt.GC.Unclaim(ctx, c.lock.ID, u.Hold); err != nil {
				return err
			}
			continue
		}
		if !u.Rewrite { // a rewritten unit is done once its old pack is deleted (SweepOptions.Done)
			if err := rt.GC.Deleted(ctx, c.lock.ID, u.Hold); err != nil {
				return err
			}
		}
		c.freed(u)
	}
	// Rewrites end inside the sweep phase: an old pack is deleted only
	// while dedup still holds what it locates in condemned packs.
	if err := c.sweep.Flush(ctx); err != nil {
		return err
	}
	// Back to marking: dedup stops holding this shard's candidates (and,
	// seeing the lock change, forgets its cache of present chunks).
	c.lock.CondemnedPacks = ""
	return c.setPhase(ctx, "mark", "")
}

// freed counts a unit deleted or rewritten (or, dry run, that would be).
func (c *collection) freed(u repo.Unit) {
	r := c.reply
	switch {
	case u.Rewrite:
		r.FreedBytes += u.Size
		if c.dryRun {
			r.PacksRepacked++
			r.FreedBytes -= u.Live
		}
	case u.IsPack():
		r.PacksDeleted++
		r.FreedBytes += u.Size
	default:
		r.Deleted++
		r.FreedBytes += u.Size
	}
}

// mark marks the results of running backups, then every manifest not read
// yet. A manifest that cannot be read aborts the collection: never sweep
// on an incomplete mark.
func (c *collection) mark(ctx context.Context, m *repo.Mark) error {
	var merr error
	err := eachResult(ctx, c.rt, func(d *contracts.SegmentDone) {
		if merr == nil {
			merr = m.Result(ctx, d)
		}
	})
	if err == nil {
		err = merr
	}
	if err != nil {
		return err
	}
	w := reach.Walker{Catalog: c.rt.Catalog, Repo: c.rt.Repo, Skip: m.Read}
	n, err := w.Walk(ctx, func(_ *contracts.BackupRecord, d contracts.DiskRecord, man *manifest.Manifest) error {
		c.manifests++
		c.report("marking", c.manifests, 0, 0)
		return m.Manifest(ctx, d.Manifest, man)
	})
	if err != nil {
		return fmt.Errorf("mark: %w", err)
	}
	c.reply.Backups = n
	return nil
}

// condemn stores the candidates' lists, moves gc.lock to the sweep phase
// naming them, and drains the segments handed out before (steps 2 and 3).
// done removes the lists.
func (c *collection) condemn(ctx context.Context, lo byte, units []repo.Unit) (done func(), err error) {
	chunks, packs := repo.Condemned(units)
	var keys []string
	done = func() {
		for _, k := range keys {
			c.rt.Repo.Store.Delete(context.WithoutCancel(ctx), k)
		}
	}
	var chunkKey, packKey string
	for _, l := range []struct {
		key  *string
		name string
		list []byte
	}{{&chunkKey, fmt.Sprintf("gc/%s-%02x.condemned", c.lock.ID, lo), chunks}, {&packKey, fmt.Sprintf("gc/%s-%02x-packs.condemned", c.lock.ID, lo), packs}} {
		if len(l.list) == 0 {
			continue
		}
		if err := c.rt.Repo.Store.Put(ctx, l.name, l.list); err != nil {
			done()
			return nil, fmt.Errorf("write condemned list: %w", err)
		}
		keys = append(keys, l.name)
		*l.key = l.name
	}
	c.lock.CondemnedPacks = packKey
	if err := c.setPhase(ctx, "sweep", chunkKey); err != nil {
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

// hook calls the test hooks, if any.
func (c *collection) hook(step, unit string) error {
	if c.opts.hooks == nil {
		return nil
	}
	return c.opts.hooks.BeforeGCStep(step, unit)
}

// gcOptions are a collection's settings beyond grace and dry run.
type gcOptions struct {
	repackBelow float64
	recompress  bool
	// recompressCodec: chunk.Zstd or chunk.ZstdBetter
	recompressCodec chunk.Codec
	rateLimit       int64
	hooks           Hooks
	// lockDates: the pack index's retain-until dates (Object Lock).
	lockDates func(chunk.PackID) time.Time
}

// Hooks are called before each step of a collection that frees packs
// (condemned, then per pack rewritten: packed, moved, deleted); nil in
// production. The e2e suite builds a dedup that exits at a chosen step,
// as a crash would.
type Hooks interface {
	BeforeGCStep(step, unit string) error
}
