// Package manifest encodes the chunk map of one disk of one backup: chunk
// index → chunk id, with chunk.Zero for all-zero chunks.
//
// Encoding (version 1, big-endian):
//
//	"STRATAMF" | u16 version | u32 chunk size | u64 disk size |
//	u16 len + backup id | u32 disk index | u64 count | count × 32-byte ids |
//	sha256 of everything before
//
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
	Version = 1
)

// ErrCorrupt is wrapped by every decode error.
var ErrCorrupt = errors.New("corrupt manifest")

// Manifest is the chunk map of one disk.
type Manifest struct {
	BackupID  string
	Disk      int
	ChunkSize int
	DiskSize  int64
	IDs       []chunk.ID
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
	return nil
}

// Encode serialises m.
func (m *Manifest) Encode() ([]byte, error) {
	if err := m.Check(); err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	var b bytes.Buffer
	b.Grow(64 + len(m.BackupID) + 32*len(m.IDs) + sha256.Size)
	b.WriteString(magic)
	binary.Write(&b, binary.BigEndian, uint16(Version))
	binary.Write(&b, binary.BigEndian, uint32(m.ChunkSize))
	binary.Write(&b, binary.BigEndian, uint64(m.DiskSize))
	binary.Write(&b, binary.BigEndian, uint16(len(m.BackupID)))
	b.WriteString(m.BackupID)
	binary.Write(&b, binary.BigEndian, uint32(m.Disk))
	binary.Write(&b, binary.BigEndian, uint64(len(m.IDs)))
	for _, id := range m.IDs {
		b.Write(id[:])
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
	if v := r.u16(); r.err == nil && v != Version {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrCorrupt, v, Version)
	}
	m := &Manifest{}
	m.ChunkSize = int(r.u32())
	m.DiskSize = int64(r.u64())
	m.BackupID = string(r.take(int(r.u16())))
	m.Disk = int(r.u32())
	count := r.u64()
	if r.err == nil && count != uint64(len(r.b))/32 || len(r.b)%32 != 0 {
		return nil, fmt.Errorf("%w: %d entries announced, %d bytes of entries", ErrCorrupt, count, len(r.b))
	}
	if r.err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, r.err)
	}
	m.IDs = make([]chunk.ID, count)
	for i := range m.IDs {
		copy(m.IDs[i][:], r.b[32*i:])
	}
	if err := m.Check(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return m, nil
}

// MaxHeaderLen bounds the encoded header (everything before the ids).
const MaxHeaderLen = len(magic) + 2 + 4 + 8 + 2 + 1024 + 4 + 8

// Header is what precedes the ids of an encoded manifest, enough to read a
// slice of its ids without the rest (a byte range: entry i is at
// IDsAt + 32·i). Such a slice cannot be checked against the manifest's
// checksum: use it only where a wrong id costs a lookup, never a loss.
type Header struct {
	ChunkSize int
	DiskSize  int64
	BackupID  string
	Disk      int
	Count     int64
	IDsAt     int64
}

// DecodeHeader parses the header at the start of an encoded manifest
// (prefix: its first MaxHeaderLen bytes, or all of it when shorter).
func DecodeHeader(prefix []byte) (*Header, error) {
	if len(prefix) < len(magic) || string(prefix[:len(magic)]) != magic {
		return nil, fmt.Errorf("%w: not a manifest", ErrCorrupt)
	}
	r := &reader{b: prefix[len(magic):]}
	if v := r.u16(); r.err == nil && v != Version {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrCorrupt, v, Version)
	}
	h := &Header{ChunkSize: int(r.u32()), DiskSize: int64(r.u64())}
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
