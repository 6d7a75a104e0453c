package overlay

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/nbd"
)

// memBase is a disk in memory whose zero grains are reported as holes.
type memBase struct {
	data  []byte
	grain int64
	reads atomic.Int64
}

func (m *memBase) Size() int64 { return int64(len(m.data)) }
func (m *memBase) ReadAt(_ context.Context, p []byte, off int64) error {
	m.reads.Add(1)
	copy(p, m.data[off:])
	return nil
}
func (m *memBase) Extents(off, length int64) []nbd.Extent {
	zero := chunk.AllZero(m.data[off:min(off+m.grain-off%m.grain, int64(len(m.data)))])
	n := min(length, m.grain-off%m.grain)
	if zero {
		return []nbd.Extent{{Length: uint32(n), Flags: nbd.StateHole | nbd.StateZero}}
	}
	return []nbd.Extent{{Length: uint32(n)}}
}

const grain = 64 << 10

func newBase(t *testing.T, size int) *memBase {
	b := &memBase{data: make([]byte, size), grain: grain}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < size; i += grain {
		if (i/grain)%3 != 0 { // every third grain a hole
			for j := i; j < min(size, i+grain); j++ {
				b.data[j] = byte(rng.Uint32())
			}
		}
	}
	return b
}

func open(t *testing.T, dir string, b Base, id string) *Overlay {
	t.Helper()
	o, err := Open(filepath.Join(dir, "disk0.raw"), filepath.Join(dir, "disk0.map"), b, Options{Identity: id, Grain: grain})
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func readAll(t *testing.T, o *Overlay) []byte {
	t.Helper()
	got := make([]byte, o.Size())
	if err := o.ReadAt(context.Background(), got, 0); err != nil {
		t.Fatal(err)
	}
	return got
}

// randomOps applies unaligned writes and zeroings to o and to want alike.
func randomOps(t *testing.T, o *Overlay, want []byte, rng *rand.Rand, n int) {
	t.Helper()
	ctx := context.Background()
	for k := 0; k < n; k++ {
		off := rng.Int64N(int64(len(want)))
		l := 1 + rng.Int64N(min(3*grain, int64(len(want))-off))
		if rng.IntN(4) == 0 {
			if err := o.Zero(ctx, off, l); err != nil {
				t.Fatal(err)
			}
			clear(want[off : off+l])
			continue
		}
		p := make([]byte, l)
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		if err := o.WriteAt(ctx, p, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], p)
	}
}

func TestWritesReadBackAndPersist(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	base := newBase(t, 40*grain+1234) // a short last grain
	orig := bytes.Clone(base.data)
	o := open(t, dir, base, "vm/b1/disk0")
	if !bytes.Equal(readAll(t, o), orig) {
		t.Fatal("a fresh overlay does not read as its base")
	}
	want := bytes.Clone(orig)
	rng := rand.New(rand.NewPCG(3, 4))
	randomOps(t, o, want, rng, 200)
	// Writes at the very end, in the short grain.
	if err := o.WriteAt(ctx, []byte("tail"), o.Size()-4); err != nil {
		t.Fatal(err)
	}
	copy(want[len(want)-4:], "tail")
	if !bytes.Equal(readAll(t, o), want) {
		t.Fatal("reads differ from the writes applied to the base")
	}
	if err := o.WriteAt(ctx, []byte("x"), o.Size()); err == nil {
		t.Fatal("a write beyond the disk was taken")
	}
	// Random unaligned reads too.
	for k := 0; k < 100; k++ {
		off := rng.Int64N(o.Size())
		p := make([]byte, 1+rng.Int64N(min(5*grain, o.Size()-off)))
		if err := o.ReadAt(ctx, p, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, want[off:off+int64(len(p))]) {
			t.Fatalf("read [%d, +%d) differs", off, len(p))
		}
	}
	if err := o.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	o.Close()
	if !bytes.Equal(base.data, orig) {
		t.Fatal("the base was written")
	}
	// Reopened (a restarted server), the overlay continues.
	o = open(t, dir, base, "vm/b1/disk0")
	if !bytes.Equal(readAll(t, o), want) {
		t.Fatal("after reopening, reads differ")
	}
	randomOps(t, o, want, rng, 50)
	if err := o.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	o.Close()
	o = open(t, dir, base, "vm/b1/disk0")
	defer o.Close()
	if !bytes.Equal(readAll(t, o), want) {
		t.Fatal("after a second reopening, reads differ")
	}
	// A map over another backup is refused.
	_, err := Open(filepath.Join(dir, "disk0.raw"), filepath.Join(dir, "disk0.map"), base, Options{Identity: "vm/b2/disk0", Grain: grain})
	if err == nil || !strings.Contains(err.Error(), "vm/b1/disk0") {
		t.Fatalf("an overlay of another backup opened: %v", err)
	}
}

