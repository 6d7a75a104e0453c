package restore

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/nbd"
)

// Random reads through a cache smaller than the disk return the disk's
// bytes; the cache stays within its budget; zero chunks are holes.
func TestReaderRandomAccessWithinBudget(t *testing.T) {
	r, man, img := setup(t)
	rd := NewReader(context.Background(), r, man, ReaderOptions{CacheBytes: 2 * 64 << 10, Ahead: 2, Parallel: 2})
	for range 300 {
		off := rand.Int64N(int64(len(img)))
		n := 1 + rand.Int64N(int64(len(img))-off)
		got := make([]byte, n)
		if err := rd.ReadAt(context.Background(), got, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, img[off:off+n]) {
			t.Fatalf("read [%d, +%d) differs", off, n)
		}
		rd.mu.Lock()
		used := rd.cache.used
		rd.mu.Unlock()
		if used > 2*64<<10+64<<10 {
			t.Fatalf("cache holds %d bytes, budget %d", used, 2*64<<10)
		}
	}
	if err := rd.ReadAt(context.Background(), make([]byte, 10), int64(len(img))-5); err == nil {
		t.Fatal("read past the disk accepted")
	}
	ext := rd.Extents(0, rd.Size())
	var holes, total int64
	for _, e := range ext {
		total += int64(e.Length)
		if e.Flags == nbd.StateHole|nbd.StateZero {
			holes += int64(e.Length)
		}
	}
	if total != rd.Size() || holes != 4*64<<10 {
		t.Fatalf("extents cover %d bytes (disk %d), holes %d (want 4 zero chunks)", total, rd.Size(), holes)
	}
}

// A damaged chunk fails the reads that need it, every time (a failure is
// not cached), and only those.
func TestReaderDamagedChunk(t *testing.T) {
	r, man, img := setup(t)
	damage(r, man.ID(3))
	rd := NewReader(context.Background(), r, man, ReaderOptions{})
	for range 2 {
		if err := rd.ReadAt(context.Background(), make([]byte, 100), 3*64<<10+10); !errors.Is(err, chunk.ErrCorrupt) {
			t.Fatalf("read of the damaged chunk: %v", err)
		}
	}
	got := make([]byte, 64<<10)
	if err := rd.ReadAt(context.Background(), got, 0); err != nil || !bytes.Equal(got, img[:64<<10]) {
		t.Fatalf("read beside the damaged chunk: %v", err)
	}
}
