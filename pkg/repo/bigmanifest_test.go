package repo

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/objstore"
)

// A manifest too big to hold (scaled down: spilling above 8,192 data
// chunks, read whole below 64 KiB) is written from its spill file and read
// back through a temporary file, equal to the one written, in a directory
// store and in memory; a damaged one is refused.
func TestBigManifestStreamed(t *testing.T) {
	savedSpill, savedWhole := manifest.SpillAbove, WholeManifest
	manifest.SpillAbove, WholeManifest = 2*4096, 64<<10
	defer func() { manifest.SpillAbove, WholeManifest = savedSpill, savedWhole }()
	ctx := context.Background()
	dir, err := objstore.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for name, store := range map[string]objstore.Store{"mem": objstore.NewMem(), "dir": dir} {
		r, err := Open(ctx, store, 64<<10, nil)
		if err != nil {
			t.Fatal(err)
		}
		const chunks = 50000
		m := manifest.New("0193-big", 0, 64<<10, chunks*(64<<10))
		p := chunk.PackID{7}
		for i := int64(0); i < chunks; i++ {
			if i%7 == 3 {
				continue
			}
			id := chunk.Hash(binary.BigEndian.AppendUint64(nil, uint64(i)))
			if err := m.Append(i, chunk.Ref{ID: id, Loc: chunk.Loc{Pack: p, Off: uint32(i) * 10, Len: 10}}); err != nil {
				t.Fatal(err)
			}
		}
		if !m.Spilled() {
			t.Fatal("not spilled")
		}
		want, _ := m.Encode()
		key, err := r.PutManifest(ctx, "vm", m)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		stored, _ := store.Get(ctx, key)
		if !bytes.Equal(stored, want) || int64(len(stored)) <= 2*WholeManifest {
			t.Fatalf("%s: stored %d bytes, encoded %d", name, len(stored), len(want))
		}
		back, err := r.GetManifest(ctx, key)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got, _ := back.Encode(); !back.Spilled() || !bytes.Equal(got, want) {
			t.Fatalf("%s: read back differently (spilled %v)", name, back.Spilled())
		}
		stored[len(stored)/2] ^= 1
		store.Put(ctx, key, stored)
		if _, err := r.GetManifest(ctx, key); !errors.Is(err, manifest.ErrCorrupt) {
			t.Fatalf("%s: a damaged big manifest read: %v", name, err)
		}
	}
}
