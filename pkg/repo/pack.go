package repo

// Packs: many stored chunks in one object, so that a backup costs one
// request per few MiB instead of one per chunk (issue 11: the per-object
// cost of an S3 server, and of a file per chunk on a directory store, is
// what a full backup spent most of its time on).
//
//	packs/<xx>/<pack id>:
//	  blob 0 | blob 1 | … | stored trailer | u32 len(stored trailer) | "STRATAPK"
//
// A blob is a stored chunk exactly as a chunk object of its own holds it
// (codec header, payload; sealed and bound to its id in an encrypted
// repository), so a chunk reads the same from a pack range as from a loose
// object. The trailer makes a pack self-describing, so what a pack holds
// is known without any manifest (an index rebuilt from the store, GC
// deciding what is dead in it):
//
//	trailer: "STP2" | u32 count | count × (32-byte id | u32 offset | u32 length | codec) |
//	         sha256 of everything before
//
// (packs written before the codec byte have "STPI" and 40-byte entries;
// their codecs read as CodecUnknown). The codec lets maintenance find the
// packs worth recompressing from their trailers alone.
//
// sealed, in an encrypted repository, and bound to the pack's key. Readers
// reach a chunk by its location (pack, offset, length), which manifests
// carry: no global index is needed to restore.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"golang.org/x/sync/errgroup"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/objstore"
)

const (
	packMagic      = "STRATAPK"
	trailerMagicV1 = "STPI"
	trailerMagic   = "STP2"
	packEntryLenV1 = 32 + 4 + 4
	packEntryLen   = packEntryLenV1 + 1
	// packTailLen is the fixed end of a pack: trailer length and magic.
	packTailLen = 4 + len(packMagic)
	// MaxPackSize bounds a pack: offsets are 32-bit, and a pack is built
	// in memory.
	MaxPackSize = 1 << 30
)

// PackKey is the object key of a pack.
func PackKey(p chunk.PackID) string {
	s := p.String()
	return "packs/" + s[:2] + "/" + s
}

// PackEntry is one chunk of a pack.
type PackEntry struct {
	ID  chunk.ID
	Loc chunk.Loc
	// Codec the chunk is compressed with (CodecUnknown in packs written
	// before trailers named it).
	Codec chunk.Codec
	// Settled: recompression tried zstd on this chunk and kept it as it
	// was (zstd did no better); it is not tried again.
	Settled bool
}

// settledBit marks a settled chunk in the trailer's codec byte.
const settledBit = 0x80

// CodecUnknown is the codec of a chunk whose pack's trailer does not name
// it.
const CodecUnknown chunk.Codec = 0xff

// Pack is a pack being filled. Not safe for concurrent use.
type Pack struct {
	ID      chunk.PackID
	buf     []byte
	entries []PackEntry
}

// NewPack starts an empty pack. Its id is a UUIDv7: random, and ordered by
// creation time, so a listing shows old packs first.
func NewPack() *Pack {
	return &Pack{ID: chunk.PackID(uuid.Must(uuid.NewV7()))}
}

// Reset empties the pack, keeping its buffer, under a new id.
func (p *Pack) Reset() {
	p.ID = NewPack().ID
	p.buf, p.entries = p.buf[:0], p.entries[:0]
}

// Grow makes room for n more bytes of chunks and trailer without another
// allocation. A new buffer gets a quarter more than asked, so that a
// reused pack does not reallocate for a batch slightly larger than the
// last (each reallocation copies and clears megabytes).
func (p *Pack) Grow(n int) {
	if cap(p.buf)-len(p.buf) >= n {
		return
	}
	buf := make([]byte, len(p.buf), len(p.buf)+n+n/4)
	copy(buf, p.buf)
	p.buf = buf
}

// Add appends a stored chunk (as Repository.AppendChunk makes it, with
// codec c) and returns where it will lie once the pack is stored. stored
// is copied.
func (p *Pack) Add(id chunk.ID, stored []byte, c chunk.Codec) (chunk.Loc, error) {
	if len(stored) == 0 || len(p.buf)+len(stored) > MaxPackSize {
		return chunk.Loc{}, fmt.Errorf("pack %s: a %d-byte chunk does not fit after %d bytes", p.ID, len(stored), len(p.buf))
	}
	loc := chunk.Loc{Pack: p.ID, Off: uint32(len(p.buf)), Len: uint32(len(stored))}
	p.buf = append(p.buf, stored...)
	p.entries = append(p.entries, PackEntry{ID: id, Loc: loc, Codec: c})
	return loc, nil
}

