package dedup

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/repo"
)

// packOf is a pack as the content layer's writer stored it.
type packOf struct {
	ID      chunk.PackID
	entries []repo.PackEntry
}

func (p packOf) Entries() []repo.PackEntry { return p.entries }

// storePack stores n new chunks as a transfer worker does: through the
// content layer's writer, as one pack.
func storePack(t *testing.T, ctx context.Context, r *repo.Repository, seed, n int) packOf {
	t.Helper()
	var ids []chunk.ID
	var data [][]byte
	for i := range n {
		d := []byte(fmt.Sprintf("pack %d chunk %d", seed, i))
		ids, data = append(ids, r.ChunkID(d)), append(data, d)
	}
	pl := r.NewWriter(1, 1, nil).Placement()
	if _, err := pl.Store(ctx, ids, data, nil, chunk.Zstd, false); err != nil {
		t.Fatal(err)
	}
	var p packOf
	for _, id := range ids {
		loc, ok := pl.Where(id)
		if !ok {
			t.Fatalf("chunk %s not placed in a pack", id)
		}
		p.ID = loc.Pack
		p.entries = append(p.entries, repo.PackEntry{ID: id, Loc: loc})
	}
	return p
}

// packedRepo is a packed repository in memory.
func packedRepo(t *testing.T) *repo.Repository {
	r, err := repo.OpenWith(context.Background(), objstore.NewMem(), repo.Options{ChunkSize: 64 << 10, Packs: true})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// fakeLocator is an index in memory (packindex has its own tests).
type fakeLocator map[chunk.ID]chunk.Loc

func (f fakeLocator) add(entries []repo.PackEntry) {
	for _, e := range entries {
		f[e.ID] = e.Loc
	}
}

func (f fakeLocator) Lookup(ids []chunk.ID) ([]chunk.Loc, []bool, error) {
	locs, found := make([]chunk.Loc, len(ids)), make([]bool, len(ids))
	for i, id := range ids {
		locs[i], found[i] = f[id]
	}
	return locs, found, nil
}

// Dedup in a packed repository answers from the index: located chunks
// with where they are, unknown ones missing, and no request to the store.
func TestMissingLocatesPackedChunks(t *testing.T) {
	ctx, r := context.Background(), packedRepo(t)
	x := fakeLocator{}
	p := storePack(t, ctx, r, 0, 3)
	x.add(p.Entries())
	d := &Index{cache: NewPresentCache(16), bad: map[chunk.ID]bool{}, packs: x, packExists: r.PackExists}
	bad := p.Entries()[2].ID
	d.setBad(bad, true)
	unknown := chunk.Hash([]byte("unknown"))
	req := &contracts.MissingRequest{Schema: contracts.SchemaVersion, IDs: []string{p.Entries()[0].ID.String(), unknown.String(), p.Entries()[1].ID.String(), bad.String()}}
	reply, err := d.Missing(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if err := reply.Validate(); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(reply.Missing) != fmt.Sprint([]string{bad.String(), unknown.String()}) || fmt.Sprint(reply.Loose) != fmt.Sprint([]string{bad.String()}) {
		t.Fatalf("missing %v loose %v", reply.Missing, reply.Loose)
	}
	if len(reply.Located) != 2 || len(reply.Packs) != 1 || reply.Packs[0] != p.ID.String() {
		t.Fatalf("located %+v in %v", reply.Located, reply.Packs)
	}
	for _, l := range reply.Located {
		e := p.Entries()[0]
		if l.ID == p.Entries()[1].ID.String() {
			e = p.Entries()[1]
		}
		if l.ID != e.ID.String() || l.Off != e.Loc.Off || l.Len != e.Loc.Len {
			t.Fatalf("located %+v, want %+v", l, e)
		}
	}
}

// A collection's sweep of packs, seen from dedup: a chunk located in a
// condemned pack holds the pack (the collector's claim then fails); one in
// a pack the collector claimed and deleted is answered missing; one in a
// pack that disappeared since it was indexed (deleted by a collection this
// instance never saw) is answered missing too, never located.
func TestLocateHoldsCondemnedPacksAndSkipsGoneOnes(t *testing.T) {
	eachGC(t, testLocateHoldsCondemnedPacksAndSkipsGoneOnes)
}

func testLocateHoldsCondemnedPacksAndSkipsGoneOnes(t *testing.T, ctx context.Context, gc testGC) {
	r := packedRepo(t)
	x := fakeLocator{}
	held, claimed, gone, spared := storePack(t, ctx, r, 0, 2), storePack(t, ctx, r, 1, 2), storePack(t, ctx, r, 2, 2), storePack(t, ctx, r, 3, 2)
	for _, p := range []packOf{held, claimed, gone, spared} {
		x.add(p.Entries())
	}
	r.DeletePack(ctx, gone.ID)
	r.Store.Put(ctx, "gc/g1-packs.condemned", append(append([]byte{}, held.ID[:]...), claimed.ID[:]...))
	if _, err := gc.Take(ctx, contracts.GCLock{ID: "g1", Phase: "sweep", CondemnedPacks: "gc/g1-packs.condemned", Since: time.Now()}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if ok, err := gc.Claim(ctx, "g1", repo.PackHold(claimed.ID)); err != nil || !ok {
		t.Fatalf("claim: %v %v", ok, err)
	}
	r.DeletePack(ctx, claimed.ID)
	gc.Deleted(ctx, "g1", repo.PackHold(claimed.ID))

	d := &Index{cache: NewPresentCache(16), bad: map[chunk.ID]bool{}, packs: x, packExists: r.PackExists}
	d.gc = &gcGuard{gc: gc, store: r.Store, forget: d.forget}
	var ids []chunk.ID
	for _, p := range []packOf{held, claimed, gone, spared} {
		ids = append(ids, p.Entries()[0].ID)
	}
	got := askMissing(t, ctx, d, ids...)
	if want := []string{ids[1].String(), ids[2].String()}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("missing %v, want the chunks of the deleted packs %v", got, want)
	}
	if ok, err := gc.Claim(ctx, "g1", repo.PackHold(held.ID)); err != nil || ok {
		t.Fatalf("the collector could claim a pack dedup had just located a chunk in: %v %v", ok, err)
	}
}
