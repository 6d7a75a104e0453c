package repo

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/objstore"
)

// sweepAll runs the content layer's side of a collection over shards
// (mark, candidates, free, flush; no condemnation: nothing runs beside it)
// and returns the units freed.
func sweepAll(t *testing.T, r *Repository, shards int, mans map[string]*manifest.Manifest, opts SweepOptions) (freed []Unit, s *Sweep) {
	t.Helper()
	ctx := context.Background()
	s, err := r.NewSweep(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	for sh := range shards {
		m := s.Mark(byte(sh*256/shards), (sh+1)*256/shards)
		for key, man := range mans {
			if err := m.Manifest(ctx, key, man); err != nil {
				t.Fatal(err)
			}
		}
		units, _, err := m.Candidates(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range units {
			if m.Needed(u) {
				continue
			}
			if err := s.Free(ctx, u, m); err != nil {
				t.Fatal(err)
			}
			freed = append(freed, u)
		}
		if err := s.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return freed, s
}

// One sweep over every kind of unit: dead chunk objects and dead packs are
// deleted, a sparse pack rewritten, a repair (a chunk object whose id a
// manifest names in a pack) and a full pack kept; every reference reads
// back, in shards or not, and a second sweep finds nothing to do.
func TestSweepFreesEveryKindOfUnit(t *testing.T) {
	for _, shards := range []int{1, 4} {
		t.Run(fmt.Sprint("shards=", shards), func(t *testing.T) {
			ctx := context.Background()
			r, err := OpenWith(ctx, objstore.NewMem(), Options{ChunkSize: 64 << 10, Packs: true})
			if err != nil {
				t.Fatal(err)
			}
			full, fullData := packWith(t, r, 6, chunk.Zstd, "full")
			sparse, sparseData := packWith(t, r, 8, chunk.Zstd, "sparse")
			dead, _ := packWith(t, r, 3, chunk.Zstd, "dead")
			repair := full.Entries()[0].ID
			if err := r.Chunks.PutChunk(ctx, repair, r.EncodeChunk(repair, fullData[0])); err != nil {
				t.Fatal(err)
			}
			loose := []byte("a chunk nothing references")
			deadID := r.ChunkID(loose)
			if err := r.Chunks.PutChunk(ctx, deadID, r.EncodeChunk(deadID, loose)); err != nil {
				t.Fatal(err)
			}
			var want [][]byte
			var ids []chunk.ID
			var locs []chunk.Loc
			for i, e := range full.Entries() {
				ids, locs, want = append(ids, e.ID), append(locs, e.Loc), append(want, fullData[i])
			}
			e := sparse.Entries()[5]
			ids, locs, want = append(ids, e.ID), append(locs, e.Loc), append(want, sparseData[5])
			man, err := manifest.FromIDs("b1", 0, 64<<10, int64(len(ids))*64<<10, ids, locs)
			if err != nil {
				t.Fatal(err)
			}
			mans := map[string]*manifest.Manifest{"m1": man}

			opts := SweepOptions{ID: "gc1", Cutoff: time.Now().Add(time.Hour), RepackBelow: 0.5}
			freed, first := sweepAll(t, r, shards, mans, opts)
			got := map[string]bool{}
			for _, u := range freed {
				got[fmt.Sprintf("%s pack=%v rewrite=%v", u.Name, u.IsPack(), u.Rewrite)] = true
			}
			for _, w := range []string{
				PackKey(dead.ID) + " pack=true rewrite=false",
				PackKey(sparse.ID) + " pack=true rewrite=true",
				ChunkKey(deadID) + " pack=false rewrite=false",
			} {
				if !got[w] {
					t.Errorf("not freed: %s (freed %v)", w, got)
				}
			}
			if len(freed) != 3 {
				t.Errorf("freed %v, want exactly the dead chunk, the dead pack and the sparse pack", got)
			}
			if st := first.Rewrites(); st.Moved != 1 || st.Packs != 1 || st.NewPacks != 1 {
				t.Errorf("rewrites %+v: want one chunk moved into one new pack", st)
			}
			for _, p := range []chunk.PackID{dead.ID, sparse.ID} {
				if ok, _ := r.PackExists(ctx, p); ok {
					t.Errorf("pack %s still stored", p)
				}
			}
			if _, err := r.Chunks.GetChunk(ctx, repair); err != nil {
				t.Errorf("the repair was deleted: %v", err)
			}
			for i, id := range ids {
				if b, err := r.ReadChunk(ctx, id, locs[i]); err != nil || string(b) != string(want[i]) {
					t.Fatalf("reference %d: %v", i, err)
				}
			}
			again, s := sweepAll(t, r, shards, mans, opts)
			if len(again) != 0 {
				t.Fatalf("a second sweep freed %d units", len(again))
			}
			// The moved record is named by the manifest: kept.
			if kept, deleted, err := s.DropMoved(ctx, false); err != nil || kept != 1 || deleted != 0 {
				t.Fatalf("DropMoved: kept %d deleted %d %v", kept, deleted, err)
			}
			// Once nothing names the compacted pack, its record goes too.
			_, s = sweepAll(t, r, shards, map[string]*manifest.Manifest{}, opts)
			if kept, deleted, err := s.DropMoved(ctx, false); err != nil || kept != 0 || deleted != 1 {
				t.Fatalf("DropMoved with no references: kept %d deleted %d %v", kept, deleted, err)
			}
		})
	}
}
