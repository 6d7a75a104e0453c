package repo

// The content layer's half of a garbage collection. A collection marks
// what references keep, lists storage units — chunk objects of their own,
// packs — and frees the units nothing keeps (deleted) or that little keeps
// (their live chunks rewritten into new packs, then deleted). It knows
// nothing of locks, holds or running backups: the collector that decides
// when freeing is safe (services/dedup) drives it, one shard of units at a
// time, with the same steps for every kind of unit.

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/time/rate"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/objstore"
)

// SweepOptions are a collection's settings.
type SweepOptions struct {
	// ID names the collection (and the moved records it writes).
	ID string
	// Cutoff: units modified after it are young, never freed (a backup may
	// be about to reference them).
	Cutoff time.Time
	// RepackBelow: packs whose live bytes are under this fraction of their
	// size are rewritten (0: never).
	RepackBelow float64
	// Recompress rewrites packs holding live chunks stored with S2, with
	// Codec (chunk.Zstd or chunk.ZstdBetter).
	Recompress bool
	Codec      chunk.Codec
	// Limit paces the bytes read from packs being rewritten; nil:
	// unlimited.
	Limit *rate.Limiter
	// Announce tells the chunk index of each new pack, before any record
	// names it.
	Announce func(ctx context.Context, ann *contracts.PackStored) error
	// Step, when set, is called before each step of a rewrite ("packed",
	// "moved", "deleted"); an error stops there (crash tests).
	Step func(step string, unit string) error
	// LockDates, in a locked repository, is the pack index's retain-until
	// date of a pack (zero: not known): a pack under it is left alone
	// without asking S3.
	LockDates func(chunk.PackID) time.Time
	// Done is called with a rewritten unit's Hold once its old object is
	// deleted (Free returns before that: the new pack is written when full).
	Done func(ctx context.Context, hold string) error
}

// storedPack is what a sweep keeps of a listed pack: 16 bytes, not the
// listing's key and time (a million packs: ~45 MB of map instead of 145).
type storedPack struct{ size, modified int64 }

// Sweep is one collection's view of the storage units: the packs and moved
// records listed when it started, the records read since, and the rewrite
// in progress.
type Sweep struct {
	r        *Repository
	opts     SweepOptions
	stored   map[chunk.PackID]storedPack
	moved    map[chunk.PackID][]objstore.Info
	moves    map[chunk.PackID]map[uint32]Move // records read (a moved pack's, once)
	named    map[chunk.PackID]bool            // moved packs some reference names directly
	dangling map[chunk.PackID]bool            // referenced packs neither stored nor moved
	rp       *Repacker
}

// NewSweep starts a collection: it lists the packs and moved records once.
func (r *Repository) NewSweep(ctx context.Context, opts SweepOptions) (*Sweep, error) {
	s := &Sweep{r: r, opts: opts, stored: map[chunk.PackID]storedPack{}, moved: map[chunk.PackID][]objstore.Info{},
		moves: map[chunk.PackID]map[uint32]Move{}, named: map[chunk.PackID]bool{}, dangling: map[chunk.PackID]bool{}}
	if err := r.ListPacks(ctx, 0, 256, func(p chunk.PackID, info objstore.Info) error {
		s.stored[p] = storedPack{size: info.Size, modified: info.Modified.UnixNano()}
		return nil
	}); err != nil {
		return nil, err
	}
	if err := r.ListMoved(ctx, func(p chunk.PackID, recs []objstore.Info) error {
		s.moved[p] = recs
		return nil
	}); err != nil {
		return nil, err
	}
	rp := r.NewRepacker(opts.ID)
	rp.Recompress, rp.Codec, rp.Limit = opts.Recompress, opts.Codec, opts.Limit
	if opts.Announce != nil {
		rp.Announce = func(ctx context.Context, p *Pack) error { return opts.Announce(ctx, p.Announcement()) }
	}
	if opts.Step != nil {
		rp.Step = func(step string, p chunk.PackID) error { return opts.Step(step, p.String()) }
	}
	if opts.Done != nil {
		rp.Done = func(ctx context.Context, p chunk.PackID) error { return opts.Done(ctx, PackHold(p)) }
	}
	s.rp = rp
	return s, nil
}

// PackHold is the name a backup holds a pack by.
func PackHold(p chunk.PackID) string { return "pack-" + p.String() }

// Dangling is the number of packs references name that are neither stored
// nor moved (lost: the verifier reports their backups).
func (s *Sweep) Dangling() int { return len(s.dangling) }

// packShard is the byte a pack is sharded by: the last of its id (a
// UUIDv7's first bytes are its creation time, the same for every pack of
// a day).
func packShard(p chunk.PackID) byte { return p[len(p)-1] }

