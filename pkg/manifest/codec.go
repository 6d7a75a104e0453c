package manifest

// Encodings (big-endian). Every version starts with the same header:
//
//	"STRATAMF" | u16 version | u32 chunk size | u64 disk size |
//	u16 len + backup id | u32 disk index | u64 chunk count |
//
// Versions 1 and 2 (read, no longer written) follow it with one entry per
// chunk, zero chunks included, and the sha256 of everything before: in
// version 1 the 32-byte id, in version 2 the id and its location (16-byte
// pack id, u32 offset, u32 length; all zero for a chunk on its own) — 56
// bytes per chunk, 3.5 GB for a 16 TiB disk of 256 KiB chunks however
// little it holds.
//
// Version 3 records only the chunks that hold data, in blocks of at most
// blockEntries of them, each compressed on its own with zstd:
//
//	header | u64 data chunks | u32 block count |
//	block count × (u64 first chunk | u64 end chunk | u64 offset | u32 length | sha256 of the stored block) |
//	blocks | sha256 of everything before
//
// Block j covers chunks [first, end) (the first block starts at 0, each
// starts where the one before ended, the last ends at the chunk count) and
// its offset counts from the end of the index. A block decompresses to
// runs, each: uvarint zero chunks skipped since the block's start or the
// run before, uvarint data chunks, then per chunk its 32-byte id and a
// location: tag 0 (on its own), tag 1 + pack id + uvarint offset + uvarint
// length, tag 2 + uvarint length (same pack, right after the chunk before),
// tag 3 + uvarint offset + uvarint length (same pack). "The chunk before"
// is within the block, so a block reads on its own: a reader of a range
// needs the header, the index and the blocks it covers (ReadSlice).

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/klauspost/compress/zstd"

	"github.com/strata-backup/strata/pkg/chunk"
)

const (
	magic   = "STRATAMF"
	Version = 3

	// blockEntries bounds the data chunks of one block (about 200 KiB
	// uncompressed): the unit of a range read and of decompression.
	blockEntries = 4096
	// maxBlockRaw bounds what one block may decompress to, so a hostile
	// manifest cannot make a reader allocate more.
	maxBlockRaw = blockEntries * (32 + 1 + 16 + 2*binary.MaxVarintLen32 + 2*binary.MaxVarintLen64)
	indexEntry  = 8 + 8 + 8 + 4 + sha256.Size
)

var (
	zenc, _ = zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
	zdec, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(maxBlockRaw), zstd.WithDecoderMaxWindow(1<<20))
)

// MaxHeaderLen bounds the encoded header and, in version 3, the counts
// after it (everything before the entries or the index).
const MaxHeaderLen = len(magic) + 2 + 4 + 8 + 2 + 1024 + 4 + 8 + 8 + 4

func (m *Manifest) header(v uint16) []byte {
	var b bytes.Buffer
	b.WriteString(magic)
	binary.Write(&b, binary.BigEndian, v)
	binary.Write(&b, binary.BigEndian, uint32(m.ChunkSize))
	binary.Write(&b, binary.BigEndian, uint64(m.DiskSize))
	binary.Write(&b, binary.BigEndian, uint16(len(m.BackupID)))
	b.WriteString(m.BackupID)
	binary.Write(&b, binary.BigEndian, uint32(m.Disk))
	binary.Write(&b, binary.BigEndian, uint64(m.Count()))
	return b.Bytes()
}

// block is one index entry of a version 3 encoding.
type block struct {
	first, end int64
	off        int64
	len        uint32
	sum        [sha256.Size]byte
}

// blockWriter encodes data chunks, given in disk order, into version 3
// blocks of at most blockEntries, handing each to emit with its index
// entry (offsets counted from off).
type blockWriter struct {
	emit    func(b block, z []byte) error
	raw     []byte // the open block
	entries []byte // the open run's chunks
	n       int    // data chunks in the open block
	runN    int    // data chunks in the open run
	gap     int64  // zero chunks before the open run
	cursor  int64  // the chunk after the last one written (or the block's first)
	first   int64  // the open block's first chunk
	off     int64  // the open block's offset
	prev    chunk.Loc
}

func newBlockWriter(first, off int64, emit func(block, []byte) error) *blockWriter {
	return &blockWriter{emit: emit, first: first, cursor: first, off: off}
}

