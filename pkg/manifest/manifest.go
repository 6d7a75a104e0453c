// Package manifest encodes the chunk map of one disk of one backup: chunk
// index → chunk id, with chunk.Zero for all-zero chunks.
//
// Encoding (big-endian):
//
//	"STRATAMF" | u16 version | u32 chunk size | u64 disk size |
//	u16 len + backup id | u32 disk index | u64 count | count × entry |
//	sha256 of everything before
//
// An entry is, in version 1, the 32-byte chunk id; in version 2 the id and
// where the chunk is stored (16-byte pack id, u32 offset, u32 length; all
// zero for a chunk stored on its own). Encode writes version 1 when no
// entry has a location, so manifests of loose chunks are as they were.
// Decode rejects anything that is not exactly that, with an error.
package manifest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/strata-backup/strata/pkg/chunk"
)

const (
	magic   = "STRATAMF"
	Version = 2
)

// entryLen is the size of one entry in an encoding of version v.
func entryLen(v uint16) int {
	if v == 1 {
		return 32
	}
	return 32 + 16 + 4 + 4
}

// ErrCorrupt is wrapped by every decode error.
var ErrCorrupt = errors.New("corrupt manifest")

// Manifest is the chunk map of one disk.
type Manifest struct {
	BackupID  string
	Disk      int
	ChunkSize int
	DiskSize  int64
	IDs       []chunk.ID
	// Locs, when not nil, says where each chunk is stored (Locs[i] for
	// IDs[i]; the zero Loc: on its own, and for every all-zero chunk).
	Locs []chunk.Loc
}

// Loc is where chunk i is stored (the zero Loc: on its own).
func (m *Manifest) Loc(i int) chunk.Loc {
	if m.Locs == nil {
		return chunk.Loc{}
	}
	return m.Locs[i]
}

// ChunkCount is the number of chunks a disk of size bytes has.
func ChunkCount(size int64, chunkSize int) int64 {
	return (size + int64(chunkSize) - 1) / int64(chunkSize)
}

// ChunkLen is the length of chunk i (the last one may be short).
func (m *Manifest) ChunkLen(i int) int {
	off := int64(i) * int64(m.ChunkSize)
	return int(min(int64(m.ChunkSize), m.DiskSize-off))
}

// DataBytes is what the disk holds in chunks that are not all zero.
func (m *Manifest) DataBytes() int64 {
	var n int64
	for i, id := range m.IDs {
		if !id.IsZero() {
			n += int64(m.ChunkLen(i))
		}
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
	if want := ChunkCount(m.DiskSize, m.ChunkSize); int64(len(m.IDs)) != want {
		return fmt.Errorf("%d entries for a %d-byte disk of %d-byte chunks, want %d", len(m.IDs), m.DiskSize, m.ChunkSize, want)
	}
	if len(m.BackupID) == 0 || len(m.BackupID) > 1024 || m.Disk < 0 {
		return fmt.Errorf("bad backup id or disk index")
	}
	if m.Locs != nil {
		if len(m.Locs) != len(m.IDs) {
			return fmt.Errorf("%d locations for %d entries", len(m.Locs), len(m.IDs))
		}
		for i, l := range m.Locs {
			if l.InPack() && (m.IDs[i].IsZero() || l.Len == 0) || !l.InPack() && l != (chunk.Loc{}) {
				return fmt.Errorf("entry %d: location %s for chunk %s", i, l, m.IDs[i])
			}
		}
	}
	return nil
}

// Encode serialises m.
func (m *Manifest) Encode() ([]byte, error) {
	if err := m.Check(); err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	v := uint16(1)
	if m.Locs != nil {
		v = 2
	}
	var b bytes.Buffer
	b.Grow(64 + len(m.BackupID) + entryLen(v)*len(m.IDs) + sha256.Size)
	b.WriteString(magic)
	binary.Write(&b, binary.BigEndian, v)
	binary.Write(&b, binary.BigEndian, uint32(m.ChunkSize))
	binary.Write(&b, binary.BigEndian, uint64(m.DiskSize))
	binary.Write(&b, binary.BigEndian, uint16(len(m.BackupID)))
	b.WriteString(m.BackupID)
	binary.Write(&b, binary.BigEndian, uint32(m.Disk))
	binary.Write(&b, binary.BigEndian, uint64(len(m.IDs)))
	for i, id := range m.IDs {
		b.Write(id[:])
		if v == 2 {
			l := m.Locs[i]
			b.Write(l.Pack[:])
			binary.Write(&b, binary.BigEndian, l.Off)
			binary.Write(&b, binary.BigEndian, l.Len)
		}
	}
	sum := sha256.Sum256(b.Bytes())
	b.Write(sum[:])
	return b.Bytes(), nil
}

type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b) {
		r.err = errors.New("truncated")
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) u16() uint16 {
	if p := r.take(2); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}
