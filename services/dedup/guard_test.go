package dedup

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/objstore"
)

// allPresent is a chunk store that holds everything.
type allPresent struct{}

func (allPresent) Missing(context.Context, []chunk.ID) ([]chunk.ID, error) { return nil, nil }

// askMissing asks d which of ids are missing.
func askMissing(t *testing.T, ctx context.Context, d *Index, ids ...chunk.ID) []string {
	t.Helper()
	req := &contracts.MissingRequest{Schema: contracts.SchemaVersion}
	for _, id := range ids {
		req.IDs = append(req.IDs, id.String())
	}
	reply, err := d.Missing(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	return reply.Missing
}

// The sweep-phase protocol between dedup and the collector: a condemned chunk dedup answers "present" is held (the
// collector's claim then fails); a chunk the collector claimed is answered
// "missing" only after its deletion is done; others are untouched.
func TestGCGuardHoldsAndWaitsForDeletes(t *testing.T) { eachGC(t, testGCGuardHoldsAndWaitsForDeletes) }

func testGCGuardHoldsAndWaitsForDeletes(t *testing.T, ctx context.Context, gc testGC) {
	store := objstore.NewMem()
	held, claimed, spared := chunk.Hash([]byte("held")), chunk.Hash([]byte("claimed")), chunk.Hash([]byte("spared"))
	store.Put(ctx, "gc/g1.condemned", append(held[:], claimed[:]...))
	if _, err := gc.Take(ctx, contracts.GCLock{ID: "g1", Phase: "sweep", Condemned: "gc/g1.condemned", Since: time.Now()}, time.Hour); err != nil {
		t.Fatal(err)
	}
	d := &Index{chunks: allPresent{}, cache: NewPresentCache(16), bad: map[chunk.ID]bool{},
		gc: &gcGuard{gc: gc, store: store}}
	ask := func(ids ...chunk.ID) []string { return askMissing(t, ctx, d, ids...) }

	if missing := ask(held, spared); len(missing) != 0 {
		t.Fatalf("present chunks answered missing: %v", missing)
	}
	if claimed, err := gc.Claim(ctx, "g1", held.String()); err != nil || claimed {
		t.Fatalf("the collector could claim a chunk dedup had just answered present: %v %v", claimed, err)
	}
	if ok, err := gc.Claim(ctx, "g1", spared.String()); err != nil || !ok {
		t.Fatalf("a chunk that was not condemned got a hold: claim %v %v", ok, err)
	}

	if ok, err := gc.Claim(ctx, "g1", claimed.String()); err != nil || !ok {
		t.Fatalf("claim: %v %v", ok, err)
	}
	var deleted atomic.Bool
	answered := make(chan []string)
	go func() { answered <- ask(claimed) }()
	time.Sleep(300 * time.Millisecond)
	select {
	case m := <-answered:
		t.Fatalf("answered %v while the collector was still deleting", m)
	default:
	}
	deleted.Store(true)
	gc.Deleted(ctx, "g1", claimed.String())
	if m := <-answered; !slices.Equal(m, []string{claimed.String()}) || !deleted.Load() {
		t.Fatalf("claimed chunk answered %v", m)
	}
}

// storeSet is a chunk store holding the ids in present; it counts lookups.
type storeSet struct {
	mu      sync.Mutex
	present map[chunk.ID]bool
	lookups int
}

func (s *storeSet) Missing(_ context.Context, ids []chunk.ID) ([]chunk.ID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var missing []chunk.ID
	for _, id := range ids {
		s.lookups++
		if !s.present[id] {
			missing = append(missing, id)
		}
	}
	return missing, nil
}

// A collection this dedup instance never saw run — not one request during
// it — deletes a chunk the instance remembers as present: the next request
// after gc.lock changed forgets the cache and finds it missing. While the
// lock stays as it was, the cache answers.
func TestGCGuardForgetsCacheWhenLockChanged(t *testing.T) {
	eachGC(t, testGCGuardForgetsCacheWhenLockChanged)
}

func testGCGuardForgetsCacheWhenLockChanged(t *testing.T, ctx context.Context, gc testGC) {
	kept, doomed := chunk.Hash([]byte("kept")), chunk.Hash([]byte("doomed"))
	chunks := &storeSet{present: map[chunk.ID]bool{kept: true, doomed: true}}
	cache := NewPresentCache(16)
	d := &Index{chunks: chunks, cache: cache, bad: map[chunk.ID]bool{},
		gc: &gcGuard{gc: gc, store: objstore.NewMem(), forget: cache.Reset}}
	ask := func(ids ...chunk.ID) []string { return askMissing(t, ctx, d, ids...) }
	if m := ask(kept, doomed); len(m) != 0 {
		t.Fatalf("stored chunks answered missing: %v", m)
	}
	if m := ask(kept, doomed); len(m) != 0 || chunks.lookups != 2 {
		t.Fatalf("unchanged lock: answered %v after %d store lookups, want the cache to answer (2 lookups)", m, chunks.lookups)
	}
	// A whole collection between two requests: lock taken, chunk deleted,
	// lock released.
	if _, err := gc.Take(ctx, contracts.GCLock{ID: "g2", Phase: "mark", Since: time.Now()}, time.Hour); err != nil {
		t.Fatal(err)
	}
	chunks.mu.Lock()
	delete(chunks.present, doomed)
	chunks.mu.Unlock()
	if err := gc.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if m := ask(kept, doomed); !slices.Equal(m, []string{doomed.String()}) {
		t.Fatalf("after a collection deleted it, the chunk was answered %v, want missing", m)
	}
}
