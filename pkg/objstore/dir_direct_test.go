package objstore

import (
	"bytes"
	"context"
	"os"
	"runtime"
	"testing"

	"github.com/strata-backup/strata/pkg/directio"
)

// Packs bypass the page cache on Linux (O_DIRECT for the whole blocks, the
// tail through the cache): every byte must still come back, for both
// writers, on a filesystem that takes O_DIRECT and on one that refuses it
// (tmpfs), and whatever the tail's length.
func TestDirLargeObjectsDirect(t *testing.T) {
	dirs := []string{t.TempDir()}
	if runtime.GOOS == "linux" {
		if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
			shm, err := os.MkdirTemp("/dev/shm", "strata-direct-")
			if err == nil {
				t.Cleanup(func() { os.RemoveAll(shm) })
				dirs = append(dirs, shm)
			}
		}
	}
	ctx := context.Background()
	for _, root := range dirs {
		d, err := NewDir(root)
		if err != nil {
			t.Fatal(err)
		}
		for i, n := range []int{directMin, 5<<20 + 123, 3<<20 + directio.Align - 1} {
			data := make([]byte, n)
			for j := range data {
				data[j] = byte(j*31 + i)
			}
			if !directio.Aligned(data) {
				t.Fatalf("a fresh %d-byte buffer does not qualify for O_DIRECT: the test would not cover it", n)
			}
			if err := d.Put(ctx, "packs/aa/put", data); err != nil {
				t.Fatalf("%s: put %d bytes: %v", root, n, err)
			}
			if created, err := d.PutIfAbsent(ctx, "packs/bb/new"+string(rune('a'+i)), data); err != nil || !created {
				t.Fatalf("%s: put-if-absent %d bytes: %v (created %v)", root, n, err, created)
			}
			for _, k := range []string{"packs/aa/put", "packs/bb/new" + string(rune('a'+i))} {
				got, err := d.Get(ctx, k)
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("%s: %s: %v, %d of %d bytes, equal %v", root, k, err, len(got), n, bytes.Equal(got, data))
				}
			}
		}
		// an unaligned buffer takes the cached path
		data := make([]byte, 2<<20+1)[1:]
		if err := d.Put(ctx, "packs/cc/unaligned", data); err != nil {
			t.Fatal(err)
		}
		if got, err := d.Get(ctx, "packs/cc/unaligned"); err != nil || len(got) != len(data) {
			t.Fatalf("unaligned: %v, %d bytes", err, len(got))
		}
	}
}
