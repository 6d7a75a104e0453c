package dedup

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"golang.org/x/time/rate"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/reach"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/runtime"
)

// PackHoldKey is the hold a dedup instance takes on a condemned pack.
func PackHoldKey(p chunk.PackID) string { return "pack-" + p.String() }

// packRefs is the live part of each pack: the offsets references name,
// with the stored length there. 8 bytes and a map entry per distinct live
// chunk: the collection of packs holds this for the whole repository.
type packRefs map[chunk.PackID]map[uint32]uint32

func (r packRefs) add(l chunk.Loc) {
	m := r[l.Pack]
	if m == nil {
		m = map[uint32]uint32{}
		r[l.Pack] = m
	}
	m[l.Off] = l.Len
}

func (r packRefs) bytes(p chunk.PackID) (n int64) {
	for _, l := range r[p] {
		n += int64(l)
	}
	return n
}

// packMark is what references say about the packs: the offsets named
// directly (manifests, running backups' results) and, through the moved
// records of compacted packs, where those chunks lie now.
type packMark struct {
	c        *collection // progress reports; nil: none (strata repo stats)
	rt       *runtime.Runtime
	dangling int // referenced packs neither stored nor moved
	backups  int // backups whose manifests were read
	// onManifest, when set, sees every manifest read (strata repo stats)
	onManifest func(rec *contracts.BackupRecord, d contracts.DiskRecord, ids []chunk.ID)
	direct     packRefs        // as manifests and results name them
	live       packRefs        // resolved to stored packs
	read       map[string]bool // manifests read
	moves      map[chunk.PackID]map[uint32]repo.Move
}