// A run's count is only known at its end, so its chunks wait in entries
// until it closes.
func (w *blockWriter) closeRun() {
	if w.runN > 0 {
		w.raw = binary.AppendUvarint(w.raw, uint64(w.gap))
		w.raw = binary.AppendUvarint(w.raw, uint64(w.runN))
		w.raw = append(w.raw, w.entries...)
		w.entries, w.runN = w.entries[:0], 0
	}
}

// seal closes the open block as covering chunks [first, end).
func (w *blockWriter) seal(end int64) error {
	w.closeRun()
	z := zenc.EncodeAll(w.raw, nil)
	b := block{first: w.first, end: end, off: w.off, len: uint32(len(z)), sum: sha256.Sum256(z)}
	w.raw, w.n, w.first, w.cursor, w.prev, w.off = w.raw[:0], 0, end, end, chunk.Loc{}, w.off+int64(len(z))
	return w.emit(b, z)
}

func (w *blockWriter) add(i int64, r chunk.Ref) error {
	if w.n == blockEntries {
		if err := w.seal(i); err != nil {
			return err
		}
	}
	if w.runN == 0 || i != w.cursor {
		w.closeRun()
		w.gap = i - w.cursor
	}
	w.entries = append(w.entries, r.ID[:]...)
	l := r.Loc
	switch {
	case !l.InPack():
		w.entries = append(w.entries, 0)
	case l.Pack != w.prev.Pack:
		w.entries = append(w.entries, 1)
		w.entries = append(w.entries, l.Pack[:]...)
		w.entries = binary.AppendUvarint(w.entries, uint64(l.Off))
		w.entries = binary.AppendUvarint(w.entries, uint64(l.Len))
	case uint64(l.Off) == uint64(w.prev.Off)+uint64(w.prev.Len):
		w.entries = append(w.entries, 2)
		w.entries = binary.AppendUvarint(w.entries, uint64(l.Len))
	default:
		w.entries = append(w.entries, 3)
		w.entries = binary.AppendUvarint(w.entries, uint64(l.Off))
		w.entries = binary.AppendUvarint(w.entries, uint64(l.Len))
	}
	if l.InPack() {
		w.prev = l
	}
	w.runN++
	w.n++
	w.cursor = i + 1
	return nil
}

