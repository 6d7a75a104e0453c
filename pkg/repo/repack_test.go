package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/objstore"
)

// packWith stores a pack of n compressible chunks encoded with c.
func packWith(t *testing.T, r *Repository, n int, c chunk.Codec, tag string) (*Pack, [][]byte) {
	t.Helper()
	p := NewPack()
	var datas [][]byte
	for i := range n {
		// text-like: zstd compresses it better than S2 does
		rng := rand.New(rand.NewPCG(uint64(i), uint64(len(tag))))
		words := []string{"restore", "backup", "pack", "chunk", "manifest", "verify", tag, fmt.Sprint(i)}
		var buf bytes.Buffer
		for buf.Len() < 8000 {
			buf.WriteString(words[rng.IntN(len(words))])
			buf.WriteByte(" \n"[rng.IntN(2)])
		}
		data := buf.Bytes()
		if _, err := r.AddChunk(p, r.ChunkID(data), data, c); err != nil {
			t.Fatal(err)
		}
		datas = append(datas, data)
	}
	if err := r.PutPack(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	return p, datas
}

// liveOf is the live map of the entries at idx.
func liveOf(p *Pack, idx ...int) map[uint32]uint32 {
	m := map[uint32]uint32{}
	for _, i := range idx {
		e := p.Entries()[i]
		m[e.Loc.Off] = e.Loc.Len
	}
	return m
}

// mustRead reads entry i of p where p put it, as a manifest made before
// any move names it, alone and as a run.
func mustRead(t *testing.T, r *Repository, p *Pack, datas [][]byte, idx ...int) {
	t.Helper()
	ctx := context.Background()
	var refs []chunk.Ref
	for _, i := range idx {
		e := p.Entries()[i]
		got, err := r.ReadChunk(ctx, e.ID, e.Loc)
		if err != nil || !bytes.Equal(got, datas[i]) {
			t.Fatalf("chunk %d of pack %s at its old place: %v", i, p.ID, err)
		}
		refs = append(refs, chunk.Ref{ID: e.ID, Loc: e.Loc})
	}
	// A restore reads runs of contiguous chunks with one request.
	for i := 0; i < len(refs); {
		j := i + 1
		for j < len(refs) && Contiguous(refs[j-1].Loc, refs[j].Loc) {
			j++
		}
		got, err := r.ReadRun(ctx, refs[i:j])
		if err != nil {
			t.Fatalf("run %d-%d of pack %s: %v", i, j, p.ID, err)
		}
		for k := range got {
			if !bytes.Equal(got[k], datas[idx[i+k]]) {
				t.Fatalf("run: chunk %d differs", idx[i+k])
			}
		}
		i = j
	}
}

func TestRepackMovesLiveChunksAndOldLocationsStillRead(t *testing.T) {
	for _, keys := range []*Keys{nil, testKeys(t, 9)} {
		t.Run(fmt.Sprint("encrypted=", keys != nil), func(t *testing.T) {
			ctx := context.Background()
			store := objstore.NewMem()
			r, err := OpenWith(ctx, store, Options{ChunkSize: 64 << 10, Keys: keys, Packs: true})
			if err != nil {
				t.Fatal(err)
			}
			a, aData := packWith(t, r, 8, chunk.S2, "a")
			b, bData := packWith(t, r, 8, chunk.Zstd, "b")
			var announced []*Pack
			var deleted []chunk.PackID
			rp := r.NewRepacker("gc1")
			rp.Recompress = true
			rp.Announce = func(_ context.Context, p *Pack) error {
				announced = append(announced, &Pack{ID: p.ID, entries: append([]PackEntry(nil), p.Entries()...)})
				return nil
			}
			rp.Done = func(_ context.Context, p chunk.PackID) error { deleted = append(deleted, p); return nil }
			if err := rp.Repack(ctx, a.ID, liveOf(a, 0, 2, 4, 6)); err != nil {
				t.Fatal(err)
			}
			if err := rp.Repack(ctx, b.ID, liveOf(b, 0, 1)); err != nil {
				t.Fatal(err)
			}
			// Nothing is deleted before the chunks are stored elsewhere.
			if len(deleted) != 0 {
				t.Fatalf("deleted %v before the new pack was stored", deleted)
			}
			if err := rp.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if len(deleted) != 2 || len(announced) != 1 || rp.Stats.Moved != 6 || rp.Stats.Recompressed != 4 || rp.Stats.RecompSaved <= 0 {
				t.Fatalf("deleted %v, announced %d, stats %+v", deleted, len(announced), rp.Stats)
			}
			for _, p := range []chunk.PackID{a.ID, b.ID} {
				if _, err := store.Stat(ctx, PackKey(p)); !errors.Is(err, objstore.ErrNotFound) {
					t.Fatalf("old pack %s still stored: %v", p, err)
				}
				if ok, err := r.PackPresent(ctx, p); err != nil || !ok {
					t.Fatalf("moved pack %s not present: %v", p, err)
				}
			}
			mustRead(t, r, a, aData, 0, 2, 4, 6)
			mustRead(t, r, b, bData, 0, 1)
			// A dead chunk of a compacted pack is gone.
			if _, err := r.ReadChunk(ctx, a.Entries()[1].ID, a.Entries()[1].Loc); !errors.Is(err, objstore.ErrNotFound) {
				t.Fatalf("dead chunk read: %v", err)
			}
			// The new pack's trailer names every codec: nothing S2 is left.
			q := announced[0]
			index, err := r.PackIndex(ctx, q.ID, 0)
			if err != nil || len(index) != 6 {
				t.Fatalf("new pack index %v: %v", index, err)
			}
			for _, e := range index {
				if e.Codec != chunk.Zstd {
					t.Fatalf("chunk %s in the new pack: codec %v", e.ID, e.Codec)
				}
			}

			// Compacted again: reads made before the first move follow two.
			rp2 := r.NewRepacker("gc2")
			if err := rp2.Repack(ctx, q.ID, liveOf(q, 0, 2)); err != nil { // a's chunks 0 and 4
				t.Fatal(err)
			}
			if err := rp2.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			mustRead(t, r, a, aData, 0, 4)
			// A fresh reader (nothing cached) finds them too.
			fresh, err := Open(ctx, store, 64<<10, keys)
			if err != nil {
				t.Fatal(err)
			}
			mustRead(t, fresh, a, aData, 0, 4)
		})
	}
}

// A collection stopped before, between and after each step leaves every
// live chunk readable, and a rerun finishes the job; a chunk referenced
// between the stop and the rerun is moved by the rerun under a record of
// its own.
func TestRepackStoppedAtEveryStep(t *testing.T) {
	for _, stop := range []string{"packed", "moved", "deleted"} {
		t.Run(stop, func(t *testing.T) {
			ctx := context.Background()
			store := objstore.NewMem()
			r, err := OpenWith(ctx, store, Options{ChunkSize: 64 << 10, Packs: true})
			if err != nil {
				t.Fatal(err)
			}
			a, aData := packWith(t, r, 6, chunk.S2, "a")
			errStop := errors.New("stopped")
			rp := r.NewRepacker("gc1")
			rp.Step = func(step string, _ chunk.PackID) error {
				if step == stop {
					return errStop
				}
				return nil
			}
			err = rp.Repack(ctx, a.ID, liveOf(a, 0, 3))
			if err == nil {
				err = rp.Flush(ctx)
			}
			if !errors.Is(err, errStop) {
				t.Fatalf("repack stopped at %s: %v", stop, err)
			}
			mustRead(t, r, a, aData, 0, 3)

			// Meanwhile a backup deduplicated against chunk 5 of a.
			rerun := r.NewRepacker("gc2")
			if err := rerun.Repack(ctx, a.ID, liveOf(a, 0, 3, 5)); err != nil && stop != "deleted" {
				t.Fatal(err)
			} else if err := rerun.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if stop == "deleted" {
				return // the pack was gone already; its chunks follow its record
			}
			if _, err := store.Stat(ctx, PackKey(a.ID)); !errors.Is(err, objstore.ErrNotFound) {
				t.Fatalf("pack still stored after the rerun: %v", err)
			}
			mustRead(t, r, a, aData, 0, 3, 5)
			fresh, _ := Open(ctx, store, 64<<10, nil)
			mustRead(t, fresh, a, aData, 0, 3, 5)
			want := 1 // the rerun copied only chunk 5
			if stop == "packed" {
				want = 3 // the first copy had no record: all again
			}
			if rerun.Stats.Moved != want {
				t.Fatalf("rerun moved %d chunks, want %d", rerun.Stats.Moved, want)
			}
		})
	}
}

func TestRepackLeavesAPackWithABadLiveChunk(t *testing.T) {
	ctx := context.Background()
	store := objstore.NewMem()
	r, err := OpenWith(ctx, store, Options{ChunkSize: 64 << 10, Packs: true})
	if err != nil {
		t.Fatal(err)
	}
	a, aData := packWith(t, r, 4, chunk.Zstd, "a")
	obj, _ := store.Get(ctx, PackKey(a.ID))
	obj[a.Entries()[2].Loc.Off+20] ^= 0xff
	store.Put(ctx, PackKey(a.ID), obj)
	rp := r.NewRepacker("gc1")
	if err := rp.Repack(ctx, a.ID, liveOf(a, 0, 2)); !errors.Is(err, ErrNotRepacked) {
		t.Fatalf("repack of a pack with a bad live chunk: %v", err)
	}
	// A reference the trailer does not list is refused the same way.
	if err := rp.Repack(ctx, a.ID, map[uint32]uint32{1: 5}); !errors.Is(err, ErrNotRepacked) {
		t.Fatalf("repack of a range the trailer does not list: %v", err)
	}
	if err := rp.Flush(ctx); err != nil || rp.Stats.Packs != 0 {
		t.Fatalf("flush: %v, %+v", err, rp.Stats)
	}
	mustRead(t, r, a, aData, 0)
}

// A moved record decodes only when whole and checked; whatever decodes
// encodes back to the same bytes.
func FuzzDecodeMoves(f *testing.F) {
	f.Add(encodeMoves([]Move{{ID: chunk.Hash([]byte("a")), From: 7, To: chunk.Loc{Pack: NewPack().ID, Off: 1, Len: 2}}}))
	f.Add([]byte(movedMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		moves, err := decodeMoves(b)
		if err != nil {
			return
		}
		if again := encodeMoves(moves); !bytes.Equal(again, b) {
			t.Fatalf("decoded %d moves that encode to other bytes", len(moves))
		}
	})
}
