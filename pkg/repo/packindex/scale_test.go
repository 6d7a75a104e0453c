package packindex

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/repo"
)

// syntheticID is chunk i of n: spread evenly over the id space in the
// order of i (so the index fills in key order, as fast as it can be
// filled: 100 M random inserts take hours on two cores), the rest random.
func syntheticID(i, n uint64) chunk.ID {
	var id chunk.ID
	binary.BigEndian.PutUint64(id[:], i*(^uint64(0)/max(n, 1)))
	r := rand.New(rand.NewPCG(i, 0x5eed))
	for k := 8; k < len(id); k += 8 {
		binary.LittleEndian.PutUint64(id[k:], r.Uint64())
	}
	return id
}

// procStatus reads a field of /proc/self/status in KiB.
func procStatus(field string) float64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field+":") {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	return -1
}

// BenchmarkIndexAtScale: the dedup pack index with STRATA_SCALE_CHUNKS
// synthetic chunks (make bench-index: 100 M; default 1 M): filled in key
// order, 50,000 to a transaction, then looked up as a segment's worth at a
// time (256 ids: all known, then all new). Reports the file size, the Go
// heap, the process's anonymous and file-backed resident memory (the
// file is memory-mapped: its pages are the kernel's cache, shared and
// reclaimable), fill rate and lookup latency per segment.
func BenchmarkIndexAtScale(b *testing.B) {
	n := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("STRATA_SCALE_CHUNKS")); err == nil && v > 0 {
		n = v
	}
	dir := os.Getenv("STRATA_SCALE_DIR") // a disk with room: ~90 bytes per chunk
	if dir == "" {
		dir = b.TempDir()
	}
	for b.Loop() {
		path := filepath.Join(dir, "index-scale.db")
		os.Remove(path)
		x, err := Open(path, "scale", slog.New(slog.DiscardHandler))
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		const batch = 50_000
		entries := make([]repo.PackEntry, 0, batch)
		for i := 0; i < n; i++ {
			var p chunk.PackID
			binary.BigEndian.PutUint64(p[:], uint64(i/100)+1)
			entries = append(entries, repo.PackEntry{ID: syntheticID(uint64(i), uint64(n)), Loc: chunk.Loc{Pack: p, Off: uint32(i%100) * 100_000, Len: 100_000}})
			if len(entries) == batch || i == n-1 {
				// keys in order within a transaction: bbolt writes each page once
				slices.SortFunc(entries, func(a, b repo.PackEntry) int { return bytes.Compare(a.ID[:], b.ID[:]) })
				if err := x.add(entries, 0); err != nil {
					b.Fatal(err)
				}
				entries = entries[:0]
			}
		}
		fill := time.Since(start)
		rng := rand.New(rand.NewPCG(7, 7))
		lookup := func(known bool) (p50, p99 time.Duration) {
			var took []time.Duration
			ids := make([]chunk.ID, 256)
			for range 2000 {
				for k := range ids {
					if known {
						ids[k] = syntheticID(uint64(rng.IntN(n)), uint64(n))
					} else {
						ids[k] = syntheticID(uint64(rng.IntN(n)), uint64(n))
						ids[k][31] ^= 1 // a neighbour of a known id: the same pages, not found
					}
				}
				t0 := time.Now()
				_, found, err := x.Lookup(ids)
				if err != nil {
					b.Fatal(err)
				}
				took = append(took, time.Since(t0))
				if slices.Contains(found, !known) {
					b.Fatal("lookup answered wrong")
				}
			}
			slices.Sort(took)
			return took[len(took)/2], took[len(took)*99/100]
		}
		k50, k99 := lookup(true)
		m50, m99 := lookup(false)
		debug.FreeOSMemory() // what the heap holds, not what it once held
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		st, _ := os.Stat(path)
		b.ReportMetric(float64(n), "chunks")
		b.ReportMetric(float64(st.Size())/(1<<20), "file_MiB")
		b.ReportMetric(float64(n)/fill.Seconds(), "fill_chunks/s")
		b.ReportMetric(float64(k50.Microseconds()), "known_p50_us/256")
		b.ReportMetric(float64(k99.Microseconds()), "known_p99_us/256")
		b.ReportMetric(float64(m50.Microseconds()), "new_p50_us/256")
		b.ReportMetric(float64(m99.Microseconds()), "new_p99_us/256")
		b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap_MiB")
		b.ReportMetric(procStatus("RssAnon")/1024, "rss_anon_MiB")
		b.ReportMetric(procStatus("RssFile")/1024, "rss_file_MiB")
		x.Close()
		os.Remove(path)
	}
}
