// Package export serves a backup point's disks over NBD, straight from
// the repository: read-only, or writable through a copy-on-write overlay
// (instant recovery, live restore). The CLI's serve and the api service's
// instant-recovery exports both use it.
package export

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/nbd"
	"github.com/strata-backup/strata/pkg/overlay"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/restore"
)

// Disk is one disk of a backup point as served: from the repository, or
// through an overlay.
type Disk struct {
	Name    string
	Export  nbd.ServerExport
	Overlay *overlay.Overlay // nil: read-only
}

// Served is one export as announced.
type Served struct {
	Name string `json:"name"`
	URL  string `json:"url"`
	Disk string `json:"disk"`
	Size int64  `json:"size"`
}

// Open opens a backup point's disks for serving, cacheBytes of decoded
// chunks shared between them; with files set, disk i is writable through
// the overlay whose data and map files it names. closeAll flushes and
// closes the overlays.
func Open(ctx context.Context, r *repo.Repository, rec *contracts.BackupRecord, cacheBytes int64, parallel int, files func(i int) (data, mapPath string)) (disks []Disk, closeAll func() error, err error) {
	closeAll = func() error {
		var first error
		for _, d := range disks {
			if d.Overlay == nil {
				continue
			}
			if err := d.Overlay.Flush(context.WithoutCancel(ctx)); err != nil && first == nil {
				first = err
			}
			if err := d.Overlay.Close(); err != nil && first == nil {
				first = err
			}
		}
		return first
	}
	perDisk := cacheBytes / int64(max(1, len(rec.Disks)))
	for i, disk := range rec.Disks {
		man, err := r.GetManifest(ctx, disk.Manifest)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("serve %s: %w", rec.ID, err)
		}
		d := Disk{Name: cmp.Or(disk.Name, fmt.Sprintf("disk%d", i)),
			Export: restore.NewReader(ctx, r, man, restore.ReaderOptions{CacheBytes: perDisk, Parallel: parallel})}
		if files != nil {
			data, mapPath := files(i)
			o, err := overlay.Open(data, mapPath, d.Export, overlay.Options{Identity: fmt.Sprintf("%s/%s/disk%d", rec.VM, rec.ID, i), Grain: man.ChunkSize})
			if err != nil {
				closeAll()
				return nil, nil, fmt.Errorf("serve %s disk%d: %w", rec.ID, i, err)
			}
			d.Export, d.Overlay = o, o
		}
		disks = append(disks, d)
	}
	return disks, closeAll, nil
}

// Listen listens on a unix socket (one left by a server that was killed
// is replaced) or a TCP address.
func Listen(network, addr string) (net.Listener, error) {
	if network == "unix" {
		if fi, err := os.Lstat(addr); err == nil && fi.Mode()&os.ModeSocket != 0 {
			os.Remove(addr)
		}
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	return l, nil
}

// Serve serves disks as disk0, disk1, … on l until ctx ends (a clean
// stop); announce runs once, before the first connection is taken.
func Serve(ctx context.Context, l net.Listener, disks []Disk, log *slog.Logger, announce func([]Served)) error {
	srv := &nbd.Server{Exports: map[string]nbd.ServerExport{}, InFlight: 16, Log: log}
	network, addr := l.Addr().Network(), l.Addr().String()
	if network == "unix" {
		defer os.Remove(addr)
	}
	var exports []Served
	for i, d := range disks {
		name := fmt.Sprintf("disk%d", i)
		srv.Exports[name] = d.Export
		exports = append(exports, Served{Name: name, URL: URL(network, addr, name), Disk: d.Name, Size: d.Export.Size()})
	}
	announce(exports)
	err := srv.Serve(ctx, l)
	if errors.Is(ctx.Err(), context.Canceled) {
		return nil
	}
	return err
}

// URL names an export for NBD clients.
func URL(network, addr, export string) string {
	if network == "unix" {
		return fmt.Sprintf("nbd+unix:///%s?socket=%s", export, addr)
	}
	return fmt.Sprintf("nbd://%s/%s", addr, export)
}
