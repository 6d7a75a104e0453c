package repo

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/objstore"
)

func testKeys(t *testing.T, b byte) *Keys {
	t.Helper()
	k, err := NewKeys(bytes.Repeat([]byte{b}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestEncryptedRoundTripAndTamper(t *testing.T) {
	ctx := context.Background()
	store := objstore.NewMem()
	r, err := Open(ctx, store, 64<<10, testKeys(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("confidential block "), 4000)[:64<<10]
	id := r.ChunkID(data)
	if id == chunk.Hash(data) {
		t.Fatal("encrypted repository uses plain SHA-256 ids: object names reveal content")
	}
	if err := r.Chunks.PutChunk(ctx, id, r.EncodeChunk(id, data)); err != nil {
		t.Fatal(err)
	}
	obj, _ := store.Get(ctx, ChunkKey(id))
	if bytes.Contains(obj, data[:64]) {
		t.Fatal("plaintext in the stored chunk")
	}
	got, err := r.Chunks.GetChunk(ctx, id)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("round trip: %v", err)
	}
	man, _ := manifest.FromIDs("b1", 0, 64<<10, 64<<10, []chunk.ID{id}, nil)
	key, err := r.PutManifest(ctx, "vm", man)
	if err != nil {
		t.Fatal(err)
	}
	if back, err := r.GetManifest(ctx, key); err != nil || back.ID(0) != id {
		t.Fatalf("manifest round trip: %v", err)
	}
	// One flipped bit anywhere, or an object moved under another name:
	// an error wrapping ErrCorrupt, never bytes.
	for i := 0; i < len(obj); i += len(obj) / 7 {
		bad := bytes.Clone(obj)
		bad[i] ^= 1
		store.Put(ctx, ChunkKey(id), bad)
		if _, err := r.Chunks.GetChunk(ctx, id); !errors.Is(err, chunk.ErrCorrupt) {
			t.Fatalf("bit %d flipped: %v", i*8, err)
		}
	}
	other := r.ChunkID([]byte("other"))
	store.Put(ctx, ChunkKey(other), obj)
	if _, err := r.Chunks.GetChunk(ctx, other); !errors.Is(err, chunk.ErrCorrupt) {
		t.Fatalf("object under another name: %v", err)
	}
}

func TestEncryptionRefusesMixedUseAndWrongKey(t *testing.T) {
	ctx := context.Background()
	plain, encrypted := objstore.NewMem(), objstore.NewMem()
	if _, err := Open(ctx, plain, 64<<10, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, encrypted, 64<<10, testKeys(t, 1)); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		store objstore.Store
		keys  *Keys
		want  string
	}{
		{"plaintext repository, key given", plain, testKeys(t, 1), "not encrypted"},
		{"encrypted repository, no key", encrypted, nil, "is encrypted"},
		{"encrypted repository, wrong key", encrypted, testKeys(t, 2), "wrong encryption key"},
	}
	for _, tt := range tests {
		if _, err := Open(ctx, tt.store, 64<<10, tt.keys); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
}

func TestLoadKeyFile(t *testing.T) {
	dir := t.TempDir()
	raw := make([]byte, 32)
	rand.Read(raw)
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o600)
		return p
	}
	hexKey := write("hex", "  6a"+strings.Repeat("0", 62)+"\n")
	if _, err := LoadKeyFile(hexKey); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"short", strings.Repeat("zz", 32), ""} {
		if _, err := LoadKeyFile(write("bad", bad)); err == nil {
			t.Errorf("key %q accepted", bad)
		}
	}
	if _, err := LoadKeyFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing key file accepted")
	}
}