// packRefs is the live part of each pack: the offsets references name,
// with the stored length there.
type packRefs map[chunk.PackID]map[uint32]uint32

func (r packRefs) add(l chunk.Loc) {
	m := r[l.Pack]
	if m == nil {
		m = map[uint32]uint32{}
		r[l.Pack] = m
	}
	m[l.Off] = l.Len
}

func (r packRefs) bytes(p chunk.PackID) (n int64) {
	for _, l := range r[p] {
		n += int64(l)
	}
	return n
}

// Mark is what references keep of the units of one shard (chunk objects
// and packs whose shard byte is in [lo, hi)): 32 B per distinct chunk id
// and 8 B per live pack offset, divided by the number of shards.
type Mark struct {
	s      *Sweep
	lo, hi int
	ids    map[chunk.ID]struct{}
	packs  packRefs
	read   map[string]bool // manifests read
}

// Mark starts the mark of one shard.
func (s *Sweep) Mark(lo byte, hi int) *Mark {
	return &Mark{s: s, lo: int(lo), hi: hi, ids: map[chunk.ID]struct{}{}, packs: packRefs{}, read: map[string]bool{}}
}

func (m *Mark) in(b byte) bool { return int(b) >= m.lo && int(b) < m.hi }

// Read reports whether the manifest stored at key was marked already (a
// second mark reads only what is new).
func (m *Mark) Read(key string) bool { return m.read[key] }

// Manifest marks what the manifest stored at key references.
func (m *Mark) Manifest(ctx context.Context, key string, man *manifest.Manifest) error {
	for _, r := range man.Data() {
		id := r.ID
		// Every id, packed or not: a chunk found bad in its pack is read
		// from its own object (a repair) by the same reference.
		if m.in(id[0]) {
			m.ids[id] = struct{}{}
		}
		if r.Loc.InPack() {
			if err := m.loc(ctx, r.Loc); err != nil {
				return err
			}
		}
	}
	m.read[key] = true
	return nil
}

// Result marks what a running backup's segment result references.
func (m *Mark) Result(ctx context.Context, d *contracts.SegmentDone) error {
	for _, s := range d.IDs {
		if id, err := chunk.ParseID(s); err == nil && m.in(id[0]) {
			m.ids[id] = struct{}{}
		}
	}
	for _, l := range d.Locs {
		if l.Pack < 0 || l.Pack >= len(d.Packs) {
			continue
		}
		if p, err := chunk.ParsePackID(d.Packs[l.Pack]); err == nil {
			if err := m.loc(ctx, chunk.Loc{Pack: p, Off: l.Off, Len: l.Len}); err != nil {
				return err
			}
		}
	}
	return nil
}

// loc marks a pack location, following moved records to where the chunk
// is now: every stored pack on the way keeps it (a pack may still exist
// beside its records when a collection stopped between the two).
func (m *Mark) loc(ctx context.Context, l chunk.Loc) error {
	s := m.s
	for hop := 0; hop <= maxMoveHops; hop++ {
		_, isStored := s.stored[l.Pack]
		_, isMoved := s.moved[l.Pack]
		if hop == 0 && isMoved {
			s.named[l.Pack] = true
		}
		if isStored && m.in(packShard(l.Pack)) {
			m.packs.add(l)
		}
		if !isMoved {
			if !isStored {
				s.dangling[l.Pack] = true
			}
			return nil
		}
		moves, err := s.movesOf(ctx, l.Pack)
		if err != nil {
			return err
		}
		mv, ok := moves[l.Off]
		if !ok {
			if !isStored {
				s.dangling[l.Pack] = true
			}
			return nil
		}
		l = mv.To
	}
	return nil
}

func (s *Sweep) movesOf(ctx context.Context, p chunk.PackID) (map[uint32]Move, error) {
	if mv, ok := s.moves[p]; ok {
		return mv, nil
	}
	mv, err := s.r.Moves(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("mark: %w", err)
	}
	s.moves[p] = mv
	return mv, nil
}

// Referenced is the number of distinct chunks marked live in the shard
// (by id, and by pack offset).
func (m *Mark) Referenced() int {
	n := len(m.ids)
	for _, offs := range m.packs {
		n += len(offs)
	}
	return n
}

// Unit is a storage unit a collection may free.
type Unit struct {
	// Hold is the name a backup holds it by while it is condemned.
	Hold string
	// Name is its object, for messages.
	Name string
	Size int64
	// Live bytes references need from it (a rewrite copies them).
	Live int64
	// Rewrite: its live chunks are copied out before it is deleted (a
	// sparse pack, or one worth recompressing); otherwise nothing in it is
	// live and it is deleted.
	Rewrite bool
	id      chunk.ID
	pack    chunk.PackID
	isPack  bool
}

