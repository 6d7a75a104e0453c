// Package restore writes a backed-up disk back out as a sparse raw image.
package restore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/repo"
)

// Stats describes a finished restore.
type Stats struct {
	Bytes      int64 // disk size
	DataChunks int64 // chunks read from the repository
	ZeroChunks int64 // chunks left as holes
}

// ToFile restores man into path. Chunks are fetched in parallel, each
// checked against its id (repo.ChunkStore.GetChunk refuses wrong bytes);
// all-zero chunks become holes. The image is written as path+".partial"
// and renamed into place only when complete, so a failed restore never
// leaves a file that looks like a good one. progress, if set, is called
// with bytes done so far.
func ToFile(ctx context.Context, r *repo.Repository, man *manifest.Manifest, path string, workers int, progress func(done int64)) (Stats, error) {
	var st Stats
	tmp := path + ".partial"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return st, fmt.Errorf("create %s: %w", tmp, err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Truncate(man.DiskSize); err != nil {
		return st, fmt.Errorf("size %s: %w", tmp, err)
	}
	var done, data, zero atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(1, workers))
	for i, id := range man.IDs {
		if err := gctx.Err(); err != nil {
			break
		}
		length := int64(man.ChunkLen(i))
		if id.IsZero() {
			zero.Add(1)
			if progress != nil {
				progress(done.Add(length))
			}
			continue
		}
		g.Go(func() error {
			b, err := r.Chunks.GetChunk(gctx, id)
			if err != nil {
				return fmt.Errorf("chunk %d of the disk: %w", i, err)
			}
			if int64(len(b)) != length {
				return fmt.Errorf("chunk %d of the disk (%s): %d bytes, manifest expects %d", i, repo.ChunkKey(id), len(b), length)
			}
			if _, err := f.WriteAt(b, int64(i)*int64(man.ChunkSize)); err != nil {
				return fmt.Errorf("write %s: %w", tmp, err)
			}
			data.Add(1)
			if progress != nil {
				progress(done.Add(length))
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return st, err
	}
	if err := ctx.Err(); err != nil {
		return st, err
	}
	if err := f.Sync(); err != nil {
		return st, fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return st, fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return st, fmt.Errorf("rename into %s: %w", path, err)
	}
	ok = true
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return Stats{Bytes: man.DiskSize, DataChunks: data.Load(), ZeroChunks: zero.Load()}, nil
}
