package repo

// Moved records: where the live chunks of a compacted pack went.
//
// Manifests name a chunk by its location (pack, offset, length), so a
// pack that compaction rewrites would strand every manifest pointing into
// it. Rewriting those manifests would cost a new manifest per backup per
// compaction (a 16 TiB disk's is gigabytes) and a change of every record;
// instead the rewrite leaves a small record beside the packs:
//
//	moved/<xx>/<old pack id>/<collection id>:
//	  "STMV" | u32 count | count × (32-byte id | u32 old offset |
//	  16-byte new pack | u32 new offset | u32 new length) | sha256 of everything before
//
// sealed, in an encrypted repository, and bound to its key. A reader whose
// pack is gone (ErrNotFound) looks the chunk's old offset up in the
// records of that pack and reads it where it went, following further moves
// of the new pack the same way; a reader that started before the move
// still finds the old pack until it is deleted, and the record exists
// before that. Records are written once and never changed: a pack rewritten
// a second time (a collection that stopped between its record and its
// delete, then new backups referencing chunks the record does not cover)
// gets a second record under another collection's id. Garbage collection
// keeps a pack's records as long as any manifest names the pack.

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/objstore"
)

const (
	movedMagic    = "STMV"
	movedEntryLen = 32 + 4 + 16 + 4 + 4
	// maxMoveHops bounds how many moves a read follows (a pack compacted
	// again and again); a longer chain is a corrupt repository, not a loop
	// to spin in.
	maxMoveHops = 64
)

// Move is one chunk that compaction moved: it was at offset From of the
// old pack and is now at To.
type Move struct {
	ID   chunk.ID
	From uint32
	To   chunk.Loc
}

// movedPrefix is where the records of pack p lie.
func movedPrefix(p chunk.PackID) string {
	s := p.String()
	return "moved/" + s[:2] + "/" + s + "/"
}

// MovedKey is the object key of the record a collection (gen) wrote for
// pack p.
func MovedKey(p chunk.PackID, gen string) string { return movedPrefix(p) + gen }

func encodeMoves(moves []Move) []byte {
	b := make([]byte, 0, len(movedMagic)+4+movedEntryLen*len(moves)+sha256.Size)
	b = append(b, movedMagic...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(moves)))
	for _, m := range moves {
		b = append(b, m.ID[:]...)
		b = binary.BigEndian.AppendUint32(b, m.From)
		b = append(b, m.To.Pack[:]...)
		b = binary.BigEndian.AppendUint32(b, m.To.Off)
		b = binary.BigEndian.AppendUint32(b, m.To.Len)
	}
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}

func decodeMoves(b []byte) ([]Move, error) {
	if len(b) < len(movedMagic) || string(b[:len(movedMagic)]) != movedMagic {
		return nil, fmt.Errorf("%w: not a moved record", ErrCorruptPack)
	}
	rest, n, err := table(b, len(movedMagic), movedEntryLen, "moved record")
	if err != nil {
		return nil, err
	}
	moves := make([]Move, n)
	for i := range moves {
		e := rest[movedEntryLen*i:]
		copy(moves[i].ID[:], e)
		moves[i].From = binary.BigEndian.Uint32(e[32:])
		copy(moves[i].To.Pack[:], e[36:52])
		moves[i].To.Off = binary.BigEndian.Uint32(e[52:])
		moves[i].To.Len = binary.BigEndian.Uint32(e[56:])
		if !moves[i].To.InPack() || moves[i].To.Len == 0 {
			return nil, fmt.Errorf("%w: moved record entry %d names no pack", ErrCorruptPack, i)
		}
	}
	return moves, nil
}

// putMoves stores the record of a collection (gen) for pack p.
func (r *Repository) putMoves(ctx context.Context, p chunk.PackID, gen string, moves []Move) error {
	key := MovedKey(p, gen)
	if err := r.Store.Put(ctx, key, r.seal.seal(encodeMoves(moves), []byte(key))); err != nil {
		return fmt.Errorf("write moved record %s: %w", key, err)
	}
	return nil
}