// IsPack reports whether the unit is a pack (else a chunk object).
func (u Unit) IsPack() bool { return u.isPack }

// Census counts the units of a shard as Candidates saw them.
type Census struct {
	Chunks    int   // chunk objects of their own
	Packs     int   // packs
	PackBytes int64 // their stored size
	LiveBytes int64 // what references need of them
	Young     int   // unreferenced units younger than the cutoff
	// Locked: units that would be freed or rewritten but are under
	// Object Lock (left alone, not listed as candidates).
	Locked      int
	LockedBytes int64
}

// Candidates lists the shard's units that nothing references (or, packs,
// that little references, or worth recompressing), older than the cutoff.
func (m *Mark) Candidates(ctx context.Context) ([]Unit, Census, error) {
	s, r := m.s, m.s.r
	var c Census
	var units []Unit
	err := r.Chunks.List(ctx, byte(m.lo), m.hi, func(sc StoredChunk) error {
		c.Chunks++
		if _, ok := m.ids[sc.ID]; ok {
			return nil
		}
		if sc.Modified.After(s.opts.Cutoff) {
			c.Young++
			return nil
		}
		if time.Now().Before(r.LockedUntil(sc.Modified)) {
			c.Locked++
			c.LockedBytes += sc.Size
			return nil
		}
		units = append(units, Unit{Hold: sc.ID.String(), Name: sc.Name, Size: sc.Size, id: sc.ID})
		return nil
	})
	if err != nil {
		return nil, c, fmt.Errorf("list chunks: %w", err)
	}
	for p, info := range s.stored {
		if !m.in(packShard(p)) {
			continue
		}
		c.Packs++
		live := m.packs.bytes(p)
		c.PackBytes += info.size
		c.LiveBytes += live
		if time.Unix(0, info.modified).After(s.opts.Cutoff) {
			if live == 0 {
				c.Young++
			}
			continue
		}
		u := Unit{Hold: PackHold(p), Name: PackKey(p), Size: info.size, Live: live, pack: p, isPack: true}
		switch {
		case live == 0:
		case float64(live) < s.opts.RepackBelow*float64(info.size):
			u.Rewrite = true
		case s.opts.Recompress && s.worthRecompressing(ctx, p, info.size, m.packs[p]):
			u.Rewrite = true
		default:
			continue
		}
		// Under Object Lock: a pack whose lock from its creation, or the
		// date the pack index was told (merge announces what it extends),
		// still holds is left without asking S3; one about to be
		// rewritten whose date is not known that way is asked (a rewrite
		// must be able to delete the old pack); a dead one whose date the
		// index missed (rebuilt from the packs) is refused by the store
		// when deleted, and counted then.
		until := r.packLockedAtLeast(p)
		if s.opts.LockDates != nil && r.Locked() {
			if d := s.opts.LockDates(p); d.After(until) {
				until = d
			}
		}
		if time.Now().Before(until) {
			c.Locked++
			c.LockedBytes += info.size
			continue
		}
		if u.Rewrite && r.Locked() {
			if l, ok := objstore.As[objstore.Locker](r.Store); ok {
				until, err := l.RetainedUntil(ctx, PackKey(p))
				if err != nil {
					return nil, c, fmt.Errorf("retention of %s: %w", PackKey(p), err)
				}
				if time.Now().Before(until) {
					c.Locked++
					c.LockedBytes += info.size
					continue
				}
			}
		}
		units = append(units, u)
	}
	return units, c, nil
}

// worthRecompressing: a pack one of whose live chunks is stored with S2
// (or in a pack whose trailer predates codecs). Reads the trailer only.
func (s *Sweep) worthRecompressing(ctx context.Context, p chunk.PackID, size int64, live map[uint32]uint32) bool {
	entries, err := s.r.PackIndex(ctx, p, size)
	if err != nil {
		return false // left as it is; the verifier reports a damaged trailer
	}
	for _, e := range entries {
		if _, ok := live[e.Loc.Off]; ok && (e.Codec == chunk.S2 && !e.Settled || e.Codec == CodecUnknown) {
			return true
		}
	}
	return false
}

// Condemned encodes the lists a collector publishes of the units it may
// free: chunk ids, and pack ids (what dedup's guard reads).
func Condemned(units []Unit) (chunks, packs []byte) {
	for _, u := range units {
		if u.isPack {
			packs = append(packs, u.pack[:]...)
		} else {
			chunks = append(chunks, u.id[:]...)
		}
	}
	return chunks, packs
}

