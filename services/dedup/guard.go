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
	catalogStream jetstream.Stream // behind the catalog bucket: gc.lock's last message, deletes included
	holds         jetstream.KeyValue
	store         objstore.Store
	// forget drops what dedup remembers as present. Called whenever gc.lock
	// changed since the last request: a collection may have deleted any of
	// it, including one this instance never saw run.
	forget func()

	mu        sync.Mutex
	lockSeq   uint64 // stream sequence of gc.lock's last message seen
	loaded    string // condemned list loaded
	condemned map[chunk.ID]bool
}

// gcLockSubject is gc.lock's subject in the catalog bucket's stream.
const gcLockSubject = "$KV." + contracts.BucketCatalog + "." + contracts.GCLockKey

// condemnedSet reads gc.lock now — not from a watch, so no answer given
// after the collector entered its sweep phase can miss it — and returns
// the sweep's candidates (nil outside a sweep). It reads the key's last
// message, delete markers included, so that every change of the lock —
// the end of a collection too — is seen by the next request, which then
// forgets the present cache before consulting it.
func (g *gcGuard) condemnedSet(ctx context.Context) (string, map[chunk.ID]bool, error) {
	var seq uint64
	var lock contracts.GCLock
	msg, err := g.catalogStream.GetLastMsgForSubject(ctx, gcLockSubject)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
	case err != nil:
		return "", nil, fmt.Errorf("read gc lock: %w", err)
	default:
		seq = msg.Sequence
		if op := msg.Header.Get("KV-Operation"); op != "DEL" && op != "PURGE" {
			if err := json.Unmarshal(msg.Data, &lock); err != nil {
				return "", nil, fmt.Errorf("gc lock unreadable: %w", err)
			}
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if seq != g.lockSeq {
		if g.forget != nil {
			g.forget()
		}
		g.lockSeq = seq
	}
	if lock.Phase != "sweep" {
		return "", nil, nil
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
