package dedup

import (
	"context"
	"fmt"
	"sync"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/repo"
)

// gcState is what the guard reads and takes of a collection's shared
// state (gclock.GC).
type gcState interface {
	// Current is the lock now, with the sequence of its last change.
	Current(ctx context.Context) (seq uint64, lock *contracts.GCLock, err error)
	// Hold keeps a condemned unit; false: the collector deleted it.
	Hold(ctx context.Context, gcID, unit string) (kept bool, err error)
}

// gcGuard is dedup's side of a collection's sweep phase (see collect):
// before answering "present" for a chunk the collector condemned, dedup
// holds it; a chunk the collector claimed first is answered "missing",
// but only once its deletion is done.
type gcGuard struct {
	gc    gcState
	store objstore.Store
	// forget drops what dedup remembers as present. Called whenever gc.lock
	// changed since the last request: a collection may have deleted any of
	// it, including one this instance never saw run.
	forget func()

	mu        sync.Mutex
	lockSeq   uint64 // stream sequence of gc.lock's last message seen
	loaded    string // condemned list loaded
	condemned map[chunk.ID]bool
	// the same for packs (packed repositories)
	loadedPacks  string
	packs        map[chunk.PackID]bool
	pendingPacks string // the lock's condemned pack list, as last read
}

// condemnedPacks returns the packs the collector may delete (nil outside
// a sweep of packs), as the gc.lock read by condemnedSet — called first,
// in the same request — names them.
func (g *gcGuard) condemnedPacks(ctx context.Context) (map[chunk.PackID]bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	key := g.pendingPacks
	if key == "" {
		return nil, nil
	}
	if g.loadedPacks != key {
		raw, err := g.store.Get(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("read condemned pack list: %w", err)
		}
		if len(raw)%len(chunk.PackID{}) != 0 {
			return nil, fmt.Errorf("condemned pack list %s is %d bytes: not a list of pack ids", key, len(raw))
		}
		set := make(map[chunk.PackID]bool, len(raw)/len(chunk.PackID{}))
		for i := 0; i < len(raw); i += len(chunk.PackID{}) {
			set[chunk.PackID(raw[i:i+len(chunk.PackID{})])] = true
		}
		g.loadedPacks, g.packs = key, set
	}
	return g.packs, nil
}

// holdPack keeps a condemned pack from deletion (see hold).
func (g *gcGuard) holdPack(ctx context.Context, gcID string, p chunk.PackID) (kept bool, err error) {
	return g.gc.Hold(ctx, gcID, repo.PackHold(p))
}

// condemnedSet reads gc.lock now — not from a watch, so no answer given
// after the collector entered its sweep phase can miss it — and returns
// the sweep's candidates (nil outside a sweep). It reads the key's last
// message, delete markers included, so that every change of the lock —
// the end of a collection too — is seen by the next request, which then
// forgets the present cache before consulting it.
func (g *gcGuard) condemnedSet(ctx context.Context) (string, map[chunk.ID]bool, error) {
	seq, current, err := g.gc.Current(ctx)
	if err != nil {
		return "", nil, err
	}
	var lock contracts.GCLock
	if current != nil {
		lock = *current
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if seq != g.lockSeq {
		if g.forget != nil {
			g.forget()
		}
		g.lockSeq = seq
	}
	g.pendingPacks = ""
	if lock.Phase != "sweep" {
		return "", nil, nil
	}
	g.pendingPacks = lock.CondemnedPacks
	if lock.Condemned == "" {
		return lock.ID, nil, nil
	}
	if g.loaded != lock.Condemned {
		raw, err := g.store.Get(ctx, lock.Condemned)
		if err != nil {
			return "", nil, fmt.Errorf("read condemned list: %w", err)
		}
		if len(raw)%len(chunk.ID{}) != 0 {
			return "", nil, fmt.Errorf("condemned list %s is %d bytes: not a list of ids", lock.Condemned, len(raw))
		}
		set := make(map[chunk.ID]bool, len(raw)/len(chunk.ID{}))
		for i := 0; i < len(raw); i += len(chunk.ID{}) {
			set[chunk.ID(raw[i:i+len(chunk.ID{})])] = true
		}
		g.loaded, g.condemned = lock.Condemned, set
	}
	return lock.ID, g.condemned, nil
}

// hold keeps a condemned chunk from deletion. kept: the collector will not
// delete it (dedup may answer from the store); false: it was deleted, and
// the caller answers "missing" so the backup uploads it again.
func (g *gcGuard) hold(ctx context.Context, gcID string, id chunk.ID) (kept bool, err error) {
	return g.gc.Hold(ctx, gcID, id.String())
}
