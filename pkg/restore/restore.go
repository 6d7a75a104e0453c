// Package restore writes a backed-up disk back out as a sparse raw image.
package restore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
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

// Options of one restore.
type Options struct {
	Workers int // chunks fetched at once (default 8)
	// Progress, if set, is called with bytes done so far.
	Progress func(done int64)
	// Overwrite lets the restore replace an existing file at the target
	// (never a directory); without it an existing target is refused, even
	// one that appears while the restore runs.
	Overwrite bool
}

// ErrExists: the target exists and the restore may not replace it.
var ErrExists = errors.New("target exists (use --force to replace it)")

// CheckTarget refuses a target a restore could not, or may not, write:
// an existing file without overwrite, a directory, a missing parent
// directory. Callers check every target before restoring anything.
func CheckTarget(path string, overwrite bool) error {
	fi, err := os.Stat(path)
	switch {
	case err == nil && fi.IsDir():
		return fmt.Errorf("%s is a directory", path)
	case err == nil && !overwrite:
		return fmt.Errorf("%s: %w", path, ErrExists)
	case err == nil && !fi.Mode().IsRegular():
		return fmt.Errorf("%s is not a regular file (a restore writes an image file)", path)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return err
	}
	if d, err := os.Stat(filepath.Dir(path)); err != nil || !d.IsDir() {
		return fmt.Errorf("%s: directory %s does not exist", path, filepath.Dir(path))
	}
	return nil
}

// ToFile restores man into path. Chunks are fetched in parallel, each
// checked against its id (repo.ChunkStore.GetChunk refuses wrong bytes);
// all-zero chunks become holes. The image is written as path+".partial"
// and moved into place only when complete, so a failed restore never
// leaves a file that looks like a good one.
func ToFile(ctx context.Context, r *repo.Repository, man *manifest.Manifest, path string, opt Options) (Stats, error) {
	var st Stats
	if err := CheckTarget(path, opt.Overwrite); err != nil {
		return st, err
	}
	workers, progress := cmp.Or(opt.Workers, 8), opt.Progress
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
	// Chunks that lie back to back in a pack (a full backup stores a
	// batch's new chunks in disk order) are fetched with one request per
	// run; a chunk stored on its own is a run of one.
	for i := 0; i < len(man.IDs); {
		if err := gctx.Err(); err != nil {
			break
		}
		if man.IDs[i].IsZero() {
			zero.Add(1)
			if progress != nil {
				progress(done.Add(int64(man.ChunkLen(i))))
			}
			i++
			continue
		}
		start, size := i, int64(man.Loc(i).Len)
		for i++; i < len(man.IDs) && !man.IDs[i].IsZero() && repo.Contiguous(man.Loc(i-1), man.Loc(i)) &&
			size+int64(man.Loc(i).Len) <= repo.MaxRunBytes; i++ {
			size += int64(man.Loc(i).Len)
		}
		end := i
		g.Go(func() error {
			refs := repo.Refs(man.IDs[start:end], nil)
			for j := range refs {
				refs[j].Loc = man.Loc(start + j)
			}
			chunks, err := r.ReadRun(gctx, refs)
			if err != nil {
				return fmt.Errorf("chunks %d..%d of the disk: %w", start, end-1, err)
			}
			for j, b := range chunks {
				at := start + j
				length := int64(man.ChunkLen(at))
				if int64(len(b)) != length {
					return fmt.Errorf("chunk %d of the disk (%s): %d bytes, manifest expects %d", at, man.IDs[at], len(b), length)
				}
				if _, err := f.WriteAt(b, int64(at)*int64(man.ChunkSize)); err != nil {
					return fmt.Errorf("write %s: %w", tmp, err)
				}
				data.Add(1)
				if progress != nil {
					progress(done.Add(length))
				}
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
	if opt.Overwrite {
		if err := os.Rename(tmp, path); err != nil {
			return st, fmt.Errorf("rename into %s: %w", path, err)
		}
	} else {
		// link(2) never replaces: a file that appeared at the target while
		// the restore ran is left alone.
		if err := os.Link(tmp, path); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return st, fmt.Errorf("%s: %w", path, ErrExists)
			}
			return st, fmt.Errorf("move into %s: %w", path, err)
		}
		os.Remove(tmp)
	}
	ok = true
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return Stats{Bytes: man.DiskSize, DataChunks: data.Load(), ZeroChunks: zero.Load()}, nil
}