// Len is the number of bytes of chunks added so far.
func (p *Pack) Len() int { return len(p.buf) }

// PackChunks adds chunks data[i] (ids[i]), encoded with c, to p, encoding
// up to parallel at once straight into the pack's buffer: each chunk gets
// a slot of its worst-case size, and the stored forms are then moved
// together in place. Encoding into buffers of their own and copying them
// into the pack cost a copy of every stored byte, and those buffers (a
// sync.Pool, emptied by each garbage collection) were fresh memory: a
// page fault per 4 KiB stored, a sixth of a deployed worker's CPU.
func (r *Repository) PackChunks(p *Pack, ids []chunk.ID, data [][]byte, c chunk.Codec, parallel int) error {
	if len(ids) != len(data) {
		return fmt.Errorf("pack %s: %d ids for %d chunks", p.ID, len(ids), len(data))
	}
	base, total := len(p.buf), 0
	slots := make([]int, len(data)+1) // slot i is [slots[i], slots[i+1]) past base
	for i, d := range data {
		total += chunk.MaxStoredLen(len(d)) + r.seal.overhead()
		slots[i+1] = total
	}
	if base+total > MaxPackSize {
		return fmt.Errorf("pack %s: %d chunks do not fit after %d bytes", p.ID, len(data), base)
	}
	p.Grow(total + 64*len(ids) + 128)
	full := p.buf[:base+total]
	stored := make([][]byte, len(data))
	codecs := make([]chunk.Codec, len(data))
	var g errgroup.Group
	g.SetLimit(max(1, parallel))
	for i := range data {
		g.Go(func() error {
			slot := full[base+slots[i] : base+slots[i] : base+slots[i+1]]
			stored[i], codecs[i] = r.appendChunk(slot, ids[i], data[i], c)
			return nil
		})
	}
	g.Wait()
	at := base
	for i, b := range stored {
		// In its slot unless sealing or a codec allocated elsewhere; never
		// longer than its slot, so the copy (a memmove towards the start)
		// overwrites no slot not yet moved.
		n := copy(full[at:], b)
		loc := chunk.Loc{Pack: p.ID, Off: uint32(at), Len: uint32(n)}
		p.entries = append(p.entries, PackEntry{ID: ids[i], Loc: loc, Codec: codecs[i]})
		at += n
	}
	p.buf = full[:at]
	return nil
}

// Entries are the chunks added so far, in pack order.
func (p *Pack) Entries() []PackEntry { return p.entries }

// encodeTrailer is the plain trailer of entries.
func encodeTrailer(entries []PackEntry) []byte {
	b := make([]byte, 0, len(trailerMagic)+4+packEntryLen*len(entries)+sha256.Size)
	b = append(b, trailerMagic...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(entries)))
	for _, e := range entries {
		b = append(b, e.ID[:]...)
		b = binary.BigEndian.AppendUint32(b, e.Loc.Off)
		b = binary.BigEndian.AppendUint32(b, e.Loc.Len)
		c := byte(e.Codec)
		if e.Settled {
			c |= settledBit
		}
		b = append(b, c)
	}
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}

// ErrCorruptPack is wrapped by every error about a pack whose trailer does
// not parse or describe it.
var ErrCorruptPack = errors.New("corrupt pack")

// table checks a "magic | u32 count | count × entryLen | sha256" table
// (a pack's trailer, a moved record) whose magic is magicLen bytes, and
// returns its entries and their count.
func table(b []byte, magicLen, entryLen int, what string) (entries []byte, n uint32, err error) {
	if len(b) < magicLen+4+sha256.Size {
		return nil, 0, fmt.Errorf("%w: %s too short", ErrCorruptPack, what)
	}
	body, sum := b[:len(b)-sha256.Size], b[len(b)-sha256.Size:]
	if got := sha256.Sum256(body); !bytes.Equal(got[:], sum) {
		return nil, 0, fmt.Errorf("%w: %s checksum mismatch", ErrCorruptPack, what)
	}
	n = binary.BigEndian.Uint32(body[magicLen:])
	entries = body[magicLen+4:]
	if uint64(len(entries)) != uint64(n)*uint64(entryLen) {
		return nil, 0, fmt.Errorf("%w: %s announces %d entries in %d bytes", ErrCorruptPack, what, n, len(entries))
	}
	return entries, n, nil
}

