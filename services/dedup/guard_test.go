package dedup

import (
	"context"
	"encoding/json"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/testserver"
)

// allPresent is a chunk store that holds everything.
type allPresent struct{}

func (allPresent) Missing(context.Context, []chunk.ID) ([]chunk.ID, error) { return nil, nil }

// The sweep-phase protocol between dedup and the collector, on a real
// nats-server: a condemned chunk dedup answers "present" is held (the
// collector's claim then fails); a chunk the collector claimed is answered
// "missing" only after its deletion is done; others are untouched.
func TestGCGuardHoldsAndWaitsForDeletes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, err := nats.Connect(testserver.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	catalog, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: contracts.BucketCatalog})
	if err != nil {
		t.Fatal(err)
	}
	holds, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: contracts.BucketGCHolds})
	if err != nil {
		t.Fatal(err)
	}
	store := objstore.NewMem()
	held, claimed, spared := chunk.Hash([]byte("held")), chunk.Hash([]byte("claimed")), chunk.Hash([]byte("spared"))
	store.Put(ctx, "gc/g1.condemned", append(held[:], claimed[:]...))
	lock, _ := json.Marshal(contracts.GCLock{ID: "g1", Phase: "sweep", Condemned: "gc/g1.condemned", Since: time.Now()})
	catalog.Put(ctx, contracts.GCLockKey, lock)
	d := &Index{chunks: allPresent{}, cache: NewPresentCache(16), bad: map[chunk.ID]bool{},
		gc: &gcGuard{catalog: catalog, holds: holds, store: store}}
	ask := func(ids ...chunk.ID) []string {
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
