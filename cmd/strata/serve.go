package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/catalog"
	"github.com/strata-backup/strata/pkg/nbd"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/restore"
	"github.com/strata-backup/strata/pkg/runtime"
)

// serveConfig: the NBD server's settings from the environment (STRATA_).
type serveConfig struct {
	CacheMiB int64 `envconfig:"SERVE_CACHE_MIB" default:"256"`
}

func newServeCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "serve", Short: "serve a backup point's disks over NBD (read-only): qemu-img, nbdcopy, QEMU and libvirt read them in place", Args: usage(cobra.NoArgs)}
	fs := cmd.Flags()
	vm := fs.String("vm", "", "VM name")
	id := fs.String("backup", "latest", "backup id, or latest (newest verified)")
	listen := fs.String("listen", "127.0.0.1:10809", "address to listen on: a loopback HOST:PORT, or the path of a unix socket (NBD has no authentication here)")
	parallel := fs.Int("parallel", 8, "chunk fetches at once per disk")
	asJSON := fs.Bool("json", false, "print the exports as JSON")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		if *vm == "" {
			return exitError{2, errors.New("serve needs --vm")}
		}
		if *parallel < 1 {
			return exitError{2, fmt.Errorf("--parallel %d: need at least 1", *parallel)}
		}
		network, addr, err := listenAddress(*listen)
		if err != nil {
			return exitError{2, err}
		}
		var scfg serveConfig
		if err := runtime.Load(&scfg); err != nil {
			return err
		}
		if scfg.CacheMiB < 1 {
			return exitError{2, fmt.Errorf("STRATA_SERVE_CACHE_MIB=%d: need at least 1", scfg.CacheMiB)}
		}
		rec, r, done, err := openBackup(ctx, *vm, *id)
		if err != nil {
			return err
		}
		defer done()
		srv := &nbd.Server{Exports: map[string]nbd.ServerExport{}, InFlight: 16,
			Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
		type export struct {
			Name string `json:"name"`
			URL  string `json:"url"`
			Disk string `json:"disk"`
			Size int64  `json:"size"`
		}
		var exports []export
		// The cache is shared out between the disks.
		perDisk := scfg.CacheMiB << 20 / int64(max(1, len(rec.Disks)))
		for i, disk := range rec.Disks {
			man, err := r.GetManifest(ctx, disk.Manifest)
			if err != nil {
				return fmt.Errorf("serve %s: %w", rec.ID, err)
			}
			name := fmt.Sprintf("disk%d", i)
			srv.Exports[name] = restore.NewReader(ctx, r, man, restore.ReaderOptions{CacheBytes: perDisk, Parallel: *parallel})
			exports = append(exports, export{Name: name, URL: nbdURL(network, addr, name), Disk: disk.Name, Size: man.DiskSize})
		}
		l, err := net.Listen(network, addr)
		if err != nil {
			return fmt.Errorf("serve: %w", err)
		}
		if network == "unix" {
			defer os.Remove(addr)
		}
		if *asJSON {
			printJSON(map[string]any{"backup_id": rec.ID, "vm": rec.VM, "exports": exports})
		} else {
			fmt.Printf("serving backup %s of %s (read-only) until interrupted:\n", rec.ID, rec.VM)
			for _, e := range exports {
				fmt.Printf("  %s  %s (%s)\n", e.URL, e.Disk, human(e.Size))
			}
		}
		err = srv.Serve(ctx, l)
		if errors.Is(ctx.Err(), context.Canceled) {
			return nil // SIGINT/SIGTERM: a clean stop
		}
		return err
	}
	return cmd
}

// openBackup finds a backup (id or "latest") that can be read back and
// opens the repository holding it; done releases what it opened. The
// record comes from the catalog, or — with STRATA_NATS_URL empty, or NATS
// unreachable — from its copy in the repository: a site that lost its
// NATS cluster can still restore and serve.
func openBackup(ctx context.Context, vm, id string) (rec *contracts.BackupRecord, r *repo.Repository, done func(), err error) {
	var cfg runtime.Common
	if err := runtime.Load(&cfg); err != nil {
		return nil, nil, nil, err
	}
	done = func() {}
	store, err := cfg.OpenStore(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	var c *client
	if cfg.NATSURL != "" {
		c, err = connect(ctx)
		if err != nil {
			fmt.Fprintf(os.Stderr, "strata: %v\nreading the backup record from its copy in the repository instead\n", err)
		}
	}
	if c != nil {
		done = c.close
		if id == "latest" {
			rec, err = c.cat.Latest(ctx, vm)
		} else {
			rec, _, err = c.cat.Get(ctx, vm, id)
		}
	} else {
		rec, err = catalog.FromCopies(ctx, store, vm, id)
	}
	if err == nil && rec.State != contracts.StateVerified && rec.State != contracts.StateCommitted {
		err = fmt.Errorf("backup %s is %s, not restorable", rec.ID, rec.State)
	}
	if err == nil {
		r, err = cfg.OpenRepo(ctx, store)
	}
	if err != nil {
		done()
		return nil, nil, nil, err
	}
	return rec, r, done, nil
}

// listenAddress checks --listen: a unix socket path, or a loopback
// address (NBD carries no authentication; reach it from elsewhere through
// a tunnel such as ssh -L).
func listenAddress(s string) (network, addr string, err error) {
	if strings.HasPrefix(s, "/") {
		return "unix", s, nil
	}
	host, _, err := net.SplitHostPort(s)
	if err != nil {
		return "", "", fmt.Errorf("--listen %q: %w (HOST:PORT or /path/of/socket)", s, err)
	}
	if host == "localhost" {
		return "tcp", s, nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return "", "", fmt.Errorf("--listen %q: serve listens on loopback addresses or a unix socket only (NBD has no authentication here; use ssh -L to reach it from another host)", s)
	}
	return "tcp", s, nil
}

func nbdURL(network, addr, export string) string {
	if network == "unix" {
		return fmt.Sprintf("nbd+unix:///%s?socket=%s", export, addr)
	}
	return fmt.Sprintf("nbd://%s/%s", addr, export)
}
