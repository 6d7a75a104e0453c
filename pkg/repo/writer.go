package repo

import (
	"context"
	"fmt"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
)

// Writer stores the chunks a backup hands it, and is the only place that
// decides how: each on its own object (the loose layout, and repairs in
// any layout) or many to a pack that it writes and announces (the packed
// layout). A transfer worker keeps one for its life (it keeps the worker's
// pack buffers) and opens a Placement per segment. Safe for concurrent
// use.
type Writer struct {
	r       *Repository
	uploads int
	// announce tells the chunk index of a stored pack; called before the
	// pack's chunks are reported placed, so an index that misses it costs
	// a duplicate later, never a loss.
	announce func(ctx context.Context, ann *contracts.PackStored) error
	// free pack buffers: a writer keeps its own few, not a sync.Pool,
	// which every garbage collection empties (growing and clearing a fresh
	// 16 MiB buffer per batch cost more CPU than packing saved).
	packs chan *Pack
}

// NewWriter returns a writer that encodes up to uploads chunks at once
// (and stores as many loose chunks at once), keeps up to buffers pack
// buffers for reuse, and announces each pack it stores with announce (nil:
// nobody to tell).
func (r *Repository) NewWriter(uploads, buffers int, announce func(ctx context.Context, ann *contracts.PackStored) error) *Writer {
	return &Writer{r: r, uploads: max(1, uploads), announce: announce, packs: make(chan *Pack, max(1, buffers))}
}

// Encoded loose chunks reuse their buffers: allocating them anew cost a
// tenth of a full backup's CPU in zeroing alone (profile of strata dev on
// the synthetic disk).
var encodedPool = sync.Pool{New: func() any { return new([]byte) }}

// Placement is where one segment's chunks are stored. Not safe for
// concurrent use; Wait before reading Where for the last time.
type Placement struct {
	w *Writer
	// locs: in a packed repository, the chunks of the segment known to be
	// in a pack (nil in a loose one: every chunk is where its id says).
	locs map[chunk.ID]chunk.Loc
	// packs being written while the caller goes on (Store with overlap):
	// at most two at once, waited for by Wait.
	writes *errgroup.Group
}

// Placement starts the placement of one segment.
func (w *Writer) Placement() *Placement {
	p := &Placement{w: w, writes: new(errgroup.Group)}
	p.writes.SetLimit(2)
	if w.r.Packed() {
		p.locs = map[chunk.ID]chunk.Loc{}
	}
	return p
}

// PutsFirst reports whether new chunks can be stored with a conditional
// write each before anyone is asked whether they exist (each chunk is an
// object of its own named by its id: the loose layout).
func (p *Placement) PutsFirst() bool { return p.locs == nil }

// Locate records that id is stored at loc (the parent backup's location of
// the same chunk, or the chunk index's answer). A location outside a pack
// says nothing a loose id does not.
func (p *Placement) Locate(id chunk.ID, loc chunk.Loc) {
	if p.locs != nil && loc.InPack() {
		p.locs[id] = loc
	}
}

// Placed reports whether this segment already placed id in a pack (an
// earlier batch stored it, or Locate said where it is).
func (p *Placement) Placed(id chunk.ID) bool {
	_, ok := p.locs[id]
	return ok
}

// Where returns id's pack location, if it has one.
func (p *Placement) Where(id chunk.ID) (chunk.Loc, bool) {
	l, ok := p.locs[id]
	return l, ok
}

// PutIfAbsent stores each chunk data[i] (ids[i]) on its own with a
// conditional write, encoded with c. sizes[i] is its stored size, or 0
// when the store held it already (left as it was). Only where PutsFirst.
func (p *Placement) PutIfAbsent(ctx context.Context, ids []chunk.ID, data [][]byte, c chunk.Codec) (sizes []int, err error) {
	return p.putLoose(ctx, ids, data, c, true)
}