// decodeTrailer parses a plain trailer of pack p whose blobs end at
// blobsEnd, checking that every entry lies inside them.
func decodeTrailer(p chunk.PackID, b []byte, blobsEnd int64) ([]PackEntry, error) {
	if len(b) < len(trailerMagic)+4+sha256.Size {
		return nil, fmt.Errorf("%w: no index trailer", ErrCorruptPack)
	}
	entryLen := packEntryLen
	switch string(b[:len(trailerMagic)]) {
	case trailerMagic:
	case trailerMagicV1:
		entryLen = packEntryLenV1
	default:
		return nil, fmt.Errorf("%w: no index trailer", ErrCorruptPack)
	}
	rest, n, err := table(b, len(trailerMagic), entryLen, "index")
	if err != nil {
		return nil, err
	}
	entries := make([]PackEntry, n)
	for i := range entries {
		e := rest[entryLen*i:]
		copy(entries[i].ID[:], e)
		entries[i].Codec = CodecUnknown
		if entryLen == packEntryLen {
			entries[i].Codec = chunk.Codec(e[40] &^ settledBit)
			entries[i].Settled = e[40]&settledBit != 0
		}
		off, ln := binary.BigEndian.Uint32(e[32:]), binary.BigEndian.Uint32(e[36:])
		if ln == 0 || int64(off)+int64(ln) > blobsEnd {
			return nil, fmt.Errorf("%w: entry %d (%d+%d) outside the %d bytes of chunks", ErrCorruptPack, i, off, ln, blobsEnd)
		}
		entries[i].Loc = chunk.Loc{Pack: p, Off: off, Len: ln}
	}
	return entries, nil
}

// PutPack stores a pack (with its trailer) as one object. The pack may be
// reused for nothing afterwards. A pack of no chunks is not stored.
func (r *Repository) PutPack(ctx context.Context, p *Pack) error {
	if len(p.entries) == 0 {
		return nil
	}
	key := PackKey(p.ID)
	trailer := r.seal.seal(encodeTrailer(p.entries), []byte(key))
	obj := append(p.buf, trailer...)
	obj = binary.BigEndian.AppendUint32(obj, uint32(len(trailer)))
	obj = append(obj, packMagic...)
	p.buf = obj[:len(p.buf)] // keep the grown buffer's chunks as they were
	if err := r.Store.Put(ctx, key, obj); err != nil {
		return fmt.Errorf("write pack %s: %w", key, err)
	}
	return nil
}

// PackIndex reads what pack p holds from its trailer, with range reads of
// its end only. size is the pack object's size when known (a listing gives
// it), or 0 to ask the store.
func (r *Repository) PackIndex(ctx context.Context, p chunk.PackID, size int64) ([]PackEntry, error) {
	key := PackKey(p)
	if size <= 0 {
		info, err := r.Store.Stat(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("pack %s: %w", key, err)
		}
		size = info.Size
	}
	if size < int64(packTailLen) {
		return nil, fmt.Errorf("pack %s: %w: %d bytes", key, ErrCorruptPack, size)
	}
	// One read usually holds the whole trailer: 40 bytes an entry.
	want := min(size, 64<<10)
	tail, err := r.Store.GetRange(ctx, key, size-want, want)
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", key, err)
	}
	if int64(len(tail)) != want || string(tail[len(tail)-len(packMagic):]) != packMagic {
		return nil, fmt.Errorf("pack %s: %w: no pack end", key, ErrCorruptPack)
	}
	tlen := int64(binary.BigEndian.Uint32(tail[len(tail)-packTailLen:]))
	if tlen > size-int64(packTailLen) {
		return nil, fmt.Errorf("pack %s: %w: a %d-byte index in %d bytes", key, ErrCorruptPack, tlen, size)
	}
	var stored []byte
	if tlen <= want-int64(packTailLen) {
		stored = tail[want-int64(packTailLen)-tlen : want-int64(packTailLen)]
	} else if stored, err = r.Store.GetRange(ctx, key, size-int64(packTailLen)-tlen, tlen); err != nil {
		return nil, fmt.Errorf("pack %s: %w", key, err)
	}
	plain, err := r.seal.open(stored, []byte(key))
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w: index: %v", key, ErrCorruptPack, err)
	}
	entries, err := decodeTrailer(p, plain, size-int64(packTailLen)-tlen)
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", key, err)
	}
	return entries, nil
}