// mark reads the results of running backups and every manifest not read
// yet, then resolves the references through moved records.
func (m *packMark) mark(ctx context.Context, stored map[chunk.PackID]objstore.Info, moved map[chunk.PackID][]objstore.Info) error {
	rt := m.rt
	err := eachResult(ctx, rt, func(d *contracts.SegmentDone) {
		for _, l := range d.Locs {
			if p, err := chunk.ParsePackID(d.Packs[l.Pack]); err == nil {
				m.direct.add(chunk.Loc{Pack: p, Off: l.Off, Len: l.Len})
			}
		}
	})
	if err != nil {
		return err
	}
	w := reach.Walker{Catalog: rt.Catalog, Repo: rt.Repo, Skip: func(key string) bool { return m.read[key] }}
	n, err := w.Walk(ctx, func(rec *contracts.BackupRecord, d contracts.DiskRecord, man *manifest.Manifest) error {
		if m.onManifest != nil {
			m.onManifest(rec, d, man.IDs)
		}
		for _, l := range man.Locs {
			if l.InPack() {
				m.direct.add(l)
			}
		}
		m.read[d.Manifest] = true
		if m.c != nil {
			m.c.manifests++
			m.c.report("marking", m.c.manifests, 0, 0)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("mark packs: %w", err)
	}
	m.backups = n
	// Resolve: a reference to a pack with records counts where its chunk
	// went (a pack may still exist beside its records when a collection
	// stopped between the two: both are kept live then).
	m.live = packRefs{}
	var todo []chunk.Loc // references through moved records only: the common case costs no copy
	dangling := map[chunk.PackID]bool{}
	for p, offs := range m.direct {
		_, isStored := stored[p]
		_, isMoved := moved[p]
		switch {
		case isStored && !isMoved:
			// shared, not copied: a moved chunk resolved into p below is
			// added to both, and both are right to hold it (it is live
			// there)
			m.live[p] = offs
			continue
		case !isStored && !isMoved:
			dangling[p] = true
			continue
		}
		for off, n := range offs {
			todo = append(todo, chunk.Loc{Pack: p, Off: off, Len: n})
		}
	}
	seen := map[chunk.Loc]bool{}
	for len(todo) > 0 {
		l := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		if seen[l] {
			continue
		}
		seen[l] = true
		_, isStored := stored[l.Pack]
		if isStored {
			m.live.add(l)
		}
		if _, has := moved[l.Pack]; has {
			moves, err := m.movesOf(ctx, l.Pack)
			if err != nil {
				return err
			}
			if mv, ok := moves[l.Off]; ok {
				todo = append(todo, mv.To)
				continue
			}
		}
		if !isStored {
			dangling[l.Pack] = true
		}
	}
	m.dangling = len(dangling)
	return nil
}

func newPackMark(rt *runtime.Runtime) *packMark {
	return &packMark{rt: rt, direct: packRefs{}, read: map[string]bool{}, moves: map[chunk.PackID]map[uint32]repo.Move{}}
}

// listPacks lists the stored packs and the moved records.
func listPacks(ctx context.Context, r *repo.Repository) (map[chunk.PackID]objstore.Info, map[chunk.PackID][]objstore.Info, error) {
	stored := map[chunk.PackID]objstore.Info{}
	if err := r.ListPacks(ctx, 0, 256, func(p chunk.PackID, info objstore.Info) error {
		stored[p] = info
		return nil
	}); err != nil {
		return nil, nil, err
	}
	moved := map[chunk.PackID][]objstore.Info{}
	if err := r.ListMoved(ctx, func(p chunk.PackID, recs []objstore.Info) error {
		moved[p] = recs
		return nil
	}); err != nil {
		return nil, nil, err
	}
	return stored, moved, nil
}

func (m *packMark) movesOf(ctx context.Context, p chunk.PackID) (map[uint32]repo.Move, error) {
	if mv, ok := m.moves[p]; ok {
		return mv, nil
	}
	mv, err := m.rt.Repo.Moves(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("mark packs: %w", err)
	}
	m.moves[p] = mv
	return mv, nil
}

// packs collects a packed repository's packs by the same steps as chunks
// (see collect): packs no reference reaches are deleted; packs whose live
// bytes fall under the repack threshold — or, recompressing, that hold S2
// chunks — are compacted: their live chunks copied into new packs, moved
// records written, the old packs deleted (pkg/repo's Repacker). Both kinds
// are condemned, so a backup deduplicating against one meanwhile holds it
// and it is left as it is.
func (c *collection) packs(ctx context.Context) error {
	rt, reply := c.rt, c.reply
	stored, moved, err := listPacks(ctx, rt.Repo)
	if err != nil {
		return err
	}
	if len(stored) == 0 && len(moved) == 0 {
		return nil // a loose repository: no second walk of every manifest
	}
	m := newPackMark(rt)
	m.c = c
	if err := m.mark(ctx, stored, moved); err != nil {
		return err
	}
	reply.DanglingPacks = m.dangling

	type candidate struct {
		p      chunk.PackID
		size   int64
		repack bool
	}
	var candidates []candidate
	cutoff := c.lock.Since.Add(-c.grace)
	reply.RepackBelow = c.opts.repackBelow
	for p, info := range stored {
		reply.Packs++
		live := m.live.bytes(p)
		reply.PackBytes += info.Size
		reply.LiveBytes += live
		if info.Modified.After(cutoff) {
			if live == 0 {
				reply.Young++
			}
			continue
		}
		switch {
		case live == 0:
			candidates = append(candidates, candidate{p: p, size: info.Size})
		case float64(live) < c.opts.repackBelow*float64(info.Size):
			candidates = append(candidates, candidate{p: p, size: info.Size, repack: true})
		case c.opts.recompress:
			worth, err := c.worthRecompressing(ctx, p, info.Size, m.live[p])
			if err != nil {
				return err
			}
			if worth {
				candidates = append(candidates, candidate{p: p, size: info.Size, repack: true})
			}
		}
	}
	if c.dryRun || len(candidates) == 0 {
		for _, cd := range candidates {
			if cd.repack {
				reply.PacksRepacked++
				reply.FreedBytes += cd.size - m.live.bytes(cd.p)
			} else {
				reply.PacksDeleted++
				reply.FreedBytes += cd.size
			}
		}
		return c.dropMoved(ctx, m, stored, moved)
	}

	var list bytes.Buffer
	for _, cd := range candidates {
		list.Write(cd.p[:])
	}
	done, err := c.condemn(ctx, fmt.Sprintf("gc/%s-packs.condemned", c.lock.ID), list.Bytes(), true)
	if err != nil {
		return err
	}
	defer done()
	if err := c.hook("condemned", ""); err != nil {
		return err
	}
	if err := m.mark(ctx, stored, moved); err != nil {
		return err
	}
	reply.DanglingPacks = m.dangling

	rp := rt.Repo.NewRepacker(c.lock.ID)
	rp.Recompress, rp.Codec = c.opts.recompress, c.opts.recompressCodec
	if c.opts.rateLimit > 0 {
		rp.Limit = rate.NewLimiter(rate.Limit(c.opts.rateLimit), int(min(c.opts.rateLimit, repo.MaxRunBytes)))
	}
	rp.Announce = func(ctx context.Context, p *repo.Pack) error {
		ann := p.Announcement()
		return rt.Bus.Publish(ctx, contracts.PackStoredSubject(ann.Pack), ann, ann.Pack)
	}
	rp.Step = func(step string, p chunk.PackID) error { return c.hook(step, p.String()) }
	repacks := int64(0)
	for _, cd := range candidates {
		if cd.repack {
			repacks++
		}
	}
	rp.Done = func(ctx context.Context, p chunk.PackID) error {
		c.report("old packs rewritten and deleted", int64(rp.Stats.Packs), repacks, rp.Stats.Read)
		return rt.GC.Deleted(ctx, c.lock.ID, PackHoldKey(p))
	}
	for i, cd := range candidates {
		c.report("sweeping and rewriting packs", int64(i+1), int64(len(candidates)), rp.Stats.Read)
		live := m.live[cd.p]
		if !cd.repack && len(live) > 0 {
			reply.Rescued++
			continue
		}
		claimed, err := rt.GC.Claim(ctx, c.lock.ID, PackHoldKey(cd.p))
		if err != nil {
			return err
		}
		if !claimed {
			reply.Rescued++ // a backup reuses it: held
			continue
		}
		if !cd.repack {
			if err := rt.Repo.DeletePack(ctx, cd.p); err != nil {
				return fmt.Errorf("sweep: %w", err)
			}
			if err := rt.GC.Deleted(ctx, c.lock.ID, PackHoldKey(cd.p)); err != nil {
				return err
			}
			reply.PacksDeleted++
			reply.FreedBytes += cd.size
			continue
		}
		if err := rp.Repack(ctx, cd.p, live); err != nil {
			if !errors.Is(err, repo.ErrNotRepacked) {
				return err
			}
			rt.Log.WarnContext(ctx, "pack left whole", "pack", cd.p.String(), "err", err)
			reply.PacksNotMoved++
			if err := rt.GC.Unclaim(ctx, c.lock.ID, PackHoldKey(cd.p)); err != nil {
				return err
			}
			continue
		}
		reply.FreedBytes += cd.size
	}
	if err := rp.Flush(ctx); err != nil {
		return err
	}
	reply.PacksRepacked += rp.Stats.Packs
	reply.PacksWritten += rp.Stats.NewPacks
	reply.ChunksMoved += rp.Stats.Moved
	reply.BytesRead += rp.Stats.Read
	reply.BytesWritten += rp.Stats.Written
	reply.Recompressed += rp.Stats.Recompressed
	reply.RecompSaved += rp.Stats.RecompSaved
	reply.FreedBytes -= rp.Stats.Written
	c.lock.CondemnedPacks = ""
	if err := c.setPhase(ctx, "mark", ""); err != nil {
		return err
	}
	return c.dropMoved(ctx, m, stored, moved)
}

// worthRecompressing: a pack one of whose live chunks is stored with S2
// (or in a pack whose trailer predates codecs). Reads the trailer only.
func (c *collection) worthRecompressing(ctx context.Context, p chunk.PackID, size int64, live map[uint32]uint32) (bool, error) {
	entries, err := c.rt.Repo.PackIndex(ctx, p, size)
	if err != nil {
		c.rt.Log.WarnContext(ctx, "pack trailer unreadable; not recompressed", "pack", p.String(), "err", err)
		return false, nil
	}
	for _, e := range entries {
		if _, ok := live[e.Loc.Off]; ok && (e.Codec == chunk.S2 && !e.Settled || e.Codec == repo.CodecUnknown) {
			return true, nil
		}
	}
	return false, nil
}

// dropMoved deletes the records of compacted packs that no reference names
// any more (older than the grace period), and counts the others. Nothing
// can come to name such a pack again: dedup locates chunks only in packs
// that exist, and a backup inherits locations only from a parent that
// still references them.
func (c *collection) dropMoved(ctx context.Context, m *packMark, stored map[chunk.PackID]objstore.Info, moved map[chunk.PackID][]objstore.Info) error {
	cutoff := c.lock.Since.Add(-c.grace)
	for p, recs := range moved {
		if _, ok := m.direct[p]; ok {
			c.reply.MovedRecords += len(recs)
			continue
		}
		if _, ok := stored[p]; ok {
			c.reply.MovedRecords += len(recs) // its pack's own collection decides
			continue
		}
		var old []string
		for _, r := range recs {
			if r.Modified.After(cutoff) {
				c.reply.MovedRecords++
			} else {
				old = append(old, r.Key)
			}
		}
		if c.dryRun || len(old) == 0 {
			continue
		}
		if err := c.rt.Repo.DeleteMoved(ctx, old); err != nil {
			return err
		}
		c.reply.MovedDeleted += len(old)
	}
	return nil
}

// hook calls the test hooks, if any.
func (c *collection) hook(step, pack string) error {
	if c.opts.hooks == nil {
		return nil
	}
	return c.opts.hooks.BeforeGCStep(step, pack)
}

// gcOptions are a collection's settings beyond grace and dry run.
type gcOptions struct {
	repackBelow float64
	recompress  bool
	// recompressCodec: chunk.Zstd or chunk.ZstdBetter
	recompressCodec chunk.Codec
	rateLimit       int64
	hooks           Hooks
}

// Hooks are called before each step of a collection of packs (condemned,
// then per pack packed, moved, deleted); nil in production. The e2e suite
// builds a dedup that exits at a chosen step, as a crash would.
type Hooks interface {
	BeforeGCStep(step, pack string) error
}