func TestExtents(t *testing.T) {
	ctx := context.Background()
	base := newBase(t, 12*grain)
	o := open(t, t.TempDir(), base, "x")
	defer o.Close()
	// Grain 3 is a hole in the base; written, it is data.
	if e := o.Extents(3*grain, grain); len(e) != 1 || e[0].Flags&nbd.StateZero == 0 {
		t.Fatalf("base hole reported as %+v", e)
	}
	if err := o.WriteAt(ctx, []byte{1}, 3*grain+5); err != nil {
		t.Fatal(err)
	}
	if e := o.Extents(3*grain, 2*grain); len(e) != 1 || e[0].Flags != 0 || e[0].Length != grain {
		t.Fatalf("written grain reported as %+v", e)
	}
}

func TestFlushAfterUnflushedWritesIsLostNotCorrupt(t *testing.T) {
	// Writes never flushed: after reopening each grain is either the base
	// or what was written (here the map page was never written, so all base).
	ctx := context.Background()
	dir := t.TempDir()
	base := newBase(t, 8*grain)
	o := open(t, dir, base, "x")
	if err := o.WriteAt(ctx, bytes.Repeat([]byte{7}, 100), grain+10); err != nil {
		t.Fatal(err)
	}
	o.Close()
	o = open(t, dir, base, "x")
	defer o.Close()
	if !bytes.Equal(readAll(t, o), base.data) {
		t.Fatal("an unflushed write left the disk neither as it was nor as written")
	}
}

func TestFillWithConcurrentWritesAndResume(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	base := newBase(t, 64*grain+999)
	o := open(t, dir, base, "vm/b1/disk0")
	want := bytes.Clone(base.data)
	rng := rand.New(rand.NewPCG(5, 6))

	// A fill cut short (cancelled after a few batches) persists its progress.
	cctx, cancel := context.WithCancel(ctx)
	batches := 0
	err := o.Fill(cctx, FillOptions{Batch: 4 * grain, Progress: func(p, total int) {
		if batches++; batches == 3 {
			cancel()
		}
	}})
	if err == nil {
		t.Fatal("a cancelled fill returned nil")
	}
	done, total := o.Progress()
	if done == 0 || done == total {
		t.Fatalf("cancelled fill holds %d of %d grains", done, total)
	}
	o.Close()

	o = open(t, dir, base, "vm/b1/disk0")
	if again, _ := o.Progress(); again != done {
		t.Fatalf("resumed with %d grains, %d were flushed", again, done)
	}
	// Guest writes land while the fill runs (throttled so they interleave).
	var wg sync.WaitGroup
	wg.Add(1)
	fillErr := make(chan error, 1)
	go func() {
		defer wg.Done()
		fillErr <- o.Fill(ctx, FillOptions{Batch: 2 * grain, BytesPerSecond: 64 * grain * 4})
	}()
	randomOps(t, o, want, rng, 100)
	wg.Wait()
	if err := <-fillErr; err != nil {
		t.Fatal(err)
	}
	if p, n := o.Progress(); p != n {
		t.Fatalf("fill finished with %d of %d grains", p, n)
	}
	o.Close()
	// The file alone is now the disk: the base plus every write.
	got, err := os.ReadFile(filepath.Join(dir, "disk0.raw"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the filled target is not the base with the writes applied")
	}
	// Reads of a complete overlay never reach the base.
	o = open(t, dir, base, "vm/b1/disk0")
	defer o.Close()
	before := base.reads.Load()
	if !bytes.Equal(readAll(t, o), want) || base.reads.Load() != before {
		t.Fatal("a complete overlay read from its base")
	}
}
