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

func TestMissingAnswersFromTheStoreAndCaches(t *testing.T) {
	ctx := context.Background()
	store := objstore.NewMem()
	r, _ := repo.Open(ctx, store, 64<<10, nil)
	a, b := []byte("a"), []byte("b")
	r.Chunks.PutChunk(ctx, chunk.Hash(a), chunk.Encode(a))
	d := &Index{chunks: r.Chunks, cache: NewPresentCache(10)}
	req := &contracts.MissingRequest{Schema: 1, IDs: []string{chunk.Hash(a).String(), chunk.Hash(b).String()}}
	reply, err := d.Missing(ctx, req)
	if err != nil || len(reply.Missing) != 1 || reply.Missing[0] != chunk.Hash(b).String() {
		t.Fatalf("Missing = %v %v, want only b", reply, err)
	}
	if !d.cache.Has(chunk.Hash(a)) || d.cache.Has(chunk.Hash(b)) {
		t.Fatal("cache must hold exactly the ids found present")
	}
}

func TestPresentCacheIsBounded(t *testing.T) {
	c := NewPresentCache(4)
	for i := 0; i < 100; i++ {
		c.Add(chunk.Hash([]byte{byte(i)}))
	}
	if n := len(c.young) + len(c.old); n > 8 {
		t.Fatalf("cache holds %d ids, limit 2×4", n)
	}
	if !c.Has(chunk.Hash([]byte{99})) {
		t.Fatal("newest id forgotten")
	}
}

// Dedup's answers through a whole collection, phase by phase, on ports in
// memory (no NATS): before it, answers from the store (and its cache);
// marking, the same, no hold taken; sweeping, a condemned chunk answered
// present is held first, one the collector claimed is answered missing
// only once deleted, a chunk found bad is always missing; after it, the
// cache of what was present is forgotten (the collection may have deleted
// any of it).
func TestAnswersDuringEachGCPhase(t *testing.T) {
	ctx := context.Background()
	r, err := repo.OpenWith(ctx, objstore.NewMem(), repo.Options{ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]chunk.ID{}
	for _, name := range []string{"kept", "held", "claimed", "bad", "cached"} {
		data := []byte("chunk " + name)
		ids[name] = r.ChunkID(data)
		r.Chunks.PutChunk(ctx, ids[name], r.EncodeChunk(ids[name], data))
	}
	absent := chunk.Hash([]byte("never stored"))
	gc := &memGC{}
	d := &Index{chunks: r.Chunks, cache: NewPresentCache(64), bad: map[chunk.ID]bool{}}
	d.gc = &gcGuard{gc: gc, store: r.Store, forget: d.forget}
	ask := func(names ...string) []string {
		t.Helper()
		var asked []chunk.ID
		for _, n := range names {
			if n == "absent" {
				asked = append(asked, absent)
			} else {
				asked = append(asked, ids[n])
			}
		}
		return askMissing(t, ctx, d, asked...)
	}
	want := func(phase string, got []string, names ...string) {
		t.Helper()
		var w []string
		for _, n := range names {
			if n == "absent" {
				w = append(w, absent.String())
			} else {
				w = append(w, ids[n].String())
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(w) {
			t.Fatalf("%s: missing %v, want %v", phase, got, w)
		}
	}

	want("no collection", ask("kept", "cached", "absent"), "absent")
	gc.Take(ctx, contracts.GCLock{ID: "g1", Phase: "mark", Since: time.Now()}, time.Hour)
	want("marking", ask("kept", "held", "claimed", "absent"), "absent")
	if s := gc.state("g1", ids["held"].String()); s != "" {
		t.Fatalf("a hold (%q) was taken while marking", s)
	}

	held, claimed := ids["held"], ids["claimed"]
	list := append(append([]byte{}, held[:]...), claimed[:]...)
	r.Store.Put(ctx, "gc/g1-00.condemned", list)
	gc.mu.Lock()
	gc.seq++
	gc.lock.Phase, gc.lock.Condemned = "sweep", "gc/g1-00.condemned"
	gc.mu.Unlock()
	d.setBad(ids["bad"], true)
	want("sweeping", ask("kept", "held", "bad", "cached"), "bad")
	if s := gc.state("g1", ids["held"].String()); s != contracts.GCHeld {
		t.Fatalf("a condemned chunk answered present is %q, want held", s)
	}
	if ok, _ := gc.Claim(ctx, "g1", ids["held"].String()); ok {
		t.Fatal("the collector claimed a chunk dedup holds")
	}
	if ok, _ := gc.Claim(ctx, "g1", ids["claimed"].String()); !ok {
		t.Fatal("claim refused")
	}
	answered := make(chan []string, 1)
	go func() { answered <- ask("claimed") }()
	select {
	case m := <-answered:
		t.Fatalf("answered %v while the collector was still deleting", m)
	case <-time.After(100 * time.Millisecond):
	}
	r.Chunks.Delete(ctx, ids["claimed"])
	gc.Deleted(ctx, "g1", ids["claimed"].String())
	want("swept", <-answered, "claimed")

	// A chunk dedup cached as present disappears (deleted by this
	// collection); once the lock is gone, the cache is forgotten.
	r.Chunks.Delete(ctx, ids["cached"])
	gc.Release(ctx)
	d.setBad(ids["bad"], false)
	want("after", ask("kept", "cached", "bad"), "cached")
}
