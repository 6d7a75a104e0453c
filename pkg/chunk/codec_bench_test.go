package chunk

import (
	"os"
	"strconv"
	"testing"

	"github.com/pierrec/lz4/v4"
)

// BenchmarkCodecs compresses the non-zero chunks of a real disk image
// (STRATA_BENCH_IMAGE; make bench-peers runs it on its synthetic and
// realistic disks) with each candidate codec and reports speed (MB/s of
// chunk bytes) and ratio (stored ÷ chunk bytes, a chunk that would not
// shrink counted raw, as Encode stores it). lz4 is measured, not offered:
// S2 is faster with a smaller output on both disks (README, Measured).
func BenchmarkCodecs(b *testing.B) {
	path := os.Getenv("STRATA_BENCH_IMAGE")
	if path == "" {
		b.Skip("STRATA_BENCH_IMAGE names a disk image")
	}
	size := 256 << 10
	if s := os.Getenv("STRATA_BENCH_CHUNK"); s != "" {
		size, _ = strconv.Atoi(s)
	}
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var chunks [][]byte
	total := 0
	for off := int64(0); total < 1<<30; off += int64(size) { // at most 1 GiB of chunks in memory
		buf := make([]byte, size)
		n, _ := f.ReadAt(buf, off)
		if n == 0 {
			break
		}
		if !AllZero(buf[:n]) {
			chunks = append(chunks, buf[:n])
			total += n
		}
	}
	if total == 0 {
		b.Fatalf("%s has no non-zero chunk", path)
	}
	var lz lz4.Compressor
	lz4Block := func(dst, data []byte) []byte {
		n, err := lz.CompressBlock(data, dst[:cap(dst)])
		if err != nil || n == 0 || n >= len(data)-len(data)/32 {
			return data
		}
		return dst[:n]
	}
	codecs := []struct {
		name string
		enc  func(dst, data []byte) []byte
	}{
		{"sha256", func(dst, data []byte) []byte { Hash(data); return data }}, // the id every chunk costs, for scale
		{"zstd", func(dst, data []byte) []byte { return AppendEncode(dst[:0], data, Zstd) }},
		{"zstd-better", func(dst, data []byte) []byte { return AppendEncode(dst[:0], data, ZstdBetter) }}, // gc --recompress
		{"s2", func(dst, data []byte) []byte { return AppendEncode(dst[:0], data, S2) }},
		{"lz4", lz4Block},
	}
	for _, c := range codecs {
		b.Run(c.name, func(b *testing.B) {
			dst := make([]byte, 0, 2*size)
			stored := 0
			b.SetBytes(int64(total))
			for b.Loop() {
				stored = 0
				for _, data := range chunks {
					stored += len(c.enc(dst, data))
				}
			}
			b.ReportMetric(float64(stored)/float64(total), "ratio")
		})
	}
}
