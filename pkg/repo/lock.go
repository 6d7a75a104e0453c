package repo

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sync/errgroup"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/objstore"
)

// LockPolicy is how a repository uses S3 Object Lock (recorded in its
// config at creation, STRATA_S3_OBJECT_LOCK and STRATA_LOCK_DAYS).
//
// Every backup stays immutable for Period after it is made: its manifests
// and record, and every pack or chunk it references, are retained until at
// least then. Retain-until dates are set in generations of Step (Veeam's
// "block generation"): an object that must be kept until t is locked until
// the end of the Step that holds t, plus one more Step. A pack that every
// daily backup references then needs one extension request per Step, not
// one per backup, at the price of objects living up to two Steps longer
// than strictly needed.
type LockPolicy struct {
	Mode   string        `json:"mode"`   // governance or compliance
	Period time.Duration `json:"period"` // how long a backup stays immutable
	Step   time.Duration `json:"step"`   // the generation retain-until dates are rounded up to
}

// DefaultLockStep is the generation for periods of 30 days or more;
// shorter periods use a third of the period.
const DefaultLockStep = 10 * 24 * time.Hour

// NewLockPolicy checks mode and fills the step in.
func NewLockPolicy(mode string, period, step time.Duration) (*LockPolicy, error) {
	switch m := strings.ToLower(mode); m {
	case "governance", "compliance":
		mode = m
	default:
		return nil, fmt.Errorf("object lock mode %q: want governance or compliance", mode)
	}
	if period <= 0 {
		return nil, fmt.Errorf("object lock period %v: must be positive (STRATA_LOCK_DAYS)", period)
	}
	if step <= 0 {
		step = min(DefaultLockStep, period/3)
	}
	step = max(step, time.Second) // S3 dates are to the second
	return &LockPolicy{Mode: mode, Period: period, Step: step}, nil
}

// Needed is the date until which a backup made at made must stay locked.
func (p *LockPolicy) Needed(made time.Time) time.Time { return made.Add(p.Period) }

// Target is the retain-until set for something needed until needed: the
// end of its generation plus one more (see LockPolicy).
func (p *LockPolicy) Target(needed time.Time) time.Time {
	return time.Unix(0, 0).Add(needed.Sub(time.Unix(0, 0)).Truncate(p.Step) + 2*p.Step).UTC()
}

// LockedUntil is the date before which a backup whose objects were last
// written at written cannot be deleted: its retain-until.
func (p *LockPolicy) LockedUntil(written time.Time) time.Time { return p.Target(p.Needed(written)) }

// lockedKey says which keys are written locked: everything that a backup
// needs. The garbage collector's own bookkeeping (gc/) and compaction's
// moved records (moved/, which only ever describe unlocked packs: a
// locked pack is never rewritten) are scratch state that must stay
// deletable.
func lockedKey(key string) bool {
	return !strings.HasPrefix(key, "gc/") && !strings.HasPrefix(key, "moved/")
}

// StoreLock is the objstore.Lock a store writing this policy's
// repository uses.
func (p *LockPolicy) StoreLock() *objstore.Lock {
	return &objstore.Lock{Mode: p.Mode, Until: func(key string, written time.Time) time.Time {
		if !lockedKey(key) {
			return time.Time{}
		}
		return p.LockedUntil(written)
	}}
}

// Locked reports whether the repository is under Object Lock.
func (r *Repository) Locked() bool { return r.Config.Lock != nil }

// LockedUntil is the date before which a backup whose objects were last
// written at written cannot be deleted; zero in an unlocked repository.
func (r *Repository) LockedUntil(written time.Time) time.Time {
	if r.Config.Lock == nil {
		return time.Time{}
	}
	return r.Config.Lock.LockedUntil(written)
}

// packMade is when a pack was created: its id is a UUIDv7, whose first 48
// bits are the Unix time in milliseconds.
func packMade(p chunk.PackID) time.Time {
	u := uuid.UUID(p)
	if u.Version() != 7 {
		return time.Time{}
	}
	sec, nsec := u.Time().UnixTime()
	return time.Unix(sec, nsec)
}

// retained remembers the retain-until dates this process set or saw, so
// a pack that every backup references costs one request per generation,
// not one per backup. Bounded: when full it starts over (a forgotten date
// costs two requests the next time, never a lost lock).
type retained struct {
	mu sync.Mutex
	m  map[string]time.Time
}

const maxRetained = 1 << 18

func (c *retained) covers(key string, until time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.m[key]
	return ok && !t.Before(until)
}

func (c *retained) set(key string, until time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxRetained {
		c.m = make(map[string]time.Time)
	}
	c.m[key] = until
}

// LockStats counts what Cover did.
type LockStats struct {
	Objects  int // objects the backup needs
	Extended int // retention extension requests made
	// Packs: the retain-until dates Cover set or read from the store (not
	// those it already knew), for the pack index (contracts.PackRetained).
	Packs map[chunk.PackID]time.Time
}

// Forget drops what Cover learned of these packs, so that the next Cover
// reads their dates again (and reports them): a caller that could not
// pass the dates on calls it.
func (r *Repository) Forget(packs map[chunk.PackID]time.Time) {
	r.retained.mu.Lock()
	defer r.retained.mu.Unlock()
	for p := range packs {
		delete(r.retained.m, PackKey(p))
	}
}

