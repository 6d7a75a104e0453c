package repo

// Compaction: the live chunks of packs that are mostly dead (or stored
// with a codec worth replacing) are copied into new packs, the old packs'
// moved records written (moved.go), then the old packs deleted. Each step
// leaves the repository readable:
//
//   - new pack stored, announced: an unreferenced copy (a later collection
//     deletes it, or a backup deduplicates against it);
//   - moved record stored: readers still read the old pack, which exists;
//   - old pack deleted: readers follow the record.
//
// A collection stopped anywhere is finished by the next one: a pack with
// records is rewritten only for the live chunks they do not cover.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	"golang.org/x/time/rate"

	"github.com/strata-backup/strata/pkg/chunk"
)

// RepackTarget is the size new packs are filled to.
const RepackTarget = 16 << 20

// Repacker rewrites packs for one collection. Not safe for concurrent use.
type Repacker struct {
	r   *Repository
	gen string // the collection's id: names its moved records
	// Recompress re-encodes chunks stored with S2 (or with a codec the
	// pack's trailer does not name) with zstd; other chunks are copied as
	// they are stored.
	Recompress bool
	// Codec recompressed chunks get: chunk.Zstd, or chunk.ZstdBetter for a
	// stronger level (the zero value means chunk.Zstd).
	Codec chunk.Codec
	// Limit paces the bytes read from old packs; nil: unlimited.
	Limit *rate.Limiter
	// Announce is called for each new pack once it is stored, before any
	// record names it (the dedup index learns where the chunks went).
	Announce func(ctx context.Context, p *Pack) error
	// Step, when set, is called before each step ("packed", "moved",
	// "deleted") with the pack concerned; an error stops the repacker
	// there. Tests use it to stop a collection at every step.
	Step func(step string, p chunk.PackID) error
	// Done is called once an old pack is deleted.
	Done func(ctx context.Context, p chunk.PackID) error

	pack    *Pack
	pending []pendingMove
	Stats   RepackStats
}

// RepackStats counts what a Repacker did.
type RepackStats struct {
	Packs        int   // old packs deleted
	NewPacks     int   // packs written
	Read         int64 // bytes read from old packs
	Written      int64 // bytes of chunks written into new packs
	Moved        int   // chunks moved
	Recompressed int   // chunks re-encoded with zstd
	RecompSaved  int64 // bytes saved by recompression
}

// pendingMove is an old pack whose live chunks are all in the pack being
// filled or in packs already stored.
type pendingMove struct {
	p     chunk.PackID
	moves []Move
}

// NewRepacker starts a rewrite for collection gen.
func (r *Repository) NewRepacker(gen string) *Repacker {
	return &Repacker{r: r, gen: gen, pack: NewPack()}
}

// ErrNotRepacked is wrapped by errors about a pack left as it was (its
// trailer unreadable, a live chunk corrupt or not where the references
// say): never deleted, reported for the verifier to look at.
var ErrNotRepacked = errors.New("pack not rewritten")

