// Package reach walks what the backups in the catalog reference: the one
// "every manifest of every backup" loop, used by garbage collection's mark,
// the chunks verification job, the damage scan and `strata check`.
package reach

import (
	"context"
	"fmt"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/manifest"
)

// Walker reads the manifests of the catalog's backups.
type Walker struct {
	// Catalog lists the backups (a *catalog.Catalog).
	Catalog interface {
		List(ctx context.Context, vm string) ([]*contracts.BackupRecord, error)
	}
	// Repo reads their manifests (a *repo.Repository).
	Repo interface {
		GetManifest(ctx context.Context, key string) (*manifest.Manifest, error)
	}
	// Records, when set, are walked instead of the catalog's list (a
	// caller that has listed them already).
	Records []*contracts.BackupRecord
	// Keep selects backups; nil: every backup that has manifests.
	Keep func(*contracts.BackupRecord) bool
	// Skip reports manifests read already (a second pass of a mark); nil:
	// none.
	Skip func(key string) bool
	// BadManifest is told about a manifest that cannot be read or decoded;
	// its error stops the walk. Nil: the first bad manifest stops it (a
	// mark must never be built on a partial walk).
	BadManifest func(rec *contracts.BackupRecord, disk contracts.DiskRecord, err error) error
}

// Committed keeps the backups whose data is complete: committed or verified.
func Committed(r *contracts.BackupRecord) bool {
	return r.State == contracts.StateCommitted || r.State == contracts.StateVerified
}

// Walk calls f for every disk manifest of every kept backup, and returns
// how many backups it visited. Memory: one manifest at a time.
func (w Walker) Walk(ctx context.Context, f func(rec *contracts.BackupRecord, disk contracts.DiskRecord, man *manifest.Manifest) error) (backups int, err error) {
	recs := w.Records
	if recs == nil {
		if recs, err = w.Catalog.List(ctx, ""); err != nil {
			return 0, err
		}
	}
	for _, r := range recs {
		if w.Keep != nil && !w.Keep(r) {
			continue
		}
		visited := false
		for _, d := range r.Disks {
			if d.Manifest == "" {
				continue
			}
			if !visited {
				backups++
				visited = true
			}
			if w.Skip != nil && w.Skip(d.Manifest) {
				continue
			}
			if err := ctx.Err(); err != nil {
				return backups, err
			}
			man, err := w.Repo.GetManifest(ctx, d.Manifest)
			if err != nil {
				if w.BadManifest == nil {
					return backups, fmt.Errorf("backup %s of %s: %w", r.ID, r.VM, err)
				}
				if err := w.BadManifest(r, d, err); err != nil {
					return backups, err
				}
				continue
			}
			if err := f(r, d, man); err != nil {
				return backups, err
			}
		}
	}
	return backups, nil
}
