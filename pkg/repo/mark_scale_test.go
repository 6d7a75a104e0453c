package repo

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/objstore"
)

// scaleN is the number of synthetic chunks of the at-scale benchmarks
// (STRATA_SCALE_CHUNKS; make bench-index sets 100 M).
func scaleN(b *testing.B, def int) int {
	if v, err := strconv.Atoi(os.Getenv("STRATA_SCALE_CHUNKS")); err == nil && v > 0 {
		return v
	}
	return def
}

// syntheticID is chunk i's id: random-looking, no hashing cost.
func syntheticID(i uint64) chunk.ID {
	var id chunk.ID
	r := rand.New(rand.NewPCG(i, 0x5eed))
	for k := 0; k < len(id); k += 8 {
		binary.LittleEndian.PutUint64(id[k:], r.Uint64())
	}
	return id
}

// BenchmarkMarkShardAtScale: one shard of garbage collection's mark over
// manifests referencing STRATA_SCALE_CHUNKS distinct packed chunks (1,000
// backups, 100 chunks to a pack), made on the fly as they would be read
// one after the other; reports the shard's heap after the mark (what it
// keeps: ids and live offsets of 1/shards of the repository) and the time
// a shard takes without the reads. STRATA_GC_SHARDS (default 32) divides
// it.
func BenchmarkMarkShardAtScale(b *testing.B) {
	n := scaleN(b, 2_000_000)
	shards, _ := strconv.Atoi(os.Getenv("STRATA_GC_SHARDS"))
	if shards <= 0 {
		shards = 32
	}
	const perPack, backups = 100, 1000
	packs := (n + perPack - 1) / perPack
	pack := func(p int) chunk.PackID {
		var id chunk.PackID
		binary.BigEndian.PutUint64(id[:], uint64(p)+1)
		id[15] = byte(p * 131) // the shard byte
		return id
	}
	for b.Loop() {
		s := &Sweep{stored: map[chunk.PackID]storedPack{}, moved: map[chunk.PackID][]objstore.Info{},
			moves: map[chunk.PackID]map[uint32]Move{}, named: map[chunk.PackID]bool{}, dangling: map[chunk.PackID]bool{}}
		for p := range packs {
			s.stored[pack(p)] = storedPack{size: perPack * 100_000}
		}
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		m := s.Mark(0, 256/shards)
		start := time.Now()
		per := n / backups
		for bk := range backups {
			man := manifest.New("b", 0, 256<<10, int64(per)*256<<10)
			for k := range per {
				i := bk*per + k
				man.Append(int64(k), chunk.Ref{ID: syntheticID(uint64(i)), Loc: chunk.Loc{Pack: pack(i / perPack), Off: uint32(i%perPack) * 100_000, Len: 100_000}})
			}
			if err := m.Manifest(context.Background(), strconv.Itoa(bk), man); err != nil {
				b.Fatal(err)
			}
		}
		took := time.Since(start)
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(n), "chunks")
		b.ReportMetric(float64(shards), "shards")
		b.ReportMetric(float64(len(m.ids)), "ids_in_shard")
		b.ReportMetric(float64(after.HeapInuse-min(after.HeapInuse, before.HeapInuse))/(1<<20), "shard_MiB")
		b.ReportMetric(float64(before.HeapInuse)/(1<<20), "pack_list_MiB")
		b.ReportMetric(took.Seconds(), "s/shard")
		runtime.KeepAlive(m)
	}
}
