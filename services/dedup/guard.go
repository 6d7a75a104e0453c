package dedup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/objstore"
)

// gcGuard is dedup's side of a collection's sweep phase (see collect):
// before answering "present" for a chunk the collector condemned, dedup
// holds it; a chunk the collector claimed first is answered "missing",
// but only once its deletion is done.
type gcGuard struct {
	catalog, holds jetstream.KeyValue
	store          objstore.Store

	mu        sync.Mutex
	loaded    string // collection whose condemned list is loaded
	condemned map[chunk.ID]bool
}

// condemnedSet reads gc.lock now — not from a watch, so no answer given
// after the collector entered its sweep phase can miss it — and returns
// the sweep's candidates (nil outside a sweep).
func (g *gcGuard) condemnedSet(ctx context.Context) (string, map[chunk.ID]bool, error) {
	e, err := g.catalog.Get(ctx, contracts.GCLockKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", nil, nil
	}
	if err != nil {
		return "", nil, fmt.Errorf("read gc lock: %w", err)
	}
	var lock contracts.GCLock
	if err := json.Unmarshal(e.Value(), &lock); err != nil {
		return "", nil, fmt.Errorf("gc lock unreadable: %w", err)
	}
	if lock.Phase != "sweep" {
		return "", nil, nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.loaded != lock.ID {
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
		g.loaded, g.condemned = lock.ID, set
	}
	return g.loaded, g.condemned, nil
}

// hold keeps a condemned chunk from deletion. kept: the collector will not
// delete it (dedup may answer from the store); false: it was deleted, and
// the caller answers "missing" so the backup uploads it again.
func (g *gcGuard) hold(ctx context.Context, gcID string, id chunk.ID) (kept bool, err error) {
	key := contracts.GCHoldKey(gcID, id.String())
	if _, err := g.holds.Create(ctx, key, []byte(contracts.GCHeld)); err == nil {
		return true, nil
	} else if !errors.Is(err, jetstream.ErrKeyExists) {
		return false, fmt.Errorf("hold chunk %s: %w", id, err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		e, err := g.holds.Get(ctx, key)
		if err != nil {
			return false, fmt.Errorf("hold chunk %s: %w", id, err)
		}
		switch string(e.Value()) {
		case contracts.GCHeld:
			return true, nil
		case contracts.GCDeleted:
			return false, nil
		}
		// "deleting": answering now could let the re-upload land before
		// the delete.
		if time.Now().After(deadline) {
			return false, fmt.Errorf("chunk %s is still being deleted after a minute", id)
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