// openStored turns a stored chunk (its own object or a pack range) into
// its verified bytes; errors wrap chunk.ErrCorrupt.
func openStored(s sealer, id chunk.ID, stored []byte) ([]byte, error) {
	opened, err := s.open(stored, id[:])
	if err != nil {
		return nil, fmt.Errorf("%w: %v", chunk.ErrCorrupt, err)
	}
	return chunk.DecodeWith(opened, id, s.ChunkID)
}

// ReadChunk returns the verified bytes of chunk id from where loc says it
// lies: a range of a pack, or (the zero Loc) its own object. A chunk that
// is bad in its pack is read from its own object when there is one: that
// is where a repair stores it (dedup answers a chunk found bad missing,
// and the next backup holding its bytes writes it on its own), so every
// backup pointing at the damaged range reads the repaired copy. Errors
// wrap chunk.ErrCorrupt or objstore.ErrNotFound and name the object.
func (r *Repository) ReadChunk(ctx context.Context, id chunk.ID, loc chunk.Loc) ([]byte, error) {
	if !loc.InPack() {
		return r.Chunks.GetChunk(ctx, id)
	}
	data, err := r.readPacked(ctx, id, loc)
	if IsBad(err) {
		if repaired, lerr := r.Chunks.GetChunk(ctx, id); lerr == nil {
			return repaired, nil
		}
	}
	return data, err
}

// MaxRunBytes bounds one coalesced read (ReadRun).
const MaxRunBytes = 8 << 20

// Contiguous reports whether b lies right after a in the same pack, so
// that both can be read with one request.
func Contiguous(a, b chunk.Loc) bool {
	return a.InPack() && b.Pack == a.Pack && b.Off == a.Off+a.Len
}

// ReadRun returns the verified bytes of chunks that lie back to back in
// one pack (each Contiguous with the one before), read with a single range
// request: a restore asks once per run of a pack, not once per chunk.
// Anything wrong with the run — a short read, a bad chunk in it — sends
// every chunk of it through ReadChunk on its own, which finds repairs.
func (r *Repository) ReadRun(ctx context.Context, refs []chunk.Ref) ([][]byte, error) {
	if len(refs) == 0 {
		return nil, nil
	}
	first, last := refs[0].Loc, refs[len(refs)-1].Loc
	for i := 1; i < len(refs); i++ {
		if !Contiguous(refs[i-1].Loc, refs[i].Loc) {
			return nil, fmt.Errorf("read run: chunk %d is not right after chunk %d", i, i-1)
		}
	}
	out := make([][]byte, len(refs))
	n := int64(last.Off) + int64(last.Len) - int64(first.Off)
	if first.InPack() {
		b, err := r.Store.GetRange(ctx, PackKey(first.Pack), int64(first.Off), n)
		if err == nil && int64(len(b)) == n {
			good := true
			for i, ref := range refs {
				at := int64(ref.Loc.Off - first.Off)
				if out[i], err = openStored(r.seal, ref.ID, b[at:at+int64(ref.Loc.Len)]); err != nil {
					good = false
					break
				}
			}
			if good {
				return out, nil
			}
		}
		// A failed read goes chunk by chunk too: each finds its pack's
		// moved records, a repaired copy, or (a locked repository) the
		// version Strata wrote under what someone put over it.
	}
	for i, ref := range refs {
		data, err := r.ReadChunk(ctx, ref.ID, ref.Loc)
		if err != nil {
			return nil, err
		}
		out[i] = data
	}
	return out, nil
}

