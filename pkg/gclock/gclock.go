// Package gclock is garbage collection's coordination state: the lock a
// running collection holds (bucket contracts.BucketGC: its phase and, in
// the sweep, the condemned list) and the per-chunk holds and claims
// (contracts.BucketGCHolds). The collector takes, moves and releases the
// lock and claims chunks; dedup reads the lock on every request and holds
// chunks it reuses; transfer workers ask whether a collection runs. The
// protocol is explained at services/dedup collect. Nobody else touches
// these buckets.
package gclock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/bus"
)

// GC is the lock and the holds.
type GC struct {
	hist  *bus.KVHistory // the lock's changes, deletes included
	lock  jetstream.KeyValue
	holds jetstream.KeyValue
}

// Open binds to the buckets (created by bus.EnsureStreams).
func Open(ctx context.Context, js jetstream.JetStream) (*GC, error) {
	lock, err := js.KeyValue(ctx, contracts.BucketGC)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", contracts.BucketGC, err)
	}
	holds, err := js.KeyValue(ctx, contracts.BucketGCHolds)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", contracts.BucketGCHolds, err)
	}
	hist, err := bus.OpenKVHistory(ctx, js, contracts.BucketGC)
	if err != nil {
		return nil, err
	}
	return &GC{hist: hist, lock: lock, holds: holds}, nil
}

// ErrRunning: another collection holds the lock.
var ErrRunning = errors.New("garbage collection already running")

// Take acquires the lock for l, taking over one older than stale (left by
// a crashed collector). It returns the lock's revision for Move.
func (g *GC) Take(ctx context.Context, l contracts.GCLock, stale time.Duration) (uint64, error) {
	b, _ := json.Marshal(l)
	rev, err := g.lock.Create(ctx, contracts.GCLockKey, b)
	if err == nil {
		return rev, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return 0, fmt.Errorf("take gc lock: %w", err)
	}
	e, err := g.lock.Get(ctx, contracts.GCLockKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, errors.New("gc lock released while taking it; try again")
	}
	if err != nil {
		return 0, fmt.Errorf("read gc lock: %w", err)
	}
	var held contracts.GCLock
	if err := json.Unmarshal(e.Value(), &held); err != nil {
		// Not ours to guess at: a person must look before anything is deleted.
		return 0, fmt.Errorf("gc lock in %s is unreadable (%v); inspect and delete it to collect again", contracts.BucketGC, err)
	}
	if age := time.Since(held.Since); age < stale {
		return 0, fmt.Errorf("%w (since %s, %s ago)", ErrRunning, held.Since.Format(time.RFC3339), age.Round(time.Second))
	}
	rev, err = g.lock.Update(ctx, contracts.GCLockKey, b, e.Revision())
	if errors.Is(err, jetstream.ErrKeyExists) || bus.IsWrongSequence(err) {
		return 0, fmt.Errorf("%w (another collector took over the stale lock first)", ErrRunning)
	}
	if err != nil {
		return 0, fmt.Errorf("take over stale gc lock: %w", err)
	}
	return rev, nil
}

// Move rewrites the lock held at rev (compare-and-set: a collector whose
// lock was taken over stops) and returns the new revision.
func (g *GC) Move(ctx context.Context, l contracts.GCLock, rev uint64) (uint64, error) {
	b, _ := json.Marshal(l)
	rev, err := g.lock.Update(ctx, contracts.GCLockKey, b, rev)
	if err != nil {
		return 0, fmt.Errorf("gc lock changed under the collector: %w", err)
	}
	return rev, nil
}

// Release drops the lock.
func (g *GC) Release(ctx context.Context) error {
	return g.lock.Delete(ctx, contracts.GCLockKey)
}

// Running reports whether a collection holds the lock; a lock that cannot
// be read counts as running (the cautious answer).
func (g *GC) Running(ctx context.Context) bool {
	_, err := g.lock.Get(ctx, contracts.GCLockKey)
	return !errors.Is(err, jetstream.ErrKeyNotFound)
}

