package api

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/guestfs"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/restore"
	"github.com/strata-backup/strata/pkg/source"
)

// restorable returns a backup that can be read (committed or verified).
func (a *api) restorable(ctx context.Context, vm, id string, disk int) (*contracts.BackupRecord, error) {
	rec, _, err := a.records.Get(ctx, vm, id)
	if err != nil {
		return nil, err
	}
	if rec.State != contracts.StateVerified && rec.State != contracts.StateCommitted {
		return nil, fail(http.StatusConflict, "backup %s is %s, not restorable", rec.ID, rec.State)
	}
	if disk < 0 || disk >= len(rec.Disks) {
		return nil, fail(http.StatusBadRequest, "disk %d: backup %s has %d disk(s)", disk, rec.ID, len(rec.Disks))
	}
	return rec, nil
}

// openGuest opens a backed-up disk's filesystems, read straight from the
// repository (chunks fetched on demand, each checked).
func (a *api) openGuest(ctx context.Context, r *repo.Repository, rec *contracts.BackupRecord, disk int) (*guestfs.Guest, error) {
	man, err := r.GetManifest(ctx, rec.Disks[disk].Manifest)
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", rec.ID, err)
	}
	rd := restore.NewReader(ctx, r, man, restore.ReaderOptions{CacheBytes: 64 << 20})
	g, err := guestfs.New(rd.At(ctx))
	if err != nil {
		return nil, fail(http.StatusUnprocessableEntity, "backup %s disk %d: %v", rec.ID, disk, err)
	}
	return g, nil
}

// Listing is a directory of a backed-up disk (or its volumes at "/").
type Listing struct {
	Path    string           `json:"path"`
	Volumes []guestfs.Volume `json:"volumes,omitempty"`
	Entries []guestfs.Entry  `json:"entries,omitempty"`
}

// list lists /<volume>/<path> of a backed-up disk; "/" lists the volumes.
func (a *api) list(ctx context.Context, rec *contracts.BackupRecord, disk int, p string) (*Listing, error) {
	g, err := a.openGuest(ctx, a.repo, rec, disk)
	if err != nil {
		return nil, err
	}
	vol, inside, err := g.Split(p)
	if err != nil {
		return nil, fail(http.StatusBadRequest, "%v", err)
	}
	if vol == "" {
		return &Listing{Path: "/", Volumes: g.Volumes()}, nil
	}
	fsys, err := g.Volume(vol)
	if err != nil {
		return nil, fail(http.StatusNotFound, "%v", err)
	}
	e, err := fsys.Lstat(inside)
	if err != nil {
		return nil, fail(http.StatusNotFound, "%s: %v", p, err)
	}
	if !e.Mode.IsDir() {
		return nil, fail(http.StatusBadRequest, "%s is not a directory", p)
	}
	entries, err := fsys.ReadDir(inside)
	if err != nil {
		return nil, fail(http.StatusUnprocessableEntity, "%s: %v", p, err)
	}
	return &Listing{Path: p, Entries: entries}, nil
}