// Moves reads every record of pack p: where its moved chunks went, by old
// offset. A pack never moved has none (an empty map, no error).
func (r *Repository) Moves(ctx context.Context, p chunk.PackID) (map[uint32]Move, error) {
	out := map[uint32]Move{}
	prefix := movedPrefix(p)
	err := r.Store.List(ctx, prefix, func(in objstore.Info) error {
		if strings.Contains(in.Key[len(prefix):], "/") {
			return nil
		}
		b, err := r.Store.Get(ctx, in.Key)
		if err != nil {
			return fmt.Errorf("moved record %s: %w", in.Key, err)
		}
		plain, err := r.seal.open(b, []byte(in.Key))
		if err != nil {
			return fmt.Errorf("moved record %s: %w: %v", in.Key, ErrCorruptPack, err)
		}
		moves, err := decodeMoves(plain)
		if err != nil {
			return fmt.Errorf("moved record %s: %w", in.Key, err)
		}
		for _, m := range moves {
			out[m.From] = m
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// moveCache keeps the records of packs a reader found gone. Only those are
// cached: a deleted pack gets no new record, so what was read stays true.
type moveCache struct {
	mu    sync.Mutex
	packs map[chunk.PackID]map[uint32]Move
}

// goneMoves returns the records of a pack known to be deleted.
func (r *Repository) goneMoves(ctx context.Context, p chunk.PackID) (map[uint32]Move, error) {
	c := &r.moved
	c.mu.Lock()
	m, ok := c.packs[p]
	c.mu.Unlock()
	if ok {
		return m, nil
	}
	m, err := r.Moves(ctx, p)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.packs == nil || len(c.packs) >= 1024 { // bounded: forgetting costs a listing
		c.packs = map[chunk.PackID]map[uint32]Move{}
	}
	c.packs[p] = m
	c.mu.Unlock()
	return m, nil
}

// relocate follows the moves of a chunk whose pack is gone to where it
// lies now. ok is false when no record names it there.
func (r *Repository) relocate(ctx context.Context, id chunk.ID, loc chunk.Loc) (chunk.Loc, bool, error) {
	moves, err := r.goneMoves(ctx, loc.Pack)
	if err != nil {
		return loc, false, err
	}
	m, ok := moves[loc.Off]
	if !ok || m.ID != id {
		return loc, false, nil
	}
	return m.To, true, nil
}

// PackPresent reports whether pack p can be read from: it exists, or it
// was compacted and its chunks moved (records exist).
func (r *Repository) PackPresent(ctx context.Context, p chunk.PackID) (bool, error) {
	_, err := r.Store.Stat(ctx, PackKey(p))
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, objstore.ErrNotFound) {
		return false, fmt.Errorf("pack %s: %w", PackKey(p), err)
	}
	moves, err := r.Moves(ctx, p)
	if err != nil {
		return false, err
	}
	return len(moves) > 0, nil
}

// ListMoved calls f for every pack that has moved records (whether or not
// the pack itself still exists), with the records.
func (r *Repository) ListMoved(ctx context.Context, f func(p chunk.PackID, recs []objstore.Info) error) error {
	var cur chunk.PackID
	var recs []objstore.Info
	flush := func() error {
		if len(recs) == 0 {
			return nil
		}
		err := f(cur, recs)
		recs = nil
		return err
	}
	err := r.Store.List(ctx, "moved/", func(in objstore.Info) error {
		parts := strings.Split(in.Key, "/")
		if len(parts) != 4 || parts[3] == "" {
			return nil
		}
		p, err := chunk.ParsePackID(parts[2])
		if err != nil || movedPrefix(p) != "moved/"+parts[1]+"/"+parts[2]+"/" {
			return nil
		}
		if p != cur {
			if err := flush(); err != nil {
				return err
			}
			cur = p
		}
		recs = append(recs, in)
		return nil
	})
	if err != nil {
		return fmt.Errorf("list moved records: %w", err)
	}
	return flush()
}

// DeleteMoved removes records (by key) of a pack no backup names any more.
func (r *Repository) DeleteMoved(ctx context.Context, keys []string) error {
	for _, k := range keys {
		// A record a locked backup reads through was locked with it
		// (Cover): it stays until a later run.
		if err := r.Store.Delete(ctx, k); err != nil && !errors.Is(err, objstore.ErrLocked) {
			return fmt.Errorf("delete moved record %s: %w", k, err)
		}
	}
	return nil
}
