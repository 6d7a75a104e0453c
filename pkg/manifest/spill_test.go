package manifest

import (
	"bytes"
	"encoding/binary"
	"runtime"
	"testing"

	"github.com/strata-backup/strata/pkg/chunk"
)

// withSpill runs f with manifests spilling above n data chunks.
func withSpill(t testing.TB, n int, f func()) {
	t.Helper()
	saved := SpillAbove
	SpillAbove = n
	defer func() { SpillAbove = saved }()
	f()
}

// A spilled manifest answers every read as the same manifest held in
// memory, and encodes to the same bytes.
func TestSpilledMatchesResident(t *testing.T) {
	const chunks = 1_500_000 // ~27,000 data chunks: 6 spilled blocks
	var resident, spilled *Manifest
	withSpill(t, 0, func() { resident = big(t, chunks) })
	withSpill(t, blockEntries, func() { spilled = big(t, chunks) })
	defer spilled.Close()
	if resident.Spilled() || !spilled.Spilled() {
		t.Fatalf("spilled: %v and %v", resident.Spilled(), spilled.Spilled())
	}
	if len(spilled.ids) > blockEntries {
		t.Fatalf("%d chunks resident after spilling", len(spilled.ids))
	}
	if resident.DataChunks() != spilled.DataChunks() || resident.HasLocs() != spilled.HasLocs() || resident.DataBytes() != spilled.DataBytes() {
		t.Fatalf("counts differ: %d/%d chunks, locs %v/%v", resident.DataChunks(), spilled.DataChunks(), resident.HasLocs(), spilled.HasLocs())
	}
	for i := int64(-1); i <= resident.Count(); i++ {
		if resident.Ref(i) != spilled.Ref(i) {
			t.Fatalf("chunk %d: %v, spilled %v", i, resident.Ref(i), spilled.Ref(i))
		}
	}
	for _, span := range [][2]int64{{0, chunks}, {5000, 5001}, {4000, 300000}, {spilled.spill.end - 3, spilled.spill.end + 3}, {chunks - 10, chunks + 10}} {
		var a, b []chunk.Ref
		var ai, bi []int64
		for i, r := range resident.DataIn(span[0], span[1]) {
			ai, a = append(ai, i), append(a, r)
		}
		for i, r := range spilled.DataIn(span[0], span[1]) {
			bi, b = append(bi, i), append(b, r)
		}
		if len(a) != len(b) {
			t.Fatalf("[%d, %d): %d chunks, spilled %d", span[0], span[1], len(a), len(b))
		}
		for k := range a {
			if ai[k] != bi[k] || a[k] != b[k] {
				t.Fatalf("[%d, %d) entry %d differs", span[0], span[1], k)
			}
		}
	}
	if resident.Digest() != spilled.Digest() {
		t.Fatal("digests differ")
	}
	n := 0
	for range spilled.Changed(resident) {
		n++
	}
	if n != 0 {
		t.Fatalf("%d chunks changed between equal maps", n)
	}
	want, err := resident.Encode()
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if n, err := spilled.EncodeTo(&got); err != nil || n != int64(got.Len()) {
		t.Fatalf("encode spilled: %d bytes written, %d counted: %v", got.Len(), n, err)
	}
	if !bytes.Equal(want, got.Bytes()) {
		t.Fatal("the spilled manifest encodes differently")
	}
	// Decoding a big manifest spills too, and reads back the same.
	withSpill(t, blockEntries, func() {
		back, err := Decode(want)
		if err != nil {
			t.Fatal(err)
		}
		defer back.Close()
		if !back.Spilled() {
			t.Fatal("decoded without spilling")
		}
		again, _ := back.Encode()
		if !bytes.Equal(want, again) {
			t.Fatal("decode and encode of a spilled manifest differ")
		}
		streamed, err := DecodeFrom(bytes.NewReader(want), int64(len(want)))
		if err != nil {
			t.Fatal(err)
		}
		defer streamed.Close()
		if again, _ := streamed.Encode(); !streamed.Spilled() || !bytes.Equal(want, again) {
			t.Fatal("DecodeFrom of a big manifest did not spill or reads back differently")
		}
	})
}

// A dense map of a million chunks keeps its memory to the block index
// and a few blocks once spilled (a 256 GiB disk full of data at 256 KiB
// chunks: ~56 MB resident, ~2 MB spilled).
func TestSpillBoundsMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("a million chunks")
	}
	const chunks = 1 << 20
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	build := func() *Manifest {
		m := New("0193-dense", 0, 256<<10, chunks*(256<<10))
		p := chunk.PackID{9}
		for i := int64(0); i < chunks; i++ {
			id := chunk.Hash(binary.BigEndian.AppendUint64(nil, uint64(i))) // incompressible, as real ids
			if err := m.Append(i, chunk.Ref{ID: id, Loc: chunk.Loc{Pack: p, Off: uint32(i%1000) * 1000, Len: 1000}}); err != nil {
				t.Fatal(err)
			}
		}
		return m
	}
	// zstd's encoder and decoder keep their state across manifests: warm
	// them so the figures are the manifests'.
	warm, _ := Decode(mustEncode(t, big(t, 200000)))
	_ = warm
	before := heap()
	var resident, spilled *Manifest
	withSpill(t, 0, func() { resident = build() })
	inMemory := heap() - before
	runtime.KeepAlive(resident)
	resident = nil
	before = heap()
	withSpill(t, 4*blockEntries, func() { spilled = build() })
	defer spilled.Close()
	onDisk := int64(heap()) - int64(before)
	n := int64(0)
	for range spilled.Data() {
		n++
	}
	f, _ := spilled.spill.f.Stat()
	t.Logf("1 Mi data chunks: %d MB in memory, %d KB spilled (file %d MB); read back %d", inMemory>>20, onDisk>>10, f.Size()>>20, n)
	if n != chunks {
		t.Fatalf("read %d chunks back", n)
	}
	if onDisk > int64(inMemory)/10 {
		t.Fatalf("spilled manifest holds %d bytes of heap, resident %d", onDisk, inMemory)
	}
}

func mustEncode(t testing.TB, m *Manifest) []byte {
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