// Repack moves the chunks of pack p that lie at the offsets of live
// (offset → stored length, as references name them) and then, once they
// are stored elsewhere, deletes p (at the next Flush or later, when the
// pack being filled is stored). A live chunk that is corrupt, or a range
// the trailer does not list, leaves p as it is (error wrapping
// ErrNotRepacked). Chunks a moved record of p already covers are not
// copied again.
func (rp *Repacker) Repack(ctx context.Context, p chunk.PackID, live map[uint32]uint32) error {
	r := rp.r
	entries, err := r.PackIndex(ctx, p, 0)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNotRepacked, err)
	}
	byOff := make(map[uint32]PackEntry, len(entries))
	for _, e := range entries {
		byOff[e.Loc.Off] = e
	}
	done, err := r.Moves(ctx, p)
	if err != nil {
		return err
	}
	var todo []PackEntry
	for off, n := range live {
		if _, ok := done[off]; ok {
			continue
		}
		e, ok := byOff[off]
		if !ok || e.Loc.Len != n {
			return fmt.Errorf("%w: pack %s: a reference names %d+%d, which its trailer does not list", ErrNotRepacked, PackKey(p), off, n)
		}
		todo = append(todo, e)
	}
	slices.SortFunc(todo, func(a, b PackEntry) int { return int(a.Loc.Off) - int(b.Loc.Off) })

	// Read and check everything first: a pack with a bad live chunk is
	// left whole, before anything of it is copied.
	type item struct {
		e      PackEntry
		stored []byte
		data   []byte // decoded, when it is to be re-encoded
		codec  chunk.Codec
	}
	items := make([]item, 0, len(todo))
	for i := 0; i < len(todo); {
		j := i + 1
		for j < len(todo) && Contiguous(todo[j-1].Loc, todo[j].Loc) && int64(todo[j].Loc.Off+todo[j].Loc.Len-todo[i].Loc.Off) <= MaxRunBytes {
			j++
		}
		first, last := todo[i].Loc, todo[j-1].Loc
		n := int64(last.Off) + int64(last.Len) - int64(first.Off)
		if rp.Limit != nil {
			if err := rp.Limit.WaitN(ctx, int(min(n, int64(rp.Limit.Burst())))); err != nil {
				return err
			}
		}
		b, err := r.Store.GetRange(ctx, PackKey(p), int64(first.Off), n)
		if err != nil {
			return fmt.Errorf("read pack %s: %w", PackKey(p), err)
		}
		if int64(len(b)) != n {
			return fmt.Errorf("%w: pack %s: %d of %d bytes at %d", ErrNotRepacked, PackKey(p), len(b), n, first.Off)
		}
		rp.Stats.Read += n
		for _, e := range todo[i:j] {
			at := e.Loc.Off - first.Off
			stored := b[at : at+e.Loc.Len]
			opened, err := r.seal.open(stored, e.ID[:])
			if err != nil {
				return fmt.Errorf("%w: chunk %s in pack %s: %v", ErrNotRepacked, e.ID, PackKey(p), err)
			}
			codec, _ := chunk.StoredCodec(opened)
			data, err := chunk.DecodeWith(opened, e.ID, r.seal.ChunkID)
			if err != nil {
				return fmt.Errorf("%w: pack %s: %v", ErrNotRepacked, PackKey(p), err)
			}
			it := item{e: e, stored: stored, codec: codec}
			if rp.Recompress && codec == chunk.S2 && !e.Settled {
				it.data = data
			}
			items = append(items, it)
		}
		i = j
	}

	moves := make([]Move, 0, len(items))
	for _, it := range items {
		stored, codec, settled := it.stored, it.codec, it.e.Settled
		if it.data != nil {
			// Kept as it was when zstd does no better (tiny or odd chunks),
			// and marked so that it is not tried again.
			settled = true
			if again, c := r.appendChunk(nil, it.e.ID, it.data, cmp.Or(rp.Codec, chunk.Zstd)); len(again) < len(stored) {
				rp.Stats.Recompressed++
				rp.Stats.RecompSaved += int64(len(stored) - len(again))
				stored, codec, settled = again, c, false
			}
		}
		if rp.pack.Len() > 0 && rp.pack.Len()+len(stored) > RepackTarget {
			if err := rp.store(ctx); err != nil {
				return err
			}
		}
		loc, err := rp.pack.Add(it.e.ID, stored, codec)
		if err != nil {
			return err
		}
		rp.pack.entries[len(rp.pack.entries)-1].Settled = settled
		rp.Stats.Written += int64(len(stored))
		rp.Stats.Moved++
		moves = append(moves, Move{ID: it.e.ID, From: it.e.Loc.Off, To: loc})
	}
	rp.pending = append(rp.pending, pendingMove{p: p, moves: moves})
	if rp.pack.Len() == 0 {
		return rp.finish(ctx)
	}
	return nil
}

// Flush stores the pack being filled and deletes every old pack whose
// chunks are now all stored elsewhere.
func (rp *Repacker) Flush(ctx context.Context) error {
	if rp.pack.Len() > 0 {
		if err := rp.store(ctx); err != nil {
			return err
		}
	}
	return rp.finish(ctx)
}

// store writes and announces the pack being filled, then finishes the old
// packs waiting for it.
func (rp *Repacker) store(ctx context.Context) error {
	if err := rp.r.PutPack(ctx, rp.pack); err != nil {
		return err
	}
	rp.Stats.NewPacks++
	if rp.Announce != nil {
		if err := rp.Announce(ctx, rp.pack); err != nil {
			return err
		}
	}
	if err := rp.step("packed", rp.pack.ID); err != nil {
		return err
	}
	rp.pack.Reset()
	return rp.finish(ctx)
}

// finish writes the records of the waiting old packs and deletes them.
// Called only when no chunk of theirs is left in the pack being filled.
func (rp *Repacker) finish(ctx context.Context) error {
	for len(rp.pending) > 0 {
		pm := rp.pending[0]
		if len(pm.moves) > 0 {
			if err := rp.r.putMoves(ctx, pm.p, rp.gen, pm.moves); err != nil {
				return err
			}
			if err := rp.step("moved", pm.p); err != nil {
				return err
			}
		}
		if err := rp.r.DeletePack(ctx, pm.p); err != nil {
			return err
		}
		if err := rp.step("deleted", pm.p); err != nil {
			return err
		}
		rp.Stats.Packs++
		if rp.Done != nil {
			if err := rp.Done(ctx, pm.p); err != nil {
				return err
			}
		}
		rp.pending = rp.pending[1:]
	}
	return nil
}

func (rp *Repacker) step(name string, p chunk.PackID) error {
	if rp.Step == nil {
		return nil
	}
	return rp.Step(name, p)
}
