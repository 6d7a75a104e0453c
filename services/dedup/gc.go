package dedup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/runtime"
)

// gcLock is the value of contracts.GCLockKey.
type gcLock struct {
	Since time.Time `json:"since"`
}

// staleLock: a lock older than this was left by a crashed collector.
const staleLock = time.Hour

// collect runs one mark-and-sweep. Safety against running backups comes
// from mutual exclusion through the catalog: the collector first writes
// the lock, then looks for backups that are not final; the snapshotter
// first writes a new backup's record, then looks for the lock. Whichever
// writes second sees the other, so a chunk a running backup may reference
// (uploaded by it, or answered "present" by dedup) is never swept. The
// grace period additionally spares chunks of backups that started and
// finished around the mark.
func collect(ctx context.Context, rt *runtime.Runtime, grace time.Duration, dryRun bool) (*contracts.GCReply, error) {
	kv := rt.Catalog.KV
	lock, _ := json.Marshal(gcLock{Since: time.Now().UTC()})
	if _, err := kv.Create(ctx, contracts.GCLockKey, lock); err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return nil, fmt.Errorf("take gc lock: %w", err)
		}
		e, gerr := kv.Get(ctx, contracts.GCLockKey)
		var held gcLock
		if gerr != nil || json.Unmarshal(e.Value(), &held) != nil || time.Since(held.Since) < staleLock {
			return nil, errors.New("garbage collection already running")
		}
		if _, err := kv.Update(ctx, contracts.GCLockKey, lock, e.Revision()); err != nil {
			return nil, errors.New("garbage collection already running")
		}
		rt.Log.Warn("took over a stale gc lock", "since", held.Since)
	}
	defer kv.Delete(context.WithoutCancel(ctx), contracts.GCLockKey)

	recs, err := rt.Catalog.List(ctx, "")
	if err != nil {
		return nil, err
	}
	reply := &contracts.GCReply{Schema: contracts.SchemaVersion, DryRun: dryRun, GraceSeconds: int64(grace / time.Second)}
	referenced := map[chunk.ID]struct{}{}
	for _, r := range recs {
		if !r.State.Final() {
			return nil, fmt.Errorf("backup %s of %s is %s: garbage collection waits until no backup runs", r.ID, r.VM, r.State)
		}
		marked := false
		for _, d := range r.Disks {
			if d.Manifest == "" {
				continue
			}
			m, err := rt.Repo.GetManifest(ctx, d.Manifest)
			if err != nil {
				// Never sweep on an incomplete mark.
				return nil, fmt.Errorf("mark: %w", err)
			}
			for _, id := range m.IDs {
				if !id.IsZero() {
					referenced[id] = struct{}{}
				}
			}
			marked = true
		}
		if marked {
			reply.Backups++
		}
	}
	reply.Referenced = len(referenced)
	cutoff := time.Now().Add(-grace)
	err = rt.Repo.Store.List(ctx, "chunks/", func(in objstore.Info) error {
		reply.Chunks++
		id, err := chunk.ParseID(in.Key[strings.LastIndexByte(in.Key, '/')+1:])
		if err != nil {
			return nil // not a chunk object: not ours to delete
		}
		if _, ok := referenced[id]; ok {
			return nil
		}
		if in.Modified.After(cutoff) {
			reply.Young++
			return nil
		}
		if !dryRun {
			if err := rt.Repo.Store.Delete(ctx, in.Key); err != nil {
				return err
			}
		}
		reply.Deleted++
		reply.FreedBytes += in.Size
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("sweep: %w", err)
	}
	rt.Log.InfoContext(ctx, "garbage collection", "dry_run", dryRun, "backups", reply.Backups, "referenced", reply.Referenced,
		"chunks", reply.Chunks, "young", reply.Young, "deleted", reply.Deleted, "freed_bytes", reply.FreedBytes)
	return reply, nil
}
