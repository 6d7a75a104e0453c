package verifier

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/diskcheck"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/restore"
)

// restoreTest restores one disk to a scratch file (sparse; removed after)
// and checks it is plausible, and like the source's where the source can
// still be read. It returns the problem, or "".
func (v *verifier) restoreTest(ctx context.Context, rec *contracts.BackupRecord, disk contracts.DiskRecord, man *manifest.Manifest, run *chunkRun) (string, error) {
	dir, err := os.MkdirTemp(v.scratch, "strata-restore-test-")
	if err != nil {
		return "", fmt.Errorf("scratch directory: %w", err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "disk.img")
	if _, err := restore.ToFile(ctx, v.rt.Repo, man, path, 4, nil); err != nil {
		if errors.Is(err, chunk.ErrCorrupt) || errors.Is(err, objstore.ErrNotFound) {
			// Name every bad chunk, not just the first the restore hit.
			if cerr := run.checkIDs(ctx, man.IDs); cerr != nil {
				return "", cerr
			}
			return fmt.Sprintf("%s: restore failed: %v", disk.Name, err), nil
		}
		return "", err
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	restored, err := diskcheck.Inspect(f, disk.Size)
	if err != nil {
		return fmt.Sprintf("%s: restored disk: %v", disk.Name, err), nil
	}
	if p := restored.Plausible(); p != "" {
		return fmt.Sprintf("%s: restored disk: %s", disk.Name, p), nil
	}
	src, err := v.sources.Open(ctx, disk.Source)
	if err != nil {
		v.rt.Log.InfoContext(ctx, "restore test: source no longer readable; checked the restore on its own", "backup", rec.ID, "disk", disk.Name, "err", err)
		return "", nil
	}
	defer src.Close()
	original, err := diskcheck.Inspect(src, src.Size())
	if err != nil {
		return "", nil // the source changed into something unreadable: the restore stands on its own
	}
	if c := diskcheck.Compare(original, restored); c != "" {
		return fmt.Sprintf("%s: %s", disk.Name, c), nil
	}
	return "", nil
}
