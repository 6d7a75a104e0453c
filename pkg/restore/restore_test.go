package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/repo"
)

func setup(t *testing.T) (*repo.Repository, *manifest.Manifest, []byte) {
	ctx := context.Background()
	r, err := repo.Open(ctx, objstore.NewMem(), 64<<10, nil)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64<<10*6 + 100
	img := make([]byte, size)
	copy(img[0:], bytes.Repeat([]byte("hello "), 10000))
	copy(img[3*64<<10:], bytes.Repeat([]byte{7}, 64<<10))
	copy(img[6*64<<10:], bytes.Repeat([]byte{9}, 100))
	man := manifest.New("b", 0, 64<<10, size)
	for i := 0; i < 7; i++ {
		c := img[i*64<<10 : min(size, (i+1)*64<<10)]
		if chunk.AllZero(c) {
			continue
		}
		id := chunk.Hash(c)
		r.Chunks.PutChunk(ctx, id, chunk.Encode(c))
		man.Append(int64(i), chunk.Ref{ID: id})
	}
	return r, man, img
}

// damage flips a bit in chunk id's object and returns its key.
func damage(r *repo.Repository, id chunk.ID) string {
	key := repo.ChunkKey(id)
	obj, _ := r.Store.Get(context.Background(), key)
	obj[len(obj)-1] ^= 0x40
	r.Store.Put(context.Background(), key, obj)
	return key
}

// Whole chunks are written with O_DIRECT where the filesystem takes it
// (the test's temporary directory, usually) and through the cache where it
// does not (tmpfs); the short last chunk always through the cache.
func TestRestoreBitExactAndSparse(t *testing.T) {
	r, man, img := setup(t)
	dirs := []string{t.TempDir()}
	if shm, err := os.MkdirTemp("/dev/shm", "strata-restore-"); err == nil {
		t.Cleanup(func() { os.RemoveAll(shm) })
		dirs = append(dirs, shm)
	}
	for _, dir := range dirs {
		out := filepath.Join(dir, "out.img")
		// Progress counts data written, never the holes: the first report
		// is one chunk's worth, the last all the data.
		var reports []int64
		var mu sync.Mutex
		st, err := ToFile(context.Background(), r, man, out, Options{Workers: 3, Progress: func(n int64) {
			mu.Lock()
			reports = append(reports, n)
			mu.Unlock()
		}})
		if err != nil {
			t.Fatal(err)
		}
		if len(reports) != 3 || slices.Min(reports) > int64(man.ChunkSize) || slices.Max(reports) != man.DataBytes() || man.DataBytes() != 2*int64(man.ChunkSize)+100 {
			t.Fatalf("progress reports %v for %d bytes of data", reports, man.DataBytes())
		}
		got, _ := os.ReadFile(out)
		if !bytes.Equal(got, img) {
			t.Fatalf("%s: restored image differs", dir)
		}
		if st.ZeroChunks != 4 || st.DataChunks != 3 {
			t.Fatalf("stats %+v", st)
		}
		fi, _ := os.Stat(out)
		if blocks := fi.Sys().(*syscall.Stat_t).Blocks * 512; blocks >= int64(len(img)) {
			t.Fatalf("%s: restored image allocates %d bytes of %d: not sparse", dir, blocks, len(img))
		}
	}
}

func TestRestoreRefusesCorruptChunkAndLeavesNoFile(t *testing.T) {
	r, man, _ := setup(t)
	key := damage(r, man.ID(3))
	out := filepath.Join(t.TempDir(), "out.img")
	_, err := ToFile(context.Background(), r, man, out, Options{Workers: 2})
	if !errors.Is(err, chunk.ErrCorrupt) || !strings.Contains(err.Error(), key) {
		t.Fatalf("err = %v, want a corrupt-chunk error naming %s", err, key)
	}
	for _, p := range []string{out, out + ".partial"} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s left behind after a failed restore", p)
		}
	}
}