// Encode serialises m in version 3.
func (m *Manifest) Encode() ([]byte, error) {
	var b bytes.Buffer
	if _, err := m.EncodeTo(&b); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// EncodeTo writes m in version 3 to w and returns the bytes written. A
// spilled manifest streams its blocks from the spill file: the encoding
// never exists in memory whole.
func (m *Manifest) EncodeTo(w io.Writer) (int64, error) {
	if err := m.Check(); err != nil {
		return 0, fmt.Errorf("encode manifest: %w", err)
	}
	var (
		blocks []block
		tail   bytes.Buffer // the resident chunks' blocks
		first  int64
		off    int64
	)
	if m.spill != nil {
		blocks = append(blocks, m.spill.blocks...)
		first, off = m.spill.end, m.spill.size
	}
	bw := newBlockWriter(first, off, func(b block, z []byte) error {
		blocks = append(blocks, b)
		tail.Write(z)
		return nil
	})
	for i, r := range m.residentData() {
		bw.add(i, r)
	}
	if bw.n > 0 {
		bw.seal(m.Count())
	}
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(w, h)}
	head := bytes.NewBuffer(m.header(Version))
	binary.Write(head, binary.BigEndian, uint64(m.DataChunks()))
	binary.Write(head, binary.BigEndian, uint32(len(blocks)))
	for _, b := range blocks {
		binary.Write(head, binary.BigEndian, uint64(b.first))
		binary.Write(head, binary.BigEndian, uint64(b.end))
		binary.Write(head, binary.BigEndian, uint64(b.off))
		binary.Write(head, binary.BigEndian, b.len)
		head.Write(b.sum[:])
	}
	if _, err := cw.Write(head.Bytes()); err != nil {
		return cw.n, err
	}
	if m.spill != nil {
		if _, err := io.Copy(cw, io.NewSectionReader(m.spill.f, 0, m.spill.size)); err != nil {
			return cw.n, fmt.Errorf("encode manifest: %w", err)
		}
	}
	if _, err := cw.Write(tail.Bytes()); err != nil {
		return cw.n, err
	}
	_, err := w.Write(h.Sum(nil))
	return cw.n + sha256.Size, err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
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
func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errors.New("bad varint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

// Header is what precedes the entries of an encoded manifest: enough to
// read a range of them without the rest (ReadSlice).
type Header struct {
	Version   uint16
	ChunkSize int
	DiskSize  int64
	BackupID  string
	Disk      int
	Count     int64
	// Versions 1 and 2: entry i is at IDsAt + EntryLen·i.
	IDsAt    int64
	EntryLen int
	// Version 3: the data chunks, and the index of Blocks entries at
	// IndexAt (the blocks follow it).
	DataChunks int64
	Blocks     int
	IndexAt    int64
}

// entryLen is the size of one entry in an encoding of version 1 or 2.
func entryLen(v uint16) int {
	if v == 1 {
		return 32
	}
	return 32 + 16 + 4 + 4
}

// DecodeHeader parses the header at the start of an encoded manifest
// (prefix: its first MaxHeaderLen bytes, or all of it when shorter).
func DecodeHeader(prefix []byte) (*Header, error) {
	h, _, err := decodeHeader(prefix)
	return h, err
}

func decodeHeader(b []byte) (*Header, *reader, error) {
	if len(b) < len(magic) || string(b[:len(magic)]) != magic {
		return nil, nil, fmt.Errorf("%w: not a manifest", ErrCorrupt)
	}
	r := &reader{b: b[len(magic):]}
	v := r.u16()
	if r.err == nil && (v < 1 || v > Version) {
		return nil, nil, fmt.Errorf("%w: version %d, this build reads 1..%d", ErrCorrupt, v, Version)
	}
	h := &Header{Version: v, ChunkSize: int(r.u32()), DiskSize: int64(r.u64())}
	h.BackupID = string(r.take(int(r.u16())))
	h.Disk = int(r.u32())
	h.Count = int64(r.u64())
	if v < 3 {
		h.EntryLen = entryLen(v)
		h.IDsAt = int64(len(b) - len(r.b))
	} else {
		h.DataChunks = int64(r.u64())
		h.Blocks = int(r.u32())
		h.IndexAt = int64(len(b) - len(r.b))
	}
	if r.err != nil {
		return nil, nil, fmt.Errorf("%w: header: %v", ErrCorrupt, r.err)
	}
	m := New(h.BackupID, h.Disk, h.ChunkSize, h.DiskSize)
	if err := m.Check(); err != nil || h.Count != m.Count() {
		return nil, nil, fmt.Errorf("%w: header of %d entries for %d bytes of %d-byte chunks", ErrCorrupt, h.Count, h.DiskSize, h.ChunkSize)
	}
	if v == 3 && (h.DataChunks > h.Count || h.Blocks < 0 || int64(h.Blocks) > h.Count || int64(h.Blocks) > (h.DataChunks+blockEntries-1)/blockEntries) {
		return nil, nil, fmt.Errorf("%w: %d blocks of %d data chunks on a disk of %d", ErrCorrupt, h.Blocks, h.DataChunks, h.Count)
	}
	return h, r, nil
}

// Decode parses and checks an encoded manifest of any version.
func Decode(data []byte) (*Manifest, error) {
	if len(data) < len(magic)+sha256.Size || string(data[:len(magic)]) != magic {
		return nil, fmt.Errorf("%w: not a manifest", ErrCorrupt)
	}
	body, sum := data[:len(data)-sha256.Size], data[len(data)-sha256.Size:]
	if got := sha256.Sum256(body); !bytes.Equal(got[:], sum) {
		return nil, fmt.Errorf("%w: checksum mismatch", ErrCorrupt)
	}
	h, r, err := decodeHeader(body)
	if err != nil {
		return nil, err
	}
	m := New(h.BackupID, h.Disk, h.ChunkSize, h.DiskSize)
	if h.Version < 3 {
		err = decodeDense(m, h, r.b)
	} else {
		err = decodeBlocks(m, h, r.b)
	}
	if err != nil {
		return nil, err
	}
	if err := m.Check(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return m, nil
}

func decodeDense(m *Manifest, h *Header, b []byte) error {
	el := h.EntryLen
	if h.Count != int64(len(b)/el) || len(b)%el != 0 {
		return fmt.Errorf("%w: %d entries announced, %d bytes of entries", ErrCorrupt, h.Count, len(b))
	}
	for i := int64(0); i < h.Count; i++ {
		if err := m.Append(i, entryAt(b[int64(el)*i:], el)); err != nil {
			return fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
	}
	return nil
}

// DecodeEntries parses n consecutive entries of a version 1 or 2 encoding
// described by h; locs is nil for a manifest without locations.
func (h *Header) DecodeEntries(b []byte, n int) (ids []chunk.ID, locs []chunk.Loc, err error) {
	if h.Version >= 3 || len(b) != n*h.EntryLen {
		return nil, nil, fmt.Errorf("%w: %d bytes for %d entries of %d", ErrCorrupt, len(b), n, h.EntryLen)
	}
	ids = make([]chunk.ID, n)
	if h.EntryLen > 32 {
		locs = make([]chunk.Loc, n)
	}
	for i := range ids {
		r := entryAt(b[h.EntryLen*i:], h.EntryLen)
		ids[i] = r.ID
		if locs != nil {
			locs[i] = r.Loc
		}
	}
	return ids, locs, nil
}

// entryAt parses the version 1 or 2 entry (of el bytes) at the start of e.
func entryAt(e []byte, el int) chunk.Ref {
	var r chunk.Ref
	copy(r.ID[:], e)
	if el > 32 {
		copy(r.Loc.Pack[:], e[32:])
		r.Loc.Off = binary.BigEndian.Uint32(e[48:])
		r.Loc.Len = binary.BigEndian.Uint32(e[52:])
	}
	return r
}

// decodeIndex parses the block index of a version 3 encoding (b starts at
// IndexAt) and checks that the blocks tile the disk.
func decodeIndex(h *Header, b []byte) ([]block, error) {
	if int64(len(b)) < int64(h.Blocks)*indexEntry {
		return nil, fmt.Errorf("%w: index of %d blocks truncated", ErrCorrupt, h.Blocks)
	}
	r := &reader{b: b}
	blocks := make([]block, h.Blocks)
	var end, off int64
	for j := range blocks {
		bl := &blocks[j]
		bl.first, bl.end, bl.off, bl.len = int64(r.u64()), int64(r.u64()), int64(r.u64()), r.u32()
		copy(bl.sum[:], r.take(sha256.Size))
		if bl.first != end || bl.end <= bl.first || bl.end > h.Count || bl.off != off || bl.len == 0 {
			return nil, fmt.Errorf("%w: block %d covers [%d, %d) at %d+%d", ErrCorrupt, j, bl.first, bl.end, bl.off, bl.len)
		}
		end, off = bl.end, off+int64(bl.len)
	}
	if h.Blocks > 0 && end != h.Count {
		return nil, fmt.Errorf("%w: blocks end at chunk %d of %d", ErrCorrupt, end, h.Count)
	}
	return blocks, nil
}

// decodeBlock checks, decompresses and parses one stored block, appending
// its chunks to m.
func decodeBlock(m *Manifest, j int, bl block, z []byte) (int, error) {
	if sha256.Sum256(z) != bl.sum {
		return 0, fmt.Errorf("%w: block %d checksum mismatch", ErrCorrupt, j)
	}
	raw, err := zdec.DecodeAll(z, nil)
	if err != nil {
		return 0, fmt.Errorf("%w: block %d: %v", ErrCorrupt, j, err)
	}
	r := &reader{b: raw}
	cursor, n := bl.first, 0
	var prev chunk.Loc
	for len(r.b) > 0 && r.err == nil {
		gap, cnt := r.uvarint(), r.uvarint()
		if r.err != nil || gap > uint64(bl.end-cursor) || cnt == 0 || cnt > uint64(bl.end-cursor)-gap || n+int(cnt) > blockEntries {
			return 0, fmt.Errorf("%w: block %d: a run of %d after %d zero chunks from chunk %d", ErrCorrupt, j, cnt, gap, cursor)
		}
		cursor += int64(gap)
		for range cnt {
			var ref chunk.Ref
			copy(ref.ID[:], r.take(32))
			switch tag := r.take(1); {
			case tag == nil:
			case tag[0] == 0:
			case tag[0] == 1:
				copy(ref.Loc.Pack[:], r.take(16))
				ref.Loc.Off, ref.Loc.Len = u32(r), u32(r)
			case tag[0] == 2 && prev.InPack():
				ref.Loc = chunk.Loc{Pack: prev.Pack, Off: prev.Off + prev.Len, Len: u32(r)}
			case tag[0] == 3 && prev.InPack():
				ref.Loc = chunk.Loc{Pack: prev.Pack, Off: u32(r), Len: u32(r)}
			default:
				r.err = fmt.Errorf("location tag %d", tag[0])
			}
			if r.err != nil {
				break
			}
			if ref.ID.IsZero() {
				return 0, fmt.Errorf("%w: block %d: the zero id at chunk %d", ErrCorrupt, j, cursor)
			}
			if err := m.Append(cursor, ref); err != nil {
				return 0, fmt.Errorf("%w: block %d: %v", ErrCorrupt, j, err)
			}
			if ref.Loc.InPack() {
				prev = ref.Loc
			}
			cursor++
			n++
		}
	}
	if r.err != nil {
		return 0, fmt.Errorf("%w: block %d: %v", ErrCorrupt, j, r.err)
	}
	if n == 0 {
		return 0, fmt.Errorf("%w: block %d is empty", ErrCorrupt, j)
	}
	return n, nil
}

func u32(r *reader) uint32 {
	v := r.uvarint()
	if v > 1<<32-1 && r.err == nil {
		r.err = fmt.Errorf("%d does not fit 32 bits", v)
	}
	return uint32(v)
}

func decodeBlocks(m *Manifest, h *Header, b []byte) error {
	blocks, err := decodeIndex(h, b)
	if err != nil {
		return err
	}
	data := b[int64(h.Blocks)*indexEntry:]
	var n int64
	for j, bl := range blocks {
		if bl.off+int64(bl.len) > int64(len(data)) {
			return fmt.Errorf("%w: block %d beyond the end", ErrCorrupt, j)
		}
		k, err := decodeBlock(m, j, bl, data[bl.off:bl.off+int64(bl.len)])
		if err != nil {
			return err
		}
		n += int64(k)
	}
	if len(blocks) > 0 {
		last := blocks[len(blocks)-1]
		if last.off+int64(last.len) != int64(len(data)) {
			return fmt.Errorf("%w: %d bytes after the last block", ErrCorrupt, int64(len(data))-last.off-int64(last.len))
		}
	} else if len(data) != 0 {
		return fmt.Errorf("%w: %d bytes after an empty index", ErrCorrupt, len(data))
	}
	if n != h.DataChunks {
		return fmt.Errorf("%w: %d data chunks, header says %d", ErrCorrupt, n, h.DataChunks)
	}
	return nil
}

// ReadSlice reads chunks [first, first+count) of an encoded manifest
// through get, a ranged read of it, as a dense slice (zero ids for zero
// chunks; locs nil when the range has none in a pack): the header, then in
// version 3 the index and the blocks that cover the range, in version 1
// and 2 the entries' bytes. Each block read is checked against its index
// entry, but the index and older versions' entries cannot be checked
// without reading everything: use a slice only where a wrong entry costs
// a lookup, never a loss.
func ReadSlice(get func(off, n int64) ([]byte, error), first, count int64) (*Header, []chunk.ID, []chunk.Loc, error) {
	prefix, err := get(0, int64(MaxHeaderLen))
	if err != nil {
		return nil, nil, nil, err
	}
	h, err := DecodeHeader(prefix)
	if err != nil {
		return nil, nil, nil, err
	}
	if first < 0 || count <= 0 || first+count > h.Count || count > 1<<24 {
		return h, nil, nil, fmt.Errorf("chunks %d+%d of %d asked for", first, count, h.Count)
	}
	if h.Version < 3 {
		el := int64(h.EntryLen)
		b, err := get(h.IDsAt+el*first, el*count)
		if err != nil {
			return h, nil, nil, err
		}
		ids, locs, err := h.DecodeEntries(b, int(count))
		return h, ids, locs, err
	}
	ids := make([]chunk.ID, count)
	var locs []chunk.Loc
	if h.Blocks == 0 {
		return h, ids, nil, nil
	}
	ib, err := get(h.IndexAt, int64(h.Blocks)*indexEntry)
	if err != nil {
		return h, nil, nil, err
	}
	blocks, err := decodeIndex(h, ib)
	if err != nil {
		return h, nil, nil, err
	}
	dataAt := h.IndexAt + int64(h.Blocks)*indexEntry
	j := sort.Search(len(blocks), func(j int) bool { return blocks[j].end > first })
	for ; j < len(blocks) && blocks[j].first < first+count; j++ {
		bl := blocks[j]
		z, err := get(dataAt+bl.off, int64(bl.len))
		if err != nil {
			return h, nil, nil, err
		}
		part := New(h.BackupID, h.Disk, h.ChunkSize, h.DiskSize)
		if _, err := decodeBlock(part, j, bl, z); err != nil {
			return h, nil, nil, err
		}
		for i, r := range part.DataIn(first, first+count) {
			ids[i-first] = r.ID
			if r.Loc.InPack() {
				if locs == nil {
					locs = make([]chunk.Loc, count)
				}
				locs[i-first] = r.Loc
			}
		}
	}
	return h, ids, locs, nil
}

// DecodeFrom parses and checks an encoded manifest of size bytes read
// from r, a piece at a time: the memory it takes follows the manifest in
// memory (which spills when big, see SpillAbove), never the encoding. It
// reads r twice: once for the checksum of the whole, once to decode.
func DecodeFrom(r io.ReaderAt, size int64) (*Manifest, error) {
	if size < int64(len(magic)+sha256.Size) {
		return nil, fmt.Errorf("%w: not a manifest", ErrCorrupt)
	}
	body := size - sha256.Size
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, 0, body)); err != nil {
		return nil, err
	}
	var sum [sha256.Size]byte
	if _, err := r.ReadAt(sum[:], body); err != nil && err != io.EOF {
		return nil, err
	}
	if !bytes.Equal(h.Sum(nil), sum[:]) {
		return nil, fmt.Errorf("%w: checksum mismatch", ErrCorrupt)
	}
	read := func(off, n int64) ([]byte, error) {
		if off < 0 || n < 0 || off+n > body {
			return nil, fmt.Errorf("%w: %d bytes at %d beyond the end (%d)", ErrCorrupt, n, off, body)
		}
		b := make([]byte, n)
		if _, err := r.ReadAt(b, off); err != nil && err != io.EOF {
			return nil, err
		}
		return b, nil
	}
	prefix, err := read(0, min(int64(MaxHeaderLen), body))
	if err != nil {
		return nil, err
	}
	hd, err := DecodeHeader(prefix)
	if err != nil {
		return nil, err
	}
	m := New(hd.BackupID, hd.Disk, hd.ChunkSize, hd.DiskSize)
	if hd.Version < 3 {
		// 56 bytes per chunk, zeros included: read in pieces of entries.
		if (body-hd.IDsAt)%int64(hd.EntryLen) != 0 || (body-hd.IDsAt)/int64(hd.EntryLen) != hd.Count {
			return nil, fmt.Errorf("%w: %d entries announced, %d bytes of entries", ErrCorrupt, hd.Count, body-hd.IDsAt)
		}
		const piece = 1 << 16
		for i := int64(0); i < hd.Count; i += piece {
			n := min(piece, hd.Count-i)
			b, err := read(hd.IDsAt+i*int64(hd.EntryLen), n*int64(hd.EntryLen))
			if err != nil {
				return nil, err
			}
			for k := int64(0); k < n; k++ {
				if err := m.Append(i+k, entryAt(b[k*int64(hd.EntryLen):], hd.EntryLen)); err != nil {
					return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
				}
			}
		}
	} else {
		ix, err := read(hd.IndexAt, min(int64(hd.Blocks)*indexEntry, body-hd.IndexAt))
		if err != nil {
			return nil, err
		}
		blocks, err := decodeIndex(hd, ix)
		if err != nil {
			return nil, err
		}
		dataAt := hd.IndexAt + int64(hd.Blocks)*indexEntry
		var n int64
		for j, bl := range blocks {
			z, err := read(dataAt+bl.off, int64(bl.len))
			if err != nil {
				return nil, fmt.Errorf("block %d: %w", j, err)
			}
			k, err := decodeBlock(m, j, bl, z)
			if err != nil {
				return nil, err
			}
			n += int64(k)
		}
		end := dataAt
		if len(blocks) > 0 {
			end += blocks[len(blocks)-1].off + int64(blocks[len(blocks)-1].len)
		}
		if end != body {
			return nil, fmt.Errorf("%w: %d bytes after the last block", ErrCorrupt, body-end)
		}
		if n != hd.DataChunks {
			return nil, fmt.Errorf("%w: %d data chunks, header says %d", ErrCorrupt, n, hd.DataChunks)
		}
	}
	if err := m.Check(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return m, nil
}
