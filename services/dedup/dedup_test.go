package dedup

import (
	"context"
	"testing"

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