// An existing target is never replaced without Overwrite: not when it
// exists before the restore, not when it appears while the restore runs.
func TestRestoreRefusesExistingTarget(t *testing.T) {
	r, man, img := setup(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "out.img")
	os.WriteFile(out, []byte("precious"), 0o644)
	if _, err := ToFile(context.Background(), r, man, out, Options{}); !errors.Is(err, ErrExists) {
		t.Fatalf("restore over an existing file: %v", err)
	}
	if got, _ := os.ReadFile(out); string(got) != "precious" {
		t.Fatal("existing file changed")
	}
	if _, err := os.Stat(out + ".partial"); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("refused restore wrote a partial file")
	}
	// Appearing mid-restore: created by the progress callback.
	late := filepath.Join(dir, "late.img")
	_, err := ToFile(context.Background(), r, man, late, Options{Progress: func(int64) {
		f, err := os.OpenFile(late, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err == nil {
			f.WriteString("mine")
			f.Close()
		}
	}})
	if !errors.Is(err, ErrExists) {
		t.Fatalf("restore onto a file created meanwhile: %v", err)
	}
	if got, _ := os.ReadFile(late); string(got) != "mine" {
		t.Fatal("file created during the restore was replaced")
	}
	// With Overwrite the image replaces the file, bit for bit.
	if _, err := ToFile(context.Background(), r, man, out, Options{Overwrite: true}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, img) {
		t.Fatal("overwritten image differs")
	}
	// A directory or a missing parent is refused, with or without it.
	for _, p := range []string{dir, filepath.Join(dir, "no", "such.img")} {
		if _, err := ToFile(context.Background(), r, man, p, Options{Overwrite: true}); err == nil {
			t.Fatalf("restore to %s accepted", p)
		}
	}
}

// Reads are planned per pack by offset: adjacent ranges joined whatever
// the disk order, a chunk the disk holds twice read once, zero chunks not
// read, a chunk stored on its own read alone.
func TestPlanJoinsAdjacentRanges(t *testing.T) {
	p, q := chunk.PackID{1}, chunk.PackID{2}
	h := func(s string) chunk.ID { return chunk.Hash([]byte(s)) }
	m, err := manifest.FromIDs("b", 0, 64<<10, 7*64<<10,
		[]chunk.ID{h("b"), h("a"), chunk.Zero, h("c"), h("a"), h("loose"), h("q")},
		[]chunk.Loc{{Pack: p, Off: 10, Len: 5}, {Pack: p, Off: 0, Len: 10}, {}, {Pack: p, Off: 15, Len: 1},
			{Pack: p, Off: 0, Len: 10}, {}, {Pack: q, Off: 0, Len: 3}})
	if err != nil {
		t.Fatal(err)
	}
	runs := plan(m)
	if len(runs) != 3 {
		t.Fatalf("%d runs, want 3: %+v", len(runs), runs)
	}
	if got := fmt.Sprint(runs[0].at); got != "[[5]]" {
		t.Fatalf("first run (the loose chunk) fills %s", got)
	}
	if got := fmt.Sprint(runs[1].at); got != "[[1 4] [0] [3]]" || runs[1].refs[0].Loc.Off != 0 {
		t.Fatalf("pack run fills %s", got)
	}
	if got := fmt.Sprint(runs[2].at); got != "[[6]]" {
		t.Fatalf("second pack fills %s", got)
	}
}

// A disk planned a window at a time (two data chunks per window here):
// every window's reads land where they belong, a chunk repeated across
// windows is read once per window, and the image is bit-exact.
func TestRestoreInWindows(t *testing.T) {
	saved := planWindow
	planWindow = 2
	defer func() { planWindow = saved }()
	ctx := context.Background()
	r, err := repo.Open(ctx, objstore.NewMem(), 64<<10, nil)
	if err != nil {
		t.Fatal(err)
	}
	const cs, n = 64 << 10, 11
	img := make([]byte, cs*n-5)
	for i := 0; i < n; i++ {
		switch {
		case i%4 == 0: // the same chunk at 0, 4, 8
			copy(img[i*cs:], bytes.Repeat([]byte("same"), cs/4))
		case i%4 == 2: // zero
		default:
			copy(img[i*cs:min(len(img), (i+1)*cs)], bytes.Repeat([]byte{byte(i)}, cs))
		}
	}
	man := manifest.New("w", 0, cs, int64(len(img)))
	for i := 0; i < n; i++ {
		c := img[i*cs : min(len(img), (i+1)*cs)]
		if chunk.AllZero(c) {
			continue
		}
		id := chunk.Hash(c)
		r.Chunks.PutChunk(ctx, id, chunk.Encode(c))
		man.Append(int64(i), chunk.Ref{ID: id})
	}
	var reads, chunks int
	for run := range plans(man) {
		reads++
		for _, at := range run.at {
			chunks += len(at)
		}
	}
	if chunks != int(man.DataChunks()) || reads < 4 {
		t.Fatalf("%d reads cover %d chunks of %d", reads, chunks, man.DataChunks())
	}
	out := filepath.Join(t.TempDir(), "out.img")
	if _, err := ToFile(ctx, r, man, out, Options{Workers: 2}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, img) {
		t.Fatal("restored in windows, the image differs")
	}
}
