package repo

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/objstore"
)

func TestChunkSizeFixedAtCreation(t *testing.T) {
	ctx := context.Background()
	store := objstore.NewMem()
	if _, err := Open(ctx, store, 1000, nil); err == nil {
		t.Fatal("a chunk size that is not a power of two was accepted")
	}
	r, err := Open(ctx, store, 256<<10, nil)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Open(ctx, store, 4<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	if again.Config.ChunkSize != 256<<10 || again.Config.ID != r.Config.ID {
		t.Fatalf("reopened repository changed: %+v", again.Config)
	}
}

func TestChunksAndManifests(t *testing.T) {
	ctx := context.Background()
	store := objstore.NewMem()
	r, _ := Open(ctx, store, 64<<10, nil)
	a, b := []byte("chunk a"), bytes.Repeat([]byte("b"), 1000)
	ida, idb := chunk.Hash(a), chunk.Hash(b)
	if err := r.Chunks.PutChunk(ctx, ida, chunk.Encode(a)); err != nil {
		t.Fatal(err)
	}
	missing, err := r.Chunks.Missing(ctx, []chunk.ID{ida, idb})
	if err != nil || len(missing) != 1 || missing[0] != idb {
		t.Fatalf("Missing = %v %v, want [b]", missing, err)
	}
	if got, err := r.Chunks.GetChunk(ctx, ida); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("GetChunk: %v", err)
	}
	if _, err := r.Chunks.GetChunk(ctx, idb); !errors.Is(err, objstore.ErrNotFound) || !strings.Contains(err.Error(), ChunkKey(idb)) {
		t.Fatalf("missing chunk error must name the object: %v", err)
	}
	// A corrupted chunk object is refused, naming the object.
	store.Put(ctx, ChunkKey(ida), chunk.Encode([]byte("chunk A")))
	if _, err := r.Chunks.GetChunk(ctx, ida); !errors.Is(err, chunk.ErrCorrupt) || !strings.Contains(err.Error(), ChunkKey(ida)) {
		t.Fatalf("corrupt chunk: %v", err)
	}

	m, _ := manifest.FromIDs("b1", 0, 64<<10, 100, []chunk.ID{ida}, nil)
	key, err := r.PutManifest(ctx, "vm/with slash", m)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(key, "/") != 3 {
		t.Fatalf("vm name not escaped in %q", key)
	}
	if _, err := r.GetManifest(ctx, key); err != nil {
		t.Fatal(err)
	}
	raw, _ := store.Get(ctx, key)
	raw[20] ^= 1
	store.Put(ctx, key, raw)
	if _, err := r.GetManifest(ctx, key); !errors.Is(err, manifest.ErrCorrupt) || !strings.Contains(err.Error(), key) {
		t.Fatalf("corrupt manifest: %v", err)
	}
}

// Creators racing on an empty store all end up with one repository: the
// first config stored, whatever each asked for.
func TestConcurrentCreationAgrees(t *testing.T) {
	ctx := context.Background()
	store := objstore.NewMem()
	ids := make(chan string, 16)
	sizes := make(chan int, 16)
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := Open(ctx, store, (64<<10)<<(i%4), nil)
			if err != nil {
				t.Error(err)
				return
			}
			ids <- r.Config.ID
			sizes <- r.Config.ChunkSize
		}()
	}
	wg.Wait()
	close(ids)
	close(sizes)
	first, size := <-ids, <-sizes
	for id := range ids {
		if id != first {
			t.Fatalf("two repositories created: %s and %s", first, id)
		}
	}
	for s := range sizes {
		if s != size {
			t.Fatalf("creators disagree on the chunk size: %d and %d", size, s)
		}
	}
}

func TestManifestSlice(t *testing.T) {
	ctx := context.Background()
	r, err := Open(ctx, objstore.NewMem(), 64<<10, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := manifest.New("0190e1a0-0000-7000-8000-000000000001", 0, 64<<10, 300*64<<10)
	for i := range int64(300) {
		m.Append(i, chunk.Ref{ID: chunk.Hash([]byte{byte(i), byte(i >> 8)})})
	}
	key, err := r.PutManifest(ctx, "vm", m)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := r.ManifestSlice(ctx, key, 256, 44)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range got {
		if id != m.ID(int64(256+i)) {
			t.Fatalf("entry %d differs", 256+i)
		}
	}
	if _, _, err := r.ManifestSlice(ctx, key, 290, 11); err == nil {
		t.Fatal("entries past the end read")
	}
	keys, _ := NewKeys(bytes.Repeat([]byte{7}, 32))
	enc, err := Open(ctx, objstore.NewMem(), 64<<10, keys)
	if err != nil {
		t.Fatal(err)
	}
	ekey, err := enc.PutManifest(ctx, "vm", m)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := enc.ManifestSlice(ctx, ekey, 0, 1); !errors.Is(err, ErrNoSlice) {
		t.Fatalf("sealed manifest sliced: %v", err)
	}
}
