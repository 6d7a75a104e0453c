package source

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

func TestFileExtentsSkipHoles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.img")
	f, _ := os.Create(path)
	f.Truncate(16 << 20)
	f.WriteAt([]byte("data"), 8<<20)
	f.Close()
	d, err := Open(context.Background(), "file://"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Size() != 16<<20 {
		t.Fatalf("size %d", d.Size())
	}
	ext, _, err := d.ChangedExtents(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, e := range ext {
		total += e.Length
		if e.Offset > 8<<20 || e.Offset+e.Length <= 8<<20 {
			t.Errorf("extent %+v does not cover the written byte", e)
		}
	}
	if total == 0 || total >= 16<<20 {
		t.Fatalf("allocated %d bytes of a sparse 16 MiB file", total)
	}
	if _, _, err := d.ChangedExtents(context.Background(), "x"); err != ErrNoChangeTracking {
		t.Fatalf("since on a file: %v", err)
	}
}

func TestOpenRefuses(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty.img")
	os.WriteFile(empty, nil, 0o644)
	for _, u := range []string{"file:///does/not/exist.img", "file://" + empty, "nbd://x", "file://rel"} {
		if d, err := Open(context.Background(), u); err == nil {
			d.Close()
			t.Errorf("Open(%q) succeeded", u)
		}
	}
}

func TestChunkRuns(t *testing.T) {
	got := ChunkRuns([]Extent{{0, 10}, {100, 10}, {65536, 1}, {3 * 65536, 2 * 65536}, {5*65536 + 1, 1}}, 65536)
	want := [][2]int64{{0, 2}, {3, 6}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("ChunkRuns = %v, want %v", got, want)
	}
}
