package repo

import (
	"context"
	"errors"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/objstore"
)

// IsBad reports whether a GetChunk error is about the chunk itself
// (corrupt or missing) rather than about reaching the store: a finding to
// record, not a reason to retry.
func IsBad(err error) bool {
	return errors.Is(err, chunk.ErrCorrupt) || errors.Is(err, objstore.ErrNotFound)
}

// IsBadManifest reports whether a GetManifest error is about the manifest
// itself (corrupt, undecodable or missing) rather than about reaching the
// store.
func IsBadManifest(err error) bool {
	return errors.Is(err, manifest.ErrCorrupt) || errors.Is(err, objstore.ErrNotFound)
}

// CheckResult is what reading chunks back found.
type CheckResult struct {
	Checked int                 // read back good
	Bytes   int64               // their decoded size
	Bad     map[chunk.ID]string // corrupt or missing, with the reason
}

// CheckChunks downloads, decodes and re-hashes each chunk from where it is
// stored (zero ids are skipped), parallel at a time. Only a store that
// cannot answer is an error; a bad chunk is a finding in the result.
func CheckChunks(ctx context.Context, r *Repository, refs []chunk.Ref, parallel int) (CheckResult, error) {
	res := CheckResult{Bad: map[chunk.ID]string{}}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(1, parallel))
	for _, ref := range refs {
		if ref.ID.IsZero() {
			continue
		}
		g.Go(func() error {
			data, err := r.ReadChunk(gctx, ref.ID, ref.Loc)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case IsBad(err):
				res.Bad[ref.ID] = err.Error()
			case err != nil:
				return err
			default:
				res.Checked++
				res.Bytes += int64(len(data))
			}
			return nil
		})
	}
	return res, g.Wait()
}

// Refs pairs ids with locations (nil locs: every chunk on its own).
func Refs(ids []chunk.ID, locs []chunk.Loc) []chunk.Ref {
	refs := make([]chunk.Ref, len(ids))
	for i, id := range ids {
		refs[i].ID = id
		if locs != nil {
			refs[i].Loc = locs[i]
		}
	}
	return refs
}
