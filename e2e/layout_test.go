package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/repo"
)

// storedChunk is where one chunk's stored bytes lie among the object
// files of a repository: a loose object of its own or a range of a pack.
type storedChunk struct {
	File     string // the object's file
	Key      string // the object's key
	Off, Len int64
}

// storedChunks lists every chunk the repository whose objects are the
// files under root holds, loose or packed, by id, so a test can count or
// damage chunks whatever the layout. A pack's trailer is read through the
// repository package (keyFile opens an encrypted one), not parsed here.
func storedChunks(t testing.TB, root, keyFile string) map[string]storedChunk {
	t.Helper()
	out := map[string]storedChunk{}
	filepath.WalkDir(filepath.Join(root, "chunks"), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			fi, _ := d.Info()
			key, _ := filepath.Rel(root, p)
			out[d.Name()] = storedChunk{File: p, Key: filepath.ToSlash(key), Len: fi.Size()}
		}
		return nil
	})
	store, err := objstore.NewDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var keys *repo.Keys
	if keyFile != "" {
		if keys, err = repo.LoadKeyFile(keyFile); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	r, err := repo.OpenWith(ctx, store, repo.Options{Keys: keys})
	if err != nil {
		t.Fatalf("open the repository in %s: %v", root, err)
	}
	err = r.ListPacks(ctx, 0, 256, func(p chunk.PackID, info objstore.Info) error {
		entries, err := r.PackIndex(ctx, p, info.Size)
		if err != nil {
			return err
		}
		for _, e := range entries {
			key := repo.PackKey(p)
			out[e.ID.String()] = storedChunk{File: filepath.Join(root, filepath.FromSlash(key)), Key: key, Off: int64(e.Loc.Off), Len: int64(e.Loc.Len)}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("list the packs in %s: %v", root, err)
	}
	return out
}

// storedChunks lists the chunks of the stack's repository (see storedChunks).
func (st *stack) storedChunks() map[string]storedChunk {
	keyFile := ""
	for _, e := range st.env {
		if v, ok := strings.CutPrefix(e, "STRATA_ENCRYPTION_KEY_FILE="); ok {
			keyFile = v // the last setting wins, as in the services
		}
	}
	return storedChunks(st.t, filepath.Join(st.s3.Dir, st.bucket), keyFile)
}

// bytes returns the chunk's stored bytes.
func (c storedChunk) bytes(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile(c.File)
	if err != nil {
		t.Fatal(err)
	}
	if c.Len == 0 && c.Off == 0 {
		return b
	}
	if int64(len(b)) < c.Off+c.Len {
		t.Fatalf("%s holds %d bytes, the chunk ends at %d", c.File, len(b), c.Off+c.Len)
	}
	return b[c.Off : c.Off+c.Len]
}

// flip flips one bit of the chunk's stored bytes (at byte at of them) in
// its object file.
func (c storedChunk) flip(t testing.TB, at int64, bit byte) {
	t.Helper()
	b, err := os.ReadFile(c.File)
	if err != nil {
		t.Fatal(err)
	}
	b[c.Off+at] ^= bit
	if err := os.WriteFile(c.File, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
