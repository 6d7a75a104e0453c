// Package manifest holds the chunk map of one disk of one backup: chunk
// index → chunk id and where the chunk is stored; every chunk not named is
// all zero.
//
// A manifest in memory keeps only the chunks that hold data, as runs of
// consecutive indices, so its size follows what the disk holds, not how
// big it is: a 16 TiB disk with a few MiB written is a few entries. Every
// reader walks the data with Data or DataIn (zero runs cost nothing) or
// asks for one chunk with ID/Loc/Ref (a binary search over the runs).
// Manifests are built in disk order with Append (merge, decode).
//
// The encodings are in codec.go: version 3 is written, versions 1 and 2
// (56 bytes per chunk, zeros included) are still read.
package manifest

import (
	"errors"
	"fmt"
	"iter"
	"sort"

	"github.com/strata-backup/strata/pkg/chunk"
)

// ErrCorrupt is wrapped by every decode error.
var ErrCorrupt = errors.New("corrupt manifest")

// run is a stretch of consecutive chunks that hold data.
type run struct {
	first int64 // the run's first chunk index
	at    int   // where its first chunk is in ids and locs
	n     int   // how many chunks
}

// Manifest is the chunk map of one disk.
type Manifest struct {
	BackupID  string
	Disk      int
	ChunkSize int
	DiskSize  int64

	runs []run
	ids  []chunk.ID
	// locs is nil until a chunk stored in a pack is appended; then
	// locs[k] is where ids[k] is stored (the zero Loc: on its own).
	locs []chunk.Loc
	// spill: the chunks before the resident ones, in a file (spill.go);
	// nil for all but the biggest manifests.
	spill *spill
}

// New starts an empty (all-zero) manifest for a disk.
func New(backupID string, disk, chunkSize int, diskSize int64) *Manifest {
	return &Manifest{BackupID: backupID, Disk: disk, ChunkSize: chunkSize, DiskSize: diskSize}
}