// Cover makes every object the backup of these manifests needs — each pack
// or loose chunk it references, and the repository's config — retained
// until the backup's own lock ends (made + Period), extending older
// objects in generations. Called before the backup is committed: a
// committed backup in a locked repository never depends on an object that
// could be deleted before the backup itself. A no-op in an unlocked
// repository.
func (r *Repository) Cover(ctx context.Context, made time.Time, mans ...*manifest.Manifest) (LockStats, error) {
	var st LockStats
	p := r.Config.Lock
	if p == nil {
		return st, nil
	}
	locker, ok := objstore.As[objstore.Locker](r.Store)
	if !ok {
		return st, fmt.Errorf("repository in %s is under Object Lock, but its store cannot lock (set STRATA_S3_OBJECT_LOCK)", r.Store)
	}
	needed := p.Needed(made)
	target := p.Target(needed)
	keys := map[string]bool{configKey: true}
	for _, m := range mans {
		for _, r := range m.Data() {
			id := r.ID
			if loc := r.Loc; loc.InPack() {
				// A pack made recently enough carries a date that covers
				// this backup from its creation: no request at all.
				if made := packMade(loc.Pack); !made.IsZero() && !p.LockedUntil(made).Before(needed) {
					continue
				}
				keys[PackKey(loc.Pack)] = true
			} else {
				keys[ChunkKey(id)] = true
			}
		}
	}
	st.Objects = len(keys)
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	var cover func(ctx context.Context, key string, hop int) error
	cover = func(ctx context.Context, key string, hop int) error {
		if r.retained.covers(key, needed) {
			return nil
		}
		have, err := locker.RetainedUntil(ctx, key)
		if errors.Is(err, objstore.ErrNotFound) && hop < maxMoveHops {
			if p, ok := packOfKey(key); ok {
				// Compacted (it was unlocked then): the backup reads its
				// chunks through the moved records, so they and the
				// packs they name are what must stay.
				moved, err := r.movedTargets(ctx, p)
				if err != nil {
					return fmt.Errorf("cover backup: %w", err)
				}
				if len(moved) == 0 {
					return fmt.Errorf("cover backup: %s is gone and was not moved: %w", key, objstore.ErrNotFound)
				}
				for _, k := range moved {
					if err := cover(ctx, k, hop+1); err != nil {
						return err
					}
				}
				return nil
			}
		}
		if err != nil {
			return fmt.Errorf("cover backup: %w", err)
		}
		if have.Before(needed) {
			if err := locker.Retain(ctx, key, target); err != nil {
				return fmt.Errorf("cover backup: %w", err)
			}
			have = target
			mu.Lock()
			st.Extended++
			mu.Unlock()
		}
		r.retained.set(key, have)
		if p, ok := packOfKey(key); ok {
			mu.Lock()
			if st.Packs == nil {
				st.Packs = map[chunk.PackID]time.Time{}
			}
			st.Packs[p] = have
			mu.Unlock()
		}
		return nil
	}
	for key := range keys {
		g.Go(func() error { return cover(gctx, key, 0) })
	}
	return st, g.Wait()
}

// packOfKey parses a pack's key.
func packOfKey(key string) (chunk.PackID, bool) {
	name, ok := strings.CutPrefix(key, "packs/")
	if !ok || len(name) < 3 {
		return chunk.PackID{}, false
	}
	p, err := chunk.ParsePackID(name[3:])
	return p, err == nil && PackKey(p) == key
}

// movedTargets lists the moved records of pack p and the packs they move
// its chunks to: the keys a backup still naming p reads through.
func (r *Repository) movedTargets(ctx context.Context, p chunk.PackID) ([]string, error) {
	prefix := movedPrefix(p)
	var keys []string
	packs := map[string]bool{}
	err := objstore.ListAll(ctx, r.Store, prefix, func(in objstore.Info) error {
		if strings.Contains(in.Key[len(prefix):], "/") {
			return nil
		}
		b, err := objstore.GetChecked(ctx, r.Store, in.Key, func(b []byte) error {
			plain, err := r.seal.open(b, []byte(in.Key))
			if err == nil {
				_, err = decodeMoves(plain)
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("moved record %s: %w", in.Key, err)
		}
		plain, _ := r.seal.open(b, []byte(in.Key))
		moves, _ := decodeMoves(plain)
		keys = append(keys, in.Key)
		for _, m := range moves {
			packs[PackKey(m.To.Pack)] = true
		}
		return nil
	})
	for k := range packs {
		keys = append(keys, k)
	}
	return keys, err
}

// packLockedAtLeast is a lower bound of a pack's retain-until known without
// asking the store (from its creation time); zero in an unlocked
// repository.
func (r *Repository) packLockedAtLeast(p chunk.PackID) time.Time {
	if r.Config.Lock == nil {
		return time.Time{}
	}
	made := packMade(p)
	if made.IsZero() {
		return time.Time{}
	}
	return r.Config.Lock.LockedUntil(made)
}