// readPacked reads a chunk from its pack, following the pack's moved
// records when compaction deleted it (moved.go).
func (r *Repository) readPacked(ctx context.Context, id chunk.ID, loc chunk.Loc) ([]byte, error) {
	for hop := 0; ; hop++ {
		data, err := r.readPackRange(ctx, id, loc)
		if !errors.Is(err, objstore.ErrNotFound) || hop == maxMoveHops {
			return data, err
		}
		to, ok, rerr := r.relocate(ctx, id, loc)
		if rerr != nil {
			return nil, fmt.Errorf("%w (looking for where it moved: %v)", err, rerr)
		}
		if !ok {
			return nil, err
		}
		loc = to
	}
}

func (r *Repository) readPackRange(ctx context.Context, id chunk.ID, loc chunk.Loc) ([]byte, error) {
	key := PackKey(loc.Pack)
	var data []byte
	_, err := objstore.GetRangeChecked(ctx, r.Store, key, int64(loc.Off), int64(loc.Len), func(stored []byte) (err error) {
		if len(stored) != int(loc.Len) {
			return fmt.Errorf("%w: %d of %d bytes at %d", chunk.ErrCorrupt, len(stored), loc.Len, loc.Off)
		}
		data, err = openStored(r.seal, id, stored)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("chunk %s in pack %s: %w", id, key, err)
	}
	return data, nil
}

// DeletePack removes a pack (absent: no error). Only garbage collection
// calls it, for packs no backup references.
func (r *Repository) DeletePack(ctx context.Context, p chunk.PackID) error {
	if err := r.Store.Delete(ctx, PackKey(p)); err != nil {
		return fmt.Errorf("delete pack %s: %w", PackKey(p), err)
	}
	return nil
}

// ListPacks calls f for every pack object whose first id byte is in
// [lo, hi); objects under packs/ that are not packs where they lie are
// skipped.
func (r *Repository) ListPacks(ctx context.Context, lo byte, hi int, f func(p chunk.PackID, info objstore.Info) error) error {
	if lo == 0 && hi >= 256 { // all of them: one listing, not 256
		err := r.Store.List(ctx, "packs/", func(in objstore.Info) error {
			name := in.Key[len("packs/"):]
			if len(name) < 3 {
				return nil
			}
			p, err := chunk.ParsePackID(name[3:])
			if err != nil || PackKey(p) != in.Key {
				return nil
			}
			return f(p, in)
		})
		if err != nil {
			return fmt.Errorf("list packs/: %w", err)
		}
		return nil
	}
	for b := int(lo); b < hi && b < 256; b++ {
		prefix := fmt.Sprintf("packs/%02x/", b)
		err := r.Store.List(ctx, prefix, func(in objstore.Info) error {
			p, err := chunk.ParsePackID(in.Key[len(prefix):])
			if err != nil || PackKey(p) != in.Key {
				return nil
			}
			return f(p, in)
		})
		if err != nil {
			return fmt.Errorf("list %s: %w", prefix, err)
		}
	}
	return nil
}

// AddChunk encodes data with c and appends it to p (see Pack.Add).
func (r *Repository) AddChunk(p *Pack, id chunk.ID, data []byte, c chunk.Codec) (chunk.Loc, error) {
	stored, got := r.appendChunk(nil, id, data, c)
	return p.Add(id, stored, got)
}

// Announcement is what dedup's index learns of a stored pack.
func (p *Pack) Announcement() *contracts.PackStored {
	ann := &contracts.PackStored{Schema: contracts.SchemaVersion, Pack: p.ID.String()}
	for _, e := range p.entries {
		ann.Chunks = append(ann.Chunks, contracts.ChunkLoc{ID: e.ID.String(), Off: e.Loc.Off, Len: e.Loc.Len})
	}
	return ann
}

// Where names the object that holds a chunk stored at loc (its pack, or
// its own object), for messages.
func Where(id chunk.ID, loc chunk.Loc) string {
	if loc.InPack() {
		return PackKey(loc.Pack)
	}
	return ChunkKey(id)
}

// PackExists reports whether pack p is stored (not whether its chunks can
// be read: see PackPresent for packs compaction moved).
func (r *Repository) PackExists(ctx context.Context, p chunk.PackID) (bool, error) {
	_, err := r.Store.Stat(ctx, PackKey(p))
	if errors.Is(err, objstore.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("pack %s: %w", PackKey(p), err)
	}
	return true, nil
}
