package manifest

import (
	"fmt"
	"io"
	"iter"
	"os"
	"sort"
	"sync"

	"github.com/strata-backup/strata/pkg/chunk"
)

// A manifest of a disk that holds a lot of data does not stay in memory:
// once it has SpillAbove data chunks, the chunks appended so far go to a
// temporary file as version 3 blocks (the encoding, so EncodeTo copies
// them as they are), and from then on every full block follows them. What
// stays in memory is the block index (60 bytes per 4,096 chunks: 1 MB for
// a 16 TiB disk full of data), the open block and a few decoded blocks.
// Readers go through the same methods; a spilled block is decoded (and
// checked) when a read reaches it.
var (
	// SpillAbove: data chunks a manifest holds in memory before it
	// spills (a multiple of 4,096; 0 never spills). 256 Ki chunks are
	// 64 GiB of data at 256 KiB chunks, ~14 MB of map (~40 MB at the peak
	// of its slices' growth).
	SpillAbove = 1 << 18
	// SpillDir: where spill files are made (empty: os.TempDir). They are
	// unlinked at once, so nothing is left behind by a crash.
	SpillDir = ""
)

// decodedBlocks is how many spilled blocks stay decoded per manifest.
const decodedBlocks = 4

type spill struct {
	f      *os.File
	blocks []block
	end    int64 // the chunk the last block ends at: the resident runs start there
	size   int64 // bytes in f
	n      int64 // data chunks in the blocks
	locs   bool  // some spilled chunk is in a pack

	mu    sync.Mutex
	cache []decoded // most recent first
}

type decoded struct {
	j int
	m *Manifest
}

func newSpill() (*spill, error) {
	f, err := TempFile("spill")
	if err != nil {
		return nil, err
	}
	return &spill{f: f}, nil
}

// TempFile is an unlinked temporary file in SpillDir (what names its use):
// it lives while open, so a crash leaves nothing behind.
func TempFile(what string) (*os.File, error) {
	f, err := os.CreateTemp(SpillDir, "strata-manifest-"+what+"-*")
	if err != nil {
		return nil, fmt.Errorf("manifest %s file: %w", what, err)
	}
	os.Remove(f.Name())
	return f, nil
}

// Spilled reports whether part of m lives in a spill file.
func (m *Manifest) Spilled() bool { return m.spill != nil }

// Close releases m's spill file (m must not be used after). A manifest
// that never spilled has nothing to release; one that is dropped without
// Close releases it when collected.
func (m *Manifest) Close() error {
	if m.spill == nil {
		return nil
	}
	return m.spill.f.Close()
}

// spillResident writes the resident chunks as blocks to the spill file,
// the last one ending at end (the next chunk to be appended), and empties
// the resident map.
func (m *Manifest) spillResident(end int64) error {
	if m.spill == nil {
		s, err := newSpill()
		if err != nil {
			return err
		}
		m.spill = s // dropped without Close, its file closes when collected (os.File's own cleanup)
	}
	s := m.spill
	bw := newBlockWriter(s.end, s.size, func(b block, z []byte) error {
		if _, err := s.f.WriteAt(z, b.off); err != nil {
			return fmt.Errorf("manifest spill file: %w", err)
		}
		s.blocks = append(s.blocks, b)
		s.size = b.off + int64(b.len)
		s.end = b.end
		return nil
	})
	for i, r := range m.residentData() {
		if err := bw.add(i, r); err != nil {
			return err
		}
	}
	if err := bw.seal(end); err != nil {
		return err
	}
	s.n += int64(len(m.ids))
	s.locs = s.locs || m.locs != nil
	m.runs, m.ids, m.locs = m.runs[:0], nil, nil
	return nil
}

// block returns spilled block j decoded (from the cache when it is there).
func (s *spill) block(m *Manifest, j int) (*Manifest, error) {
	s.mu.Lock()
	for k, d := range s.cache {
		if d.j == j {
			copy(s.cache[1:k+1], s.cache[:k])
			s.cache[0] = d
			s.mu.Unlock()
			return d.m, nil
		}
	}
	s.mu.Unlock()
	bl := s.blocks[j]
	z := make([]byte, bl.len)
	if _, err := s.f.ReadAt(z, bl.off); err != nil && err != io.EOF {
		return nil, fmt.Errorf("manifest spill file: %w", err)
	}
	part := New(m.BackupID, m.Disk, m.ChunkSize, m.DiskSize)
	if _, err := decodeBlock(part, j, bl, z); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if len(s.cache) < decodedBlocks {
		s.cache = append(s.cache, decoded{})
	}
	copy(s.cache[1:], s.cache[:len(s.cache)-1])
	s.cache[0] = decoded{j: j, m: part}
	s.mu.Unlock()
	return part, nil
}

// at is the spilled block holding chunk i (i < s.end).
func (s *spill) at(i int64) int {
	return sort.Search(len(s.blocks), func(j int) bool { return s.blocks[j].end > i })
}

// spilledRef is chunk i's reference from the spill (i < s.end). A block
// that cannot be read back is a broken local file, not a bad backup:
// it panics rather than answer a wrong chunk.
func (m *Manifest) spilledRef(i int64) chunk.Ref {
	p, err := m.spill.block(m, m.spill.at(i))
	if err != nil {
		panic(fmt.Sprintf("manifest %s disk %d: %v", m.BackupID, m.Disk, err))
	}
	return p.Ref(i)
}

// spilledData yields the spilled chunks in [from, to).
func (m *Manifest) spilledData(from, to int64) iter.Seq2[int64, chunk.Ref] {
	return func(yield func(int64, chunk.Ref) bool) {
		s := m.spill
		for j := s.at(from); j < len(s.blocks) && s.blocks[j].first < to; j++ {
			p, err := s.block(m, j)
			if err != nil {
				panic(fmt.Sprintf("manifest %s disk %d: %v", m.BackupID, m.Disk, err))
			}
			for i, r := range p.DataIn(from, to) {
				if !yield(i, r) {
					return
				}
			}
		}
	}
}
