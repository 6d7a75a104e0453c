package merge

import (
	"crypto/rand"
	mrand "math/rand/v2"
	"testing"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
)

// BenchmarkMergeChain30On1TiB (`make bench`): forever-incremental merging
// of a 30-delta chain on a synthetic 1 TiB disk of 4 MiB chunks (262,144
// entries). Each step is what merge does to commit an incremental: decode
// the parent's manifest, apply the segment results (2 % new ids, the rest
// inherited), encode the new complete chunk map. Pruning the old full
// afterwards rewrites nothing, so this is the whole cost of folding the
// chain.
func BenchmarkMergeChain30On1TiB(b *testing.B) {
	const (
		chunkSize = 4 << 20
		diskSize  = 1 << 40
		perSeg    = contracts.MaxSegmentBytes / chunkSize
		deltas    = 30
	)
	entries := int(manifest.ChunkCount(diskSize, chunkSize))
	base := manifest.New("full", 0, chunkSize, diskSize)
	for i := range int64(entries) {
		var id chunk.ID
		rand.Read(id[:])
		base.Append(i, chunk.Ref{ID: id})
	}
	rng := mrand.New(mrand.NewPCG(3, 4))
	results := make([][]contracts.SegmentDone, deltas)
	for d := range results {
		for first := 0; first < entries; first += perSeg {
			sd := contracts.SegmentDone{FirstChunk: int64(first), IDs: make([]string, min(perSeg, entries-first))}
			for i := range sd.IDs {
				sd.IDs[i] = contracts.InheritID
				if rng.IntN(50) == 0 {
					var id chunk.ID
					rand.Read(id[:])
					sd.IDs[i] = id.String()
				}
			}
			results[d] = append(results[d], sd)
		}
	}
	encodedBase, err := base.Encode()
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		parentBytes := encodedBase
		for d := 0; d < deltas; d++ {
			parent, err := manifest.Decode(parentBytes)
			if err != nil {
				b.Fatal(err)
			}
			man := manifest.New("inc", 0, chunkSize, diskSize)
			for i := range results[d] {
				if err := applyResult(man, &results[d][i], func() (*manifest.Manifest, error) { return parent, nil }); err != nil {
					b.Fatal(err)
				}
			}
			if parentBytes, err = man.Encode(); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/chain")
}