// Needed reports whether a unit to delete became live since it was
// listed (the mark read again after the condemnation): it is kept.
func (m *Mark) Needed(u Unit) bool {
	if u.Rewrite {
		return false // its live chunks are copied, whatever they are now
	}
	if u.isPack {
		return len(m.packs[u.pack]) > 0
	}
	_, ok := m.ids[u.id]
	return ok
}

// Free deletes a unit, or rewrites it: its live chunks (as m marks them
// now) copied into new packs, after which the old pack is deleted (at the
// next Flush at the latest). A pack that cannot be rewritten safely is
// left as it is (an error wrapping ErrNotRepacked).
func (s *Sweep) Free(ctx context.Context, u Unit, m *Mark) error {
	switch {
	case !u.isPack:
		if err := s.r.Chunks.Delete(ctx, u.id); err != nil {
			return fmt.Errorf("sweep %s: %w", u.Name, err)
		}
	case !u.Rewrite:
		if err := s.r.DeletePack(ctx, u.pack); err != nil {
			return fmt.Errorf("sweep: %w", err)
		}
	default:
		return s.rp.Repack(ctx, u.pack, m.packs[u.pack])
	}
	return nil
}

// Flush finishes the rewrites: stores the pack being filled and deletes
// the old packs it completes.
func (s *Sweep) Flush(ctx context.Context) error { return s.rp.Flush(ctx) }

// Rewrites is what the rewrites did so far.
func (s *Sweep) Rewrites() RepackStats { return s.rp.Stats }

// DropMoved deletes the records of compacted packs that no reference
// names any more (older than the cutoff; with dryRun only counted), and
// returns how many are kept and deleted. Nothing can come to name such a
// pack again: the chunk index locates chunks only in packs that exist,
// and a backup inherits locations only from a parent that still
// references them. Call after every shard's mark (each reads every
// manifest).
func (s *Sweep) DropMoved(ctx context.Context, dryRun bool) (kept, deleted int, err error) {
	for p, recs := range s.moved {
		if s.named[p] {
			kept += len(recs)
			continue
		}
		if _, ok := s.stored[p]; ok {
			kept += len(recs) // its pack's own collection decides
			continue
		}
		var old []string
		for _, r := range recs {
			if r.Modified.After(s.opts.Cutoff) {
				kept++
			} else {
				old = append(old, r.Key)
			}
		}
		if dryRun || len(old) == 0 {
			deleted += len(old)
			continue
		}
		if err := s.r.DeleteMoved(ctx, old); err != nil {
			return kept, deleted, err
		}
		deleted += len(old)
	}
	return kept, deleted, nil
}

// Usage is how the repository's storage is used, as one mark of every
// shard sees it (strata repo stats).
type Usage struct {
	Packs, LiveChunks, PacksBelow, MovedRecords int
	PackBytes, LiveBytes, BelowDeadBytes        int64
	LooseChunks                                 int
	LooseBytes                                  int64
	// LiveByCodec: live bytes in packs by codec name ("unknown": trailers
	// before codecs; "unreadable": a damaged trailer).
	LiveByCodec map[string]int64
}

// Usage reads every pack's trailer for the codecs of its live chunks and
// lists the chunk objects. m must mark every shard (Mark(0, 256)).
func (m *Mark) Usage(ctx context.Context) (Usage, error) {
	s := m.s
	u := Usage{LiveByCodec: map[string]int64{}}
	for _, recs := range s.moved {
		u.MovedRecords += len(recs)
	}
	for p, info := range s.stored {
		u.Packs++
		u.PackBytes += info.size
		live := m.packs.bytes(p)
		u.LiveBytes += live
		u.LiveChunks += len(m.packs[p])
		if live > 0 && float64(live) < s.opts.RepackBelow*float64(info.size) {
			u.PacksBelow++
			u.BelowDeadBytes += info.size - live
		}
		if live == 0 {
			continue
		}
		entries, err := s.r.PackIndex(ctx, p, info.size)
		if err != nil {
			u.LiveByCodec["unreadable"] += live
			continue
		}
		for _, e := range entries {
			if _, ok := m.packs[p][e.Loc.Off]; ok {
				name := e.Codec.String()
				if e.Codec == CodecUnknown {
					name = "unknown"
				}
				u.LiveByCodec[name] += int64(e.Loc.Len)
			}
		}
	}
	if err := s.r.Chunks.List(ctx, byte(m.lo), m.hi, func(sc StoredChunk) error {
		u.LooseChunks++
		u.LooseBytes += sc.Size
		return nil
	}); err != nil {
		return u, fmt.Errorf("list loose chunks: %w", err)
	}
	return u, nil
}