// FromIDs builds a manifest from a dense map of every chunk (zero ids for
// all-zero chunks; locs nil or one per id). For small disks and tests: the
// slices cost what the disk's size does.
func FromIDs(backupID string, disk, chunkSize int, diskSize int64, ids []chunk.ID, locs []chunk.Loc) (*Manifest, error) {
	m := New(backupID, disk, chunkSize, diskSize)
	if int64(len(ids)) != m.Count() || locs != nil && len(locs) != len(ids) {
		return nil, fmt.Errorf("%d ids and %d locations for a disk of %d chunks", len(ids), len(locs), m.Count())
	}
	for i, id := range ids {
		r := chunk.Ref{ID: id}
		if locs != nil {
			r.Loc = locs[i]
		}
		if err := m.Append(int64(i), r); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// ChunkCount is the number of chunks a disk of size bytes has.
func ChunkCount(size int64, chunkSize int) int64 {
	return (size + int64(chunkSize) - 1) / int64(chunkSize)
}

// Count is the number of chunks of the disk, zero ones included.
func (m *Manifest) Count() int64 { return ChunkCount(m.DiskSize, m.ChunkSize) }

// DataChunks is the number of chunks that are not all zero.
func (m *Manifest) DataChunks() int64 {
	if m.spill != nil {
		return m.spill.n + int64(len(m.ids))
	}
	return int64(len(m.ids))
}

// ZeroChunks is the number of all-zero chunks.
func (m *Manifest) ZeroChunks() int64 { return m.Count() - m.DataChunks() }

// HasLocs reports whether any chunk is stored in a pack.
func (m *Manifest) HasLocs() bool { return m.locs != nil || m.spill != nil && m.spill.locs }

// next is the lowest index Append accepts.
func (m *Manifest) next() int64 {
	if len(m.runs) == 0 {
		if m.spill != nil {
			return m.spill.end
		}
		return 0
	}
	r := m.runs[len(m.runs)-1]
	return r.first + int64(r.n)
}

// Append records chunk i, which must come after every chunk recorded so
// far; a zero id (with the zero Loc) records nothing, as every chunk not
// appended is all zero.
func (m *Manifest) Append(i int64, r chunk.Ref) error {
	if r.ID.IsZero() {
		if r.Loc != (chunk.Loc{}) {
			return fmt.Errorf("chunk %d: location %s for an all-zero chunk", i, r.Loc)
		}
		if i < 0 || i >= m.Count() {
			return fmt.Errorf("chunk %d is not on a disk of %d chunks", i, m.Count())
		}
		return nil
	}
	if i < m.next() || i >= m.Count() {
		return fmt.Errorf("chunk %d appended after chunk %d on a disk of %d chunks", i, m.next()-1, m.Count())
	}
	if r.Loc.InPack() && r.Loc.Len == 0 || !r.Loc.InPack() && r.Loc != (chunk.Loc{}) {
		return fmt.Errorf("chunk %d: location %s for chunk %s", i, r.Loc, r.ID)
	}
	// Past SpillAbove the resident chunks go to the spill file, then every
	// full block.
	if n := len(m.ids); n > 0 && n%blockEntries == 0 && (m.spill != nil || SpillAbove > 0 && n >= SpillAbove) {
		if err := m.spillResident(i); err != nil {
			return err
		}
	}
	if n := len(m.runs); n > 0 && m.runs[n-1].first+int64(m.runs[n-1].n) == i {
		m.runs[n-1].n++
	} else {
		m.runs = append(m.runs, run{first: i, at: len(m.ids), n: 1})
	}
	m.ids = append(m.ids, r.ID)
	if r.Loc.InPack() && m.locs == nil {
		m.locs = make([]chunk.Loc, len(m.ids)-1, cap(m.ids))
	}
	if m.locs != nil {
		m.locs = append(m.locs, r.Loc)
	}
	return nil
}

// find is where chunk i is in ids, or -1 for an all-zero chunk.
func (m *Manifest) find(i int64) int {
	k := sort.Search(len(m.runs), func(k int) bool { return m.runs[k].first > i }) - 1
	if k < 0 || i >= m.runs[k].first+int64(m.runs[k].n) {
		return -1
	}
	return m.runs[k].at + int(i-m.runs[k].first)
}

// ID is chunk i's id (chunk.Zero for an all-zero chunk or one off the disk).
func (m *Manifest) ID(i int64) chunk.ID { return m.Ref(i).ID }

// Loc is where chunk i is stored (the zero Loc: on its own, or all zero).
func (m *Manifest) Loc(i int64) chunk.Loc { return m.Ref(i).Loc }

// Ref is chunk i's id and location.
func (m *Manifest) Ref(i int64) chunk.Ref {
	if m.spill != nil && i >= 0 && i < m.spill.end {
		return m.spilledRef(i)
	}
	k := m.find(i)
	if k < 0 {
		return chunk.Ref{}
	}
	return m.ref(k)
}

func (m *Manifest) ref(k int) chunk.Ref {
	r := chunk.Ref{ID: m.ids[k]}
	if m.locs != nil {
		r.Loc = m.locs[k]
	}
	return r
}

// Data yields every chunk that holds data, with its index, in disk order.
func (m *Manifest) Data() iter.Seq2[int64, chunk.Ref] { return m.DataIn(0, m.Count()) }

// DataIn yields the chunks in [from, to) that hold data, in disk order.
func (m *Manifest) DataIn(from, to int64) iter.Seq2[int64, chunk.Ref] {
	if m.spill == nil || from >= m.spill.end {
		return m.residentIn(from, to)
	}
	return func(yield func(int64, chunk.Ref) bool) {
		for i, r := range m.spilledData(from, min(to, m.spill.end)) {
			if !yield(i, r) {
				return
			}
		}
		for i, r := range m.residentIn(max(from, m.spill.end), to) {
			if !yield(i, r) {
				return
			}
		}
	}
}

// residentData yields the chunks held in memory.
func (m *Manifest) residentData() iter.Seq2[int64, chunk.Ref] { return m.residentIn(0, m.Count()) }

func (m *Manifest) residentIn(from, to int64) iter.Seq2[int64, chunk.Ref] {
	return func(yield func(int64, chunk.Ref) bool) {
		k := sort.Search(len(m.runs), func(k int) bool { return m.runs[k].first+int64(m.runs[k].n) > from })
		for ; k < len(m.runs) && m.runs[k].first < to; k++ {
			r := m.runs[k]
			for i := max(from, r.first); i < min(to, r.first+int64(r.n)); i++ {
				if !yield(i, m.ref(r.at+int(i-r.first))) {
					return
				}
			}
		}
	}
}

// ChunkLen is the length of chunk i (the last one may be short).
func (m *Manifest) ChunkLen(i int64) int {
	off := i * int64(m.ChunkSize)
	return int(min(int64(m.ChunkSize), m.DiskSize-off))
}

// DataBytes is what the disk holds in chunks that are not all zero.
func (m *Manifest) DataBytes() int64 {
	n := m.DataChunks() * int64(m.ChunkSize)
	if last := m.Count() - 1; !m.ID(last).IsZero() {
		n -= int64(m.ChunkSize - m.ChunkLen(last))
	}
	return n
}

// Check reports an inconsistent manifest.
func (m *Manifest) Check() error {
	if m.ChunkSize < 64<<10 || m.ChunkSize > 16<<20 || m.ChunkSize&(m.ChunkSize-1) != 0 {
		return fmt.Errorf("chunk size %d is not a power of two in 64 KiB..16 MiB", m.ChunkSize)
	}
	if m.DiskSize <= 0 {
		return fmt.Errorf("disk size %d", m.DiskSize)
	}
	if len(m.BackupID) == 0 || len(m.BackupID) > 1024 || m.Disk < 0 {
		return fmt.Errorf("bad backup id or disk index")
	}
	if m.locs != nil && len(m.locs) != len(m.ids) {
		return fmt.Errorf("%d locations for %d entries", len(m.locs), len(m.ids))
	}
	at, end := 0, int64(0)
	if m.spill != nil {
		// The spilled blocks were checked as they were appended; they
		// must tile the disk up to the resident chunks.
		end = m.spill.end
		if len(m.ids) == 0 && end != m.Count() {
			return fmt.Errorf("spilled blocks end at chunk %d of %d", end, m.Count())
		}
	}
	for _, r := range m.runs {
		if r.n <= 0 || r.at != at || r.first < end {
			return fmt.Errorf("chunk runs out of order at chunk %d", r.first)
		}
		at, end = at+r.n, r.first+int64(r.n)
	}
	if at != len(m.ids) || end > m.Count() {
		return fmt.Errorf("%d entries up to chunk %d for a %d-byte disk of %d-byte chunks", len(m.ids), end, m.DiskSize, m.ChunkSize)
	}
	for k, id := range m.ids {
		if id.IsZero() {
			return fmt.Errorf("entry %d: the zero id recorded", k)
		}
		if m.locs != nil {
			if l := m.locs[k]; l.InPack() && l.Len == 0 || !l.InPack() && l != (chunk.Loc{}) {
				return fmt.Errorf("entry %d: location %s for chunk %s", k, l, id)
			}
		}
	}
	return nil
}

// Changed yields, in disk order, every chunk whose id differs between m
// and prev (two maps of disks of the same size): the chunks to rewrite to
// turn a copy of prev into m. The cost follows the data of both.
func (m *Manifest) Changed(prev *Manifest) iter.Seq[int64] {
	return func(yield func(int64) bool) {
		next, stop := iter.Pull2(prev.Data())
		defer stop()
		pi, pr, pok := next()
		for i, r := range m.Data() {
			for pok && pi < i { // data in prev, zero in m
				if !yield(pi) {
					return
				}
				pi, pr, pok = next()
			}
			if pok && pi == i {
				same := pr.ID == r.ID
				pi, pr, pok = next()
				if same {
					continue
				}
			}
			if !yield(i) {
				return
			}
		}
		for ; pok; pi, _, pok = next() {
			if !yield(pi) {
				return
			}
		}
	}
}
