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
	keys, err := NewKeys(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		store objstore.Store
		keys  *Keys
		whole int64
	}{{"mem", objstore.NewMem(), nil, 64 << 10}, {"dir", dir, nil, 64 << 10}, {"encrypted", objstore.NewMem(), keys, 64 << 10}, {"encrypted, read whole", objstore.NewMem(), keys, 16 << 20}} {
		name, store := c.name, c.store
		WholeManifest = c.whole
		r, err := Open(ctx, store, 64<<10, c.keys)
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
		if c.keys == nil && (!bytes.Equal(stored, want) || int64(len(stored)) <= 2*WholeManifest) {
			t.Fatalf("%s: stored %d bytes, encoded %d", name, len(stored), len(want))
		}
		if c.keys != nil && (bytes.Contains(stored, want[40:200]) || !bytes.HasPrefix(stored, []byte(streamMagic))) {
			t.Fatalf("%s: stored in the clear or not sealed as a stream", name)
		}
		back, err := r.GetManifest(ctx, key)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got, _ := back.Encode(); !back.Spilled() || !bytes.Equal(got, want) {
			t.Fatalf("%s: read back differently (spilled %v)", name, back.Spilled())
		}
		// Copied to another repository: written from the map, not held.
		to, err := Open(ctx, objstore.NewMem(), 64<<10, c.keys)
		if err != nil {
			t.Fatal(err)
		}
		to.Store.Put(ctx, PackKey(p), []byte("there")) // the (synthetic) pack: known present, not copied
		if err := (&Copier{From: r, To: to}).CopyBackup(ctx, []string{key}); err != nil {
			t.Fatalf("%s: copy: %v", name, err)
		}
		copied, err := to.GetManifest(ctx, key)
		if err != nil {
			t.Fatalf("%s: the copy's manifest: %v", name, err)
		}
		if got, _ := copied.Encode(); !bytes.Equal(got, want) {
			t.Fatalf("%s: the copy's manifest differs", name)
		}
		bads := [][]byte{flip(stored, len(stored)/2), stored[:len(stored)-1], stored[:len(stored)/2]}
		if seg := 12 + (1<<20 + 16); c.keys != nil && len(stored) > seg {
			bads = append(bads, stored[:seg]) // cut at a segment's end: the last one is missing
		}
		for _, bad := range bads {
			store.Put(ctx, key, bad)
			if _, err := r.GetManifest(ctx, key); !errors.Is(err, manifest.ErrCorrupt) {
				t.Fatalf("%s: a damaged or truncated big manifest (%d of %d bytes) read: %v", name, len(bad), len(stored), err)
			}
		}
	}
}
