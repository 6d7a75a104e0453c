package repo

import (
	"context"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"testing"
	"time"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/objstore"
)

// BenchmarkDenseManifest (`make bench-dense`): the chunk map of a disk
// full of data — STRATA_DENSE_TIB TiB (default 16) of 256 KiB chunks, all
// distinct, packed — built in disk order as merge builds it, stored to a
// directory repository, read back and walked as verification and
// restore walk it. Reports the peak Go heap over all of it (sampled), the
// manifest's size and each step's time: without spilling, the map alone
// would be 56 bytes per chunk (3.6 GB at 16 TiB) and its encoding in
// memory twice that.
func BenchmarkDenseManifest(b *testing.B) {
	tib, _ := strconv.ParseFloat(os.Getenv("STRATA_DENSE_TIB"), 64)
	if tib <= 0 {
		tib = 16
	}
	const chunkSize = 256 << 10
	size := int64(tib * (1 << 40))
	dir := os.Getenv("STRATA_SCALE_DIR")
	if dir == "" {
		dir = b.TempDir()
	}
	manifest.SpillDir = dir
	defer func() { manifest.SpillDir = "" }()
	ctx := context.Background()
	for b.Loop() {
		store, err := objstore.NewDir(dir + "/repo")
		if err != nil {
			b.Fatal(err)
		}
		r, err := Open(ctx, store, chunkSize, nil)
		if err != nil {
			b.Fatal(err)
		}
		peak := watchHeap()
		t0 := time.Now()
		m := manifest.New("0193-dense", 0, chunkSize, size)
		var pack chunk.PackID
		for i := int64(0); i < m.Count(); i++ {
			if i%64 == 0 { // 16 MiB packs
				binaryPack(&pack, i)
			}
			if err := m.Append(i, chunk.Ref{ID: syntheticID(uint64(i)), Loc: chunk.Loc{Pack: pack, Off: uint32(i%64) * chunkSize, Len: chunkSize}}); err != nil {
				b.Fatal(err)
			}
		}
		built := time.Since(t0)
		t1 := time.Now()
		key, err := r.PutManifest(ctx, "dense", m)
		if err != nil {
			b.Fatal(err)
		}
		m.Close()
		stored := time.Since(t1)
		info, _ := store.Stat(ctx, key)
		t2 := time.Now()
		back, err := r.GetManifest(ctx, key)
		if err != nil {
			b.Fatal(err)
		}
		read := time.Since(t2)
		t3 := time.Now()
		var n int64
		for i, ref := range back.Data() {
			if i != n || ref.ID != syntheticID(uint64(i)) {
				b.Fatalf("chunk %d reads back wrong", i)
			}
			n++
		}
		back.Close()
		walked := time.Since(t3)
		max := peak()
		if n != back.Count() {
			b.Fatalf("%d of %d chunks", n, back.Count())
		}
		b.Logf("%.0f TiB full of data, %d chunks: manifest %.2f GB; build %v, store %v, read %v, walk %v; peak Go heap %d MiB",
			tib, n, float64(info.Size)/1e9, built.Round(time.Second), stored.Round(time.Second), read.Round(time.Second), walked.Round(time.Second), max>>20)
		b.ReportMetric(float64(max>>20), "peak_heap_MiB")
		b.ReportMetric(float64(info.Size)/1e9, "manifest_GB")
		os.RemoveAll(dir + "/repo")
	}
}

func binaryPack(p *chunk.PackID, i int64) {
	for k := 0; k < 8; k++ {
		p[k] = byte(i >> (8 * k))
	}
	p[15] = 1
}

// watchHeap samples the live heap every 20 ms until the returned function
// is called, which returns the highest sample.
func watchHeap() func() uint64 {
	done := make(chan struct{})
	res := make(chan uint64)
	go func() {
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		var max uint64
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(s)
			max = maxU(max, s[0].Value.Uint64())
			select {
			case <-done:
				res <- max
				return
			case <-t.C:
			}
		}
	}()
	runtime.GC()
	return func() uint64 { close(done); return <-res }
}

func maxU(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}
