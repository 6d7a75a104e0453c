package repo

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/objstore"
)

func writerChunks(n int, tag string) ([]chunk.ID, [][]byte) {
	var ids []chunk.ID
	var data [][]byte
	for i := range n {
		d := bytes.Repeat([]byte(fmt.Sprintf("%s chunk %d ", tag, i)), 900)
		data = append(data, d)
		ids = append(ids, chunk.Hash(d))
	}
	return ids, data
}

// The writer alone decides the layout: the same calls store loose chunks in
// a loose repository and packs (announced, repairs on their own) in a
// packed one; every chunk reads back from where the placement says.
func TestWriterPlacesChunksByLayout(t *testing.T) {
	for _, packed := range []bool{false, true} {
		for _, overlap := range []bool{false, true} {
			t.Run(fmt.Sprintf("packed=%v/overlap=%v", packed, overlap), func(t *testing.T) {
				ctx := context.Background()
				store := objstore.NewMem()
				r, err := OpenWith(ctx, store, Options{ChunkSize: 64 << 10, Packs: packed})
				if err != nil {
					t.Fatal(err)
				}
				var mu sync.Mutex
				var announced []*contracts.PackStored
				w := r.NewWriter(3, 1, func(_ context.Context, ann *contracts.PackStored) error {
					mu.Lock()
					defer mu.Unlock()
					announced = append(announced, ann)
					return nil
				})
				pl := w.Placement()
				if pl.PutsFirst() == packed {
					t.Fatalf("PutsFirst = %v in a packed=%v repository", pl.PutsFirst(), packed)
				}
				ids, data := writerChunks(6, "w")
				loose := []bool{false, true, false, false, false, false} // chunk 1: a repair
				sizes, err := pl.Store(ctx, ids, data, loose, chunk.Zstd, overlap)
				if err != nil {
					t.Fatal(err)
				}
				// The caller may reuse its buffers once Store returns.
				keep := make([][]byte, len(data))
				for i, d := range data {
					keep[i] = bytes.Clone(d)
					clear(d)
				}
				if err := pl.Wait(); err != nil {
					t.Fatal(err)
				}
				for i, id := range ids {
					if sizes[i] <= 0 {
						t.Fatalf("chunk %d: stored size %d", i, sizes[i])
					}
					loc, inPack := pl.Where(id)
					if want := packed && !loose[i]; inPack != want || pl.Placed(id) != want {
						t.Fatalf("chunk %d: in a pack %v, want %v", i, inPack, want)
					}
					got, err := r.ReadChunk(ctx, id, loc)
					if err != nil || !bytes.Equal(got, keep[i]) {
						t.Fatalf("chunk %d reads back %v", i, err)
					}
				}
				if packed && (len(announced) != 1 || len(announced[0].Chunks) != 5) {
					t.Fatalf("announced %v, want one pack of the 5 packed chunks", announced)
				}
				if !packed && len(announced) != 0 {
					t.Fatalf("a loose repository announced packs: %v", announced)
				}
				// A location from elsewhere (the parent, the index) is kept
				// only where packs exist.
				other, _ := writerChunks(1, "other")
				pl.Locate(other[0], chunk.Loc{Pack: NewPack().ID, Off: 1, Len: 2})
				if pl.Placed(other[0]) != packed {
					t.Fatalf("Locate in packed=%v: placed %v", packed, pl.Placed(other[0]))
				}
			})
		}
	}
}

// PutIfAbsent writes only what the store lacks and says which it held.
func TestWriterPutIfAbsent(t *testing.T) {
	ctx := context.Background()
	r, err := OpenWith(ctx, objstore.NewMem(), Options{ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	ids, data := writerChunks(4, "p")
	pl := r.NewWriter(2, 1, nil).Placement()
	if _, err := pl.PutIfAbsent(ctx, ids[:2], data[:2], chunk.S2); err != nil {
		t.Fatal(err)
	}
	sizes, err := pl.PutIfAbsent(ctx, ids, data, chunk.S2)
	if err != nil {
		t.Fatal(err)
	}
	if sizes[0] != 0 || sizes[1] != 0 || sizes[2] == 0 || sizes[3] == 0 {
		t.Fatalf("sizes %v: want the first two held already", sizes)
	}
	for i, id := range ids {
		if got, err := r.Chunks.GetChunk(ctx, id); err != nil || !bytes.Equal(got, data[i]) {
			t.Fatalf("chunk %d: %v", i, err)
		}
	}
	if _, err := pl.Store(ctx, ids[:1], nil, nil, chunk.S2, false); err == nil {
		t.Fatal("ids without their bytes were accepted")
	}
}
