package demodisk

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestDeterministic(t *testing.T) {
	dir := t.TempDir()
	a, b, c := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "c")
	for _, p := range []string{a, b} {
		if err := Write(p, 40<<20+123, 7); err != nil {
			t.Fatal(err)
		}
	}
	Write(c, 40<<20+123, 8)
	da, _ := os.ReadFile(a)
	db, _ := os.ReadFile(b)
	dc, _ := os.ReadFile(c)
	if !bytes.Equal(da, db) || bytes.Equal(da, dc) || len(da) != 40<<20+123 {
		t.Fatal("same seed must give the same image, another seed another one")
	}
}

// An allocated image has no hole and no zero run at 64 KiB granularity;
// the sparse one has both.
func TestWriteAllocatedHasNoZeroBlocks(t *testing.T) {
	dir := t.TempDir()
	zeroBlocks := func(p string) int {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for off := 0; off+64<<10 <= len(b); off += 64 << 10 {
			if bytes.Count(b[off:off+64<<10], []byte{0}) == 64<<10 {
				n++
			}
		}
		return n
	}
	dense, sparse := filepath.Join(dir, "dense"), filepath.Join(dir, "sparse")
	if err := WriteAllocated(dense, 64<<20, 3); err != nil {
		t.Fatal(err)
	}
	if err := Write(sparse, 64<<20, 3); err != nil {
		t.Fatal(err)
	}
	if n := zeroBlocks(dense); n != 0 {
		t.Errorf("allocated image has %d all-zero 64 KiB blocks", n)
	}
	if n := zeroBlocks(sparse); n == 0 {
		t.Error("sparse image has no all-zero block")
	}
}
