package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/export"
	"github.com/strata-backup/strata/pkg/httpserve"
	"github.com/strata-backup/strata/pkg/repo"
)

// Export is a backup point served over NBD by this api replica: QEMU,
// libvirt or qemu-img use its disks in place (instant recovery).
type Export struct {
	ID        string          `json:"id"`
	VM        string          `json:"vm"`
	BackupID  string          `json:"backup_id"`
	Writable  bool            `json:"writable"`
	Overlay   string          `json:"overlay,omitempty"` // where a writable export's writes go
	StartedAt time.Time       `json:"started_at"`
	Disks     []export.Served `json:"disks"`
}

// exports are the NBD exports this replica serves. NBD carries no
// authentication here, so they listen on loopback only: for a hypervisor
// on the api's own host (elsewhere: ssh -L, or strata serve there).
type exports struct {
	mu       sync.Mutex
	by       map[string]*liveExport
	host     string // loopback address the exports listen on
	dir      string // overlays of writable exports; empty: read-only only
	cacheMiB int64
	log      *slog.Logger
}

type liveExport struct {
	Export
	stop func()
	done chan struct{}
}

func newExports(host, dir string, log *slog.Logger) (*exports, error) {
	if !httpserve.IsLoopback(net.JoinHostPort(host, "0")) {
		return nil, fmt.Errorf("STRATA_API_EXPORT_HOST %q: exports listen on loopback only (NBD has no authentication here)", host)
	}
	if dir != "" {
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("STRATA_API_EXPORT_DIR %s: not a directory", dir)
		}
	}
	return &exports{by: map[string]*liveExport{}, host: host, dir: dir, cacheMiB: 256, log: log}, nil
}

// start serves rec until stop or until the service's ctx ends.
func (e *exports) start(ctx context.Context, r *repo.Repository, rec *contracts.BackupRecord, writable bool) (*Export, error) {
	if writable && e.dir == "" {
		return nil, fail(http.StatusForbidden, "writable exports are off: set STRATA_API_EXPORT_DIR (where their writes go)")
	}
	id := uuid.NewString()
	ex := Export{ID: id, VM: rec.VM, BackupID: rec.ID, Writable: writable, StartedAt: time.Now().UTC()}
	var files func(i int) (string, string)
	if writable {
		ex.Overlay = filepath.Join(e.dir, id)
		if err := os.Mkdir(ex.Overlay, 0o700); err != nil {
			return nil, err
		}
		files = func(i int) (string, string) {
			base := filepath.Join(ex.Overlay, fmt.Sprintf("disk%d", i))
			return base + ".raw", base + ".map"
		}
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	disks, closeAll, err := export.Open(sctx, r, rec, e.cacheMiB<<20, 8, files)
	if err != nil {
		cancel()
		return nil, err
	}
	l, err := export.Listen("tcp", net.JoinHostPort(e.host, "0"))
	if err != nil {
		closeAll()
		cancel()
		return nil, err
	}
	announced := make(chan []export.Served, 1)
	live := &liveExport{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(live.done)
		defer closeAll()
		if err := export.Serve(sctx, l, disks, e.log, func(s []export.Served) { announced <- s }); err != nil {
			e.log.Warn("export stopped", "export", id, "err", err)
		}
		e.mu.Lock()
		delete(e.by, id)
		e.mu.Unlock()
	}()
	go func() { <-ctx.Done(); cancel() }() // the service stops: so do its exports
	ex.Disks = <-announced
	live.Export = ex
	e.mu.Lock()
	e.by[id] = live
	e.mu.Unlock()
	e.log.Info("export started", "export", id, "vm", rec.VM, "backup", rec.ID, "writable", writable, "url", ex.Disks[0].URL)
	return &ex, nil
}

func (e *exports) list(vm, backupID string) []Export {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := []Export{}
	for _, l := range e.by {
		if (vm == "" || l.VM == vm) && (backupID == "" || l.BackupID == backupID) {
			out = append(out, l.Export)
		}
	}
	slices.SortFunc(out, func(a, b Export) int { return a.StartedAt.Compare(b.StartedAt) })
	return out
}

// stop ends an export and waits until its overlay is flushed and closed.
func (e *exports) stopExport(id string) error {
	e.mu.Lock()
	l := e.by[id]
	e.mu.Unlock()
	if l == nil {
		return fail(http.StatusNotFound, "no export %q on this api replica", id)
	}
	l.stop()
	<-l.done
	e.log.Info("export stopped", "export", id, "vm", l.VM, "backup", l.BackupID)
	return nil
}

// ExportRequest starts an export.
type ExportRequest struct {
	Writable bool `json:"writable"`
}

func (a *api) startExport(w http.ResponseWriter, r *http.Request) error {
	var req ExportRequest
	if err := decodeStrict(r, &req); err != nil {
		return err
	}
	rec, err := a.restorable(r.Context(), r.PathValue("vm"), r.PathValue("id"), 0)
	if err != nil {
		return err
	}
	ex, err := a.exports.start(a.serviceCtx, a.repo, rec, req.Writable)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, ex)
	return nil
}

func (a *api) listExports(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, a.exports.list("", ""))
	return nil
}

func (a *api) deleteExport(w http.ResponseWriter, r *http.Request) error {
	if err := a.exports.stopExport(r.PathValue("id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// decodeStrict reads a small JSON body that is not a contracts message:
// unknown fields and trailing data are refused; an empty body is {}.
func decodeStrict(r *http.Request, v any) error {
	dec := jsonDecoder(r)
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		return fail(http.StatusBadRequest, "decode %T: %v", v, err)
	}
	if dec.More() {
		return fail(http.StatusBadRequest, "decode %T: trailing data", v)
	}
	return nil
}
