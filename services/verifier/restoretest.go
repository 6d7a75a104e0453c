package verifier

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/diskcheck"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/restore"
	"github.com/strata-backup/strata/pkg/source"
)

// restoreTest restores every disk of the backup to scratch files (sparse;
// removed after), checks each is plausible — and like the source's where
// the source can still be read — and, for a vSphere backup, boots a
// throwaway VM made from them. It returns the problems found.
func (v *verifier) restoreTest(ctx context.Context, rec *contracts.BackupRecord, run *chunkRun) ([]string, error) {
	dir, err := os.MkdirTemp(v.scratch, "strata-restore-test-")
	if err != nil {
		return nil, fmt.Errorf("scratch directory: %w", err)
	}
	defer os.RemoveAll(dir)
	var problems []string
	var images []source.Image
	for _, disk := range rec.Disks {
		man, err := v.repo.GetManifest(ctx, disk.Manifest)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		path := filepath.Join(dir, fmt.Sprintf("disk%d.img", disk.Index))
		if _, err := restore.ToFile(ctx, v.repo, man, path, restore.Options{Workers: 4}); err != nil {
			if repo.IsBad(err) {
				// Name every bad chunk, not just the first the restore hit.
				if cerr := run.checkManifest(ctx, man); cerr != nil {
					return nil, cerr
				}
				problems = append(problems, fmt.Sprintf("%s: restore failed: %v", disk.Name, err))
				continue
			}
			return nil, err
		}
		images = append(images, source.Image{Path: path, Size: disk.Size})
		p, err := v.inspect(ctx, rec, disk, path)
		if err != nil {
			return nil, err
		}
		if p != "" {
			problems = append(problems, p)
		}
	}
	if len(problems) == 0 {
		if checked, err := v.sources.BootCheck(ctx, rec, images); err != nil {
			problems = append(problems, "boot check: "+err.Error())
		} else if checked {
			v.log.InfoContext(ctx, "restore test: boot check passed", "vm", rec.VM, "backup", rec.ID)
		}
	}
	return problems, nil
}

// inspect checks one restored image.
func (v *verifier) inspect(ctx context.Context, rec *contracts.BackupRecord, disk contracts.DiskRecord, path string) (string, error) {
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
	// Not a problem, but what tells a crash-consistent point from a
	// filesystem-consistent one: a journal to replay at the first mount.
	if journals := restored.Recovery(); len(journals) > 0 {
		v.log.InfoContext(ctx, "restore test: journal recovery needed at the first mount (a crash-consistent point)", "vm", rec.VM, "backup", rec.ID,
			"disk", disk.Name, "consistency", rec.Consistency, "filesystems", journals)
		trace.SpanFromContext(ctx).SetAttributes(attribute.StringSlice("strata.restore_test.needs_recovery", journals))
	} else {
		trace.SpanFromContext(ctx).SetAttributes(attribute.Bool("strata.restore_test.journals_clean", true))
	}
	src, err := v.sources.Open(ctx, disk.Source)
	if err != nil {
		v.log.InfoContext(ctx, "restore test: source no longer readable; checked the restore on its own", "backup", rec.ID, "disk", disk.Name, "err", err)
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