// Store stores the chunks data[i] (ids[i]) the repository lacks, encoded
// with c: in a packed repository as one new pack, except those loose[i]
// (repairs, stored on their own); in a loose one each on its own.
// sizes[i] is each one's stored size. With overlap the pack is written
// while the caller goes on (Wait waits for it; at most two at once): the
// chunks' bytes are copied before Store returns, so data may be reused,
// and Where already answers for them.
func (p *Placement) Store(ctx context.Context, ids []chunk.ID, data [][]byte, loose []bool, c chunk.Codec, overlap bool) (sizes []int, err error) {
	if len(ids) != len(data) {
		return nil, fmt.Errorf("store: %d ids for %d chunks", len(ids), len(data))
	}
	if p.locs == nil {
		return p.putLoose(ctx, ids, data, c, false)
	}
	sizes = make([]int, len(ids))
	var lIDs, pIDs []chunk.ID
	var lData, pData [][]byte
	var lAt, pAt []int
	for i := range ids {
		if i < len(loose) && loose[i] {
			lIDs, lData, lAt = append(lIDs, ids[i]), append(lData, data[i]), append(lAt, i)
		} else {
			pIDs, pData, pAt = append(pIDs, ids[i]), append(pData, data[i]), append(pAt, i)
		}
	}
	if len(lIDs) > 0 {
		ls, err := p.putLoose(ctx, lIDs, lData, c, false)
		if err != nil {
			return nil, err
		}
		for k, n := range ls {
			sizes[lAt[k]] = n
		}
	}
	if len(pIDs) == 0 {
		return sizes, nil
	}
	pack := p.w.getPack()
	if err := p.w.r.PackChunks(pack, pIDs, pData, c, p.w.uploads); err != nil {
		p.w.putPack(pack)
		return nil, err
	}
	// The chunks are in the pack's buffer now, and where they will be is
	// known before the pack is written.
	ann := pack.Announcement()
	for k, e := range pack.Entries() {
		p.locs[e.ID] = e.Loc
		sizes[pAt[k]] = int(e.Loc.Len)
	}
	write := func() error {
		defer p.w.putPack(pack)
		if err := p.w.r.PutPack(ctx, pack); err != nil {
			return err
		}
		if p.w.announce == nil {
			return nil
		}
		return p.w.announce(ctx, ann)
	}
	if !overlap {
		return sizes, write()
	}
	// Writing a pack (10–60 ms per 16 MiB: a directory store's O_DIRECT
	// write and fsync, an S3 PUT) overlaps what the caller does next.
	p.writes.Go(write)
	return sizes, nil
}

// Wait waits for the packs Store is still writing.
func (p *Placement) Wait() error { return p.writes.Wait() }

// putLoose stores chunks on their own, uploads at a time.
func (p *Placement) putLoose(ctx context.Context, ids []chunk.ID, data [][]byte, c chunk.Codec, ifAbsent bool) ([]int, error) {
	if len(ids) != len(data) {
		return nil, fmt.Errorf("store: %d ids for %d chunks", len(ids), len(data))
	}
	r := p.w.r
	sizes := make([]int, len(ids))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(p.w.uploads)
	for i := range ids {
		g.Go(func() error {
			enc := encodedPool.Get().(*[]byte)
			defer encodedPool.Put(enc)
			stored := r.AppendChunk((*enc)[:0], ids[i], data[i], c)
			*enc = stored[:0] // keep the grown buffer (a sealed chunk is its own)
			created := true
			var err error
			if ifAbsent {
				created, err = r.Chunks.PutChunkIfAbsent(gctx, ids[i], stored)
			} else {
				err = r.Chunks.PutChunk(gctx, ids[i], stored)
			}
			if err != nil {
				return fmt.Errorf("upload chunk %s: %w", ids[i], err)
			}
			if created {
				sizes[i] = len(stored) // each goroutine its own element
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return sizes, nil
}

func (w *Writer) getPack() *Pack {
	select {
	case p := <-w.packs:
		p.Reset()
		return p
	default:
		return NewPack()
	}
}

func (w *Writer) putPack(p *Pack) {
	select {
	case w.packs <- p:
	default: // enough kept: let it go
	}
}