func (r *reader) u32() uint32 {
	if p := r.take(4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}
func (r *reader) u64() uint64 {
	if p := r.take(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

// Decode parses and checks an encoded manifest.
func Decode(data []byte) (*Manifest, error) {
	if len(data) < len(magic)+sha256.Size || string(data[:len(magic)]) != magic {
		return nil, fmt.Errorf("%w: not a manifest", ErrCorrupt)
	}
	body, sum := data[:len(data)-sha256.Size], data[len(data)-sha256.Size:]
	if got := sha256.Sum256(body); !bytes.Equal(got[:], sum) {
		return nil, fmt.Errorf("%w: checksum mismatch", ErrCorrupt)
	}
	r := &reader{b: body[len(magic):]}
	v := r.u16()
	if r.err == nil && (v < 1 || v > Version) {
		return nil, fmt.Errorf("%w: version %d, this build reads 1..%d", ErrCorrupt, v, Version)
	}
	m := &Manifest{}
	m.ChunkSize = int(r.u32())
	m.DiskSize = int64(r.u64())
	m.BackupID = string(r.take(int(r.u16())))
	m.Disk = int(r.u32())
	count := r.u64()
	if r.err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, r.err)
	}
	el := entryLen(v)
	if count != uint64(len(r.b)/el) || len(r.b)%el != 0 {
		return nil, fmt.Errorf("%w: %d entries announced, %d bytes of entries", ErrCorrupt, count, len(r.b))
	}
	m.IDs = make([]chunk.ID, count)
	if v == 2 {
		m.Locs = make([]chunk.Loc, count)
	}
	for i := range m.IDs {
		e := r.b[el*i:]
		copy(m.IDs[i][:], e)
		if v == 2 {
			l := &m.Locs[i]
			copy(l.Pack[:], e[32:])
			l.Off = binary.BigEndian.Uint32(e[48:])
			l.Len = binary.BigEndian.Uint32(e[52:])
		}
	}
	if err := m.Check(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return m, nil
}

// MaxHeaderLen bounds the encoded header (everything before the ids).
const MaxHeaderLen = len(magic) + 2 + 4 + 8 + 2 + 1024 + 4 + 8

// Header is what precedes the entries of an encoded manifest, enough to
// read a slice of them without the rest (a byte range: entry i is at
// IDsAt + EntryLen·i). Such a slice cannot be checked against the
// manifest's checksum: use it only where a wrong entry costs a lookup,
// never a loss.
type Header struct {
	ChunkSize int
	DiskSize  int64
	BackupID  string
	Disk      int
	Count     int64
	IDsAt     int64
	EntryLen  int
}

// DecodeEntries parses n consecutive entries of an encoding described by
// h; locs is nil for a manifest without locations.
func (h *Header) DecodeEntries(b []byte, n int) (ids []chunk.ID, locs []chunk.Loc, err error) {
	if len(b) != n*h.EntryLen {
		return nil, nil, fmt.Errorf("%w: %d bytes for %d entries of %d", ErrCorrupt, len(b), n, h.EntryLen)
	}
	ids = make([]chunk.ID, n)
	if h.EntryLen > 32 {
		locs = make([]chunk.Loc, n)
	}
	for i := range ids {
		e := b[h.EntryLen*i:]
		copy(ids[i][:], e)
		if locs != nil {
			copy(locs[i].Pack[:], e[32:])
			locs[i].Off = binary.BigEndian.Uint32(e[48:])
			locs[i].Len = binary.BigEndian.Uint32(e[52:])
		}
	}
	return ids, locs, nil
}

// DecodeHeader parses the header at the start of an encoded manifest
// (prefix: its first MaxHeaderLen bytes, or all of it when shorter).
func DecodeHeader(prefix []byte) (*Header, error) {
	if len(prefix) < len(magic) || string(prefix[:len(magic)]) != magic {
		return nil, fmt.Errorf("%w: not a manifest", ErrCorrupt)
	}
	r := &reader{b: prefix[len(magic):]}
	v := r.u16()
	if r.err == nil && (v < 1 || v > Version) {
		return nil, fmt.Errorf("%w: version %d, this build reads 1..%d", ErrCorrupt, v, Version)
	}
	h := &Header{ChunkSize: int(r.u32()), DiskSize: int64(r.u64()), EntryLen: entryLen(v)}
	h.BackupID = string(r.take(int(r.u16())))
	h.Disk = int(r.u32())
	h.Count = int64(r.u64())
	if r.err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrCorrupt, r.err)
	}
	h.IDsAt = int64(len(prefix) - len(r.b))
	m := &Manifest{BackupID: h.BackupID, Disk: h.Disk, ChunkSize: h.ChunkSize, DiskSize: h.DiskSize}
	if m.ChunkSize < 64<<10 || m.ChunkSize&(m.ChunkSize-1) != 0 || m.DiskSize <= 0 || h.Count != ChunkCount(h.DiskSize, h.ChunkSize) {
		return nil, fmt.Errorf("%w: header of %d entries for %d bytes of %d-byte chunks", ErrCorrupt, h.Count, h.DiskSize, h.ChunkSize)
	}
	return h, nil
}
