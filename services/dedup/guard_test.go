package dedup

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/testserver"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/objstore"
)

// allPresent is a chunk store that holds everything.
type allPresent struct{}

func (allPresent) Missing(context.Context, []chunk.ID) ([]chunk.ID, error) { return nil, nil }

// guardBuckets starts a real nats-server with the catalog and holds
// buckets; the context ends with the test.
func guardBuckets(t *testing.T) (context.Context, jetstream.KeyValue, jetstream.Stream, jetstream.KeyValue) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	nc, err := nats.Connect(testserver.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	catalog, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: contracts.BucketCatalog})
	if err != nil {
		t.Fatal(err)
	}
	holds, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: contracts.BucketGCHolds})
	if err != nil {
		t.Fatal(err)
	}
	catalogStream, err := js.Stream(ctx, "KV_"+contracts.BucketCatalog)
	if err != nil {
		t.Fatal(err)
	}
	return ctx, catalog, catalogStream, holds
}

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

// The sweep-phase protocol between dedup and the collector, on a real
// nats-server: a condemned chunk dedup answers "present" is held (the
// collector's claim then fails); a chunk the collector claimed is answered
// "missing" only after its deletion is done; others are untouched.
func TestGCGuardHoldsAndWaitsForDeletes(t *testing.T) {
	ctx, catalog, catalogStream, holds := guardBuckets(t)
	store := objstore.NewMem()
	held, claimed, spared := chunk.Hash([]byte("held")), chunk.Hash([]byte("claimed")), chunk.Hash([]byte("spared"))
	store.Put(ctx, "gc/g1.condemned", append(held[:], claimed[:]...))
	lock, _ := json.Marshal(contracts.GCLock{ID: "g1", Phase: "sweep", Condemned: "gc/g1.condemned", Since: time.Now()})
	catalog.Put(ctx, contracts.GCLockKey, lock)
	d := &Index{chunks: allPresent{}, cache: NewPresentCache(16), bad: map[chunk.ID]bool{},
		gc: &gcGuard{catalogStream: catalogStream, holds: holds, store: store}}
	ask := func(ids ...chunk.ID) []string { return askMissing(t, ctx, d, ids...) }

	if missing := ask(held, spared); len(missing) != 0 {
		t.Fatalf("present chunks answered missing: %v", missing)
	}
	if _, err := holds.Create(ctx, contracts.GCHoldKey("g1", held.String()), []byte(contracts.GCDeleting)); err == nil {
		t.Fatal("the collector could claim a chunk dedup had just answered present")
	}
	if _, err := holds.Get(ctx, contracts.GCHoldKey("g1", spared.String())); err == nil {
		t.Fatal("a chunk that was not condemned got a hold")
	}

	if _, err := holds.Create(ctx, contracts.GCHoldKey("g1", claimed.String()), []byte(contracts.GCDeleting)); err != nil {
		t.Fatal(err)
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
	holds.Put(ctx, contracts.GCHoldKey("g1", claimed.String()), []byte(contracts.GCDeleted))
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
	ctx, catalog, catalogStream, holds := guardBuckets(t)
	kept, doomed := chunk.Hash([]byte("kept")), chunk.Hash([]byte("doomed"))
	chunks := &storeSet{present: map[chunk.ID]bool{kept: true, doomed: true}}
	cache := NewPresentCache(16)
	d := &Index{chunks: chunks, cache: cache, bad: map[chunk.ID]bool{},
		gc: &gcGuard{catalogStream: catalogStream, holds: holds, store: objstore.NewMem(), forget: cache.Reset}}
	ask := func(ids ...chunk.ID) []string { return askMissing(t, ctx, d, ids...) }
	if m := ask(kept, doomed); len(m) != 0 {
		t.Fatalf("stored chunks answered missing: %v", m)
	}
	if m := ask(kept, doomed); len(m) != 0 || chunks.lookups != 2 {
		t.Fatalf("unchanged lock: answered %v after %d store lookups, want the cache to answer (2 lookups)", m, chunks.lookups)
	}
	// A whole collection between two requests: lock taken, chunk deleted,
	// lock released.
	lock, _ := json.Marshal(contracts.GCLock{ID: "g2", Phase: "mark", Since: time.Now()})
	if _, err := catalog.Put(ctx, contracts.GCLockKey, lock); err != nil {
		t.Fatal(err)
	}
	chunks.mu.Lock()
	delete(chunks.present, doomed)
	chunks.mu.Unlock()
	if err := catalog.Delete(ctx, contracts.GCLockKey); err != nil {
		t.Fatal(err)
	}
	if m := ask(kept, doomed); !slices.Equal(m, []string{doomed.String()}) {
		t.Fatalf("after a collection deleted it, the chunk was answered %v, want missing", m)
	}
}
