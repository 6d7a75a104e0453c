package repo

import (
	"context"
	"testing"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/objstore"
)

func TestCheckChunks(t *testing.T) {
	ctx := context.Background()
	store := objstore.NewMem()
	r, err := Open(ctx, store, 64<<10, nil)
	if err != nil {
		t.Fatal(err)
	}
	put := func(s string) chunk.ID {
		id := r.ChunkID([]byte(s))
		r.Chunks.PutChunk(ctx, id, r.EncodeChunk(id, []byte(s)))
		return id
	}
	good, corrupt := put("good chunk"), put("corrupt chunk")
	obj, _ := store.Get(ctx, ChunkKey(corrupt))
	obj[len(obj)-1] ^= 1
	store.Put(ctx, ChunkKey(corrupt), obj)
	missing := r.ChunkID([]byte("never stored"))

	res, err := CheckChunks(ctx, r, Refs([]chunk.ID{good, corrupt, missing, chunk.Zero}, nil), 4)
	if err != nil {
		t.Fatal(err)
	}
	if res.Checked != 1 || res.Bytes != int64(len("good chunk")) || len(res.Bad) != 2 || res.Bad[corrupt] == "" || res.Bad[missing] == "" {
		t.Fatalf("result %+v", res)
	}
}