// download streams one regular file of a backed-up disk.
func (a *api) download(w http.ResponseWriter, r *http.Request, rec *contracts.BackupRecord, disk int, p string) error {
	g, err := a.openGuest(r.Context(), a.repo, rec, disk)
	if err != nil {
		return err
	}
	vol, inside, err := g.Split(p)
	if err != nil || vol == "" {
		return fail(http.StatusBadRequest, "%s: not a file path (/VOLUME/PATH)", p)
	}
	fsys, err := g.Volume(vol)
	if err != nil {
		return fail(http.StatusNotFound, "%v", err)
	}
	e, err := fsys.Lstat(inside)
	if err != nil {
		return fail(http.StatusNotFound, "%s: %v", p, err)
	}
	if !e.Mode.IsRegular() {
		return fail(http.StatusBadRequest, "%s is not a regular file", p)
	}
	f, err := fsys.Open(inside)
	if err != nil {
		return fail(http.StatusUnprocessableEntity, "%s: %v", p, err)
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", strings.ReplaceAll(e.Name, `"`, "_")))
	w.Header().Set("Content-Length", fmt.Sprint(e.Size))
	if _, err := io.Copy(w, f); err != nil {
		a.log.WarnContext(r.Context(), "download cut", "path", p, "err", err)
	}
	return nil
}

// restoreTarget turns a user's path into one inside STRATA_API_RESTORE_DIR:
// relative, clean, no way out, not there yet.
func (a *api) restoreTarget(p string) (string, error) {
	if a.restoreDir == "" {
		return "", fail(http.StatusForbidden, "restores to a path are off: set STRATA_API_RESTORE_DIR")
	}
	rel := p
	if filepath.IsAbs(p) {
		var err error
		if rel, err = filepath.Rel(a.restoreDir, filepath.Clean(p)); err != nil {
			rel = ".."
		}
	}
	rel = filepath.Clean(rel)
	if p == "" || strings.ContainsRune(p, 0) || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") || filepath.IsAbs(rel) {
		return "", fail(http.StatusBadRequest, "restore path %q: want a file name inside %s", p, a.restoreDir)
	}
	target := filepath.Join(a.restoreDir, rel)
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return "", err
	}
	if err := restore.CheckTarget(target, false); err != nil {
		return "", fail(http.StatusConflict, "%v", err)
	}
	return target, nil
}

// RestoreResult is what a restore to a path wrote.
type RestoreResult struct {
	Path   string `json:"path,omitempty"`
	Target string `json:"target,omitempty"`
	Bytes  int64  `json:"bytes"`
}

// restoreTo writes a backed-up disk to a file under the restore directory.
func (a *api) restoreTo(ctx context.Context, rec *contracts.BackupRecord, disk int, p string) (*RestoreResult, error) {
	target, err := a.restoreTarget(p)
	if err != nil {
		return nil, err
	}
	man, err := a.repo.GetManifest(ctx, rec.Disks[disk].Manifest)
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", rec.ID, err)
	}
	if _, err := restore.ToFile(ctx, a.repo, man, target, restore.Options{}); err != nil {
		return nil, err
	}
	a.log.InfoContext(ctx, "restored to a path", "vm", rec.VM, "backup", rec.ID, "disk", disk, "path", target)
	return &RestoreResult{Path: target, Bytes: man.DiskSize}, nil
}

// restoreToHypervisor makes a new VM from a backup: its disks restored into
// scratch images, then the target's driver (vSphere, libvirt) creates the
// VM from them. Only targets under STRATA_API_RESTORE_TARGETS.
func (a *api) restoreToHypervisor(ctx context.Context, rec *contracts.BackupRecord, target string) (*RestoreResult, error) {
	if len(a.restoreTargets) == 0 {
		return nil, fail(http.StatusForbidden, "restores into hypervisors are off: set STRATA_API_RESTORE_TARGETS")
	}
	if !a.sources.RestoresTo(target) {
		return nil, fail(http.StatusBadRequest, "target %q: not a hypervisor this build restores into (vsphere://HOST/NEW-VM, libvirt+…:///NEW-NAME)", target)
	}
	if !contracts.SourceUnder(a.restoreTargets, target) {
		return nil, fail(http.StatusForbidden, "target %q: not under STRATA_API_RESTORE_TARGETS (%s)", target, strings.Join(a.restoreTargets, ", "))
	}
	if err := a.sources.CheckRestore(ctx, rec, target); err != nil {
		return nil, fail(http.StatusConflict, "restore %s to %s: %v", rec.ID, target, err)
	}
	dir, err := os.MkdirTemp("", "strata-restore-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	var images []source.Image
	var total int64
	for i, disk := range rec.Disks {
		man, err := a.repo.GetManifest(ctx, disk.Manifest)
		if err != nil {
			return nil, fmt.Errorf("backup %s: %w", rec.ID, err)
		}
		p := filepath.Join(dir, fmt.Sprintf("disk%d.img", i))
		if _, err := restore.ToFile(ctx, a.repo, man, p, restore.Options{}); err != nil {
			return nil, err
		}
		images = append(images, source.Image{Path: p, Size: disk.Size})
		total += disk.Size
	}
	if err := a.sources.Restore(ctx, rec, target, images); err != nil {
		return nil, fmt.Errorf("restore %s to %s: %w", rec.ID, target, err)
	}
	a.log.InfoContext(ctx, "restored into a hypervisor", "vm", rec.VM, "backup", rec.ID, "target", target)
	return &RestoreResult{Target: target, Bytes: total}, nil
}