// Current reads the lock as it is now, with the sequence of its last
// change (deletes included: the end of a collection changes it too). lock
// is nil when no collection runs.
func (g *GC) Current(ctx context.Context) (seq uint64, lock *contracts.GCLock, err error) {
	seq, v, err := g.hist.Last(ctx, contracts.GCLockKey)
	if err != nil || v == nil {
		return seq, nil, err
	}
	var l contracts.GCLock
	if err := json.Unmarshal(v, &l); err != nil {
		return seq, nil, fmt.Errorf("gc lock unreadable: %w", err)
	}
	return seq, &l, nil
}

// Hold keeps a condemned chunk from deletion by collection gcID. kept: the
// collector will not delete it; false: it was deleted (the caller answers
// "missing" so the backup uploads it again). A chunk being deleted right
// now is waited for: answering earlier could let a re-upload land before
// the delete.
func (g *GC) Hold(ctx context.Context, gcID, chunkID string) (kept bool, err error) {
	key := contracts.GCHoldKey(gcID, chunkID)
	if _, err := g.holds.Create(ctx, key, []byte(contracts.GCHeld)); err == nil {
		return true, nil
	} else if !errors.Is(err, jetstream.ErrKeyExists) {
		return false, fmt.Errorf("hold chunk %s: %w", chunkID, err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		e, err := g.holds.Get(ctx, key)
		if err != nil {
			return false, fmt.Errorf("hold chunk %s: %w", chunkID, err)
		}
		switch string(e.Value()) {
		case contracts.GCHeld:
			return true, nil
		case contracts.GCDeleted:
			return false, nil
		}
		if time.Now().After(deadline) {
			return false, fmt.Errorf("chunk %s is still being deleted after a minute", chunkID)
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Claim marks a condemned chunk as being deleted by collection gcID;
// false when a hold came first (a backup reuses it: not to be deleted).
func (g *GC) Claim(ctx context.Context, gcID, chunkID string) (bool, error) {
	_, err := g.holds.Create(ctx, contracts.GCHoldKey(gcID, chunkID), []byte(contracts.GCDeleting))
	if errors.Is(err, jetstream.ErrKeyExists) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("claim chunk %s: %w", chunkID, err)
	}
	return true, nil
}

// Deleted records that a claimed chunk is gone: dedup may now answer it
// "missing".
func (g *GC) Deleted(ctx context.Context, gcID, chunkID string) error {
	if _, err := g.holds.Put(ctx, contracts.GCHoldKey(gcID, chunkID), []byte(contracts.GCDeleted)); err != nil {
		return fmt.Errorf("mark chunk %s deleted: %w", chunkID, err)
	}
	return nil
}

// Unclaim gives a claimed chunk or pack back, not deleted after all (a
// pack compaction had to leave whole): holds taken on it from now on keep
// it, and dedup stops waiting for its deletion.
func (g *GC) Unclaim(ctx context.Context, gcID, chunkID string) error {
	if _, err := g.holds.Put(ctx, contracts.GCHoldKey(gcID, chunkID), []byte(contracts.GCHeld)); err != nil {
		return fmt.Errorf("give back chunk %s: %w", chunkID, err)
	}
	return nil
}

// RecordLast keeps the reply of a collection that finished, for
// strata repo stats.
func (g *GC) RecordLast(ctx context.Context, r *contracts.GCReply) error {
	b, _ := json.Marshal(r)
	if _, err := g.lock.Put(ctx, contracts.GCLastKey, b); err != nil {
		return fmt.Errorf("record last collection: %w", err)
	}
	return nil
}

// Last is the reply of the last collection that finished; nil when none
// did.
func (g *GC) Last(ctx context.Context) (*contracts.GCReply, error) {
	e, err := g.lock.Get(ctx, contracts.GCLastKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read last collection: %w", err)
	}
	var r contracts.GCReply
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, fmt.Errorf("last collection record unreadable: %w", err)
	}
	return &r, nil
}
