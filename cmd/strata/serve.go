package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/catalog"
	"github.com/strata-backup/strata/pkg/export"
	"github.com/strata-backup/strata/pkg/libvirt"
	"github.com/strata-backup/strata/pkg/overlay"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/restore"
	"github.com/strata-backup/strata/pkg/runtime"
)

// serveConfig: the NBD server's settings from the environment (STRATA_).
type serveConfig struct {
	CacheMiB int64 `envconfig:"SERVE_CACHE_MIB" default:"256"`
	// LiveRestoreMiBps bounds a live restore's background copy (0: none).
	LiveRestoreMiBps int64 `envconfig:"LIVE_RESTORE_MIB_PER_SEC" default:"0"`
}

func loadServeConfig() (serveConfig, error) {
	var scfg serveConfig
	if err := runtime.Load(&scfg); err != nil {
		return scfg, err
	}
	if scfg.CacheMiB < 1 {
		return scfg, exitError{2, fmt.Errorf("STRATA_SERVE_CACHE_MIB=%d: need at least 1", scfg.CacheMiB)}
	}
	if scfg.LiveRestoreMiBps < 0 {
		return scfg, exitError{2, fmt.Errorf("STRATA_LIVE_RESTORE_MIB_PER_SEC=%d: need 0 (no limit) or more", scfg.LiveRestoreMiBps)}
	}
	return scfg, nil
}

func newServeCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "serve", Short: "serve a backup point's disks over NBD: qemu-img, nbdcopy, QEMU and libvirt read them in place, or run a VM from them (--writable)", Args: usage(cobra.NoArgs)}
	fs := cmd.Flags()
	addRepoFlag(cmd)
	vm := fs.String("vm", "", "VM name")
	id := fs.String("backup", "latest", "backup id, or latest (newest verified)")
	listen := fs.String("listen", "127.0.0.1:10809", "address to listen on: a loopback HOST:PORT, or the path of a unix socket (NBD has no authentication here)")
	parallel := fs.Int("parallel", 8, "chunk fetches at once per disk")
	writable := fs.Bool("writable", false, "take writes (instant recovery: a VM runs from the export); they go to the --overlay directory, never to the repository")
	overlayDir := fs.String("overlay", "", "directory of the copy-on-write overlay (diskN.raw and diskN.map); serving it again continues where it stopped")
	asJSON := fs.Bool("json", false, "print the exports as JSON")
	define := fs.String("define", "", "with --writable: define and start a libvirt domain on the served disks, from the backup's recorded domain XML (libvirt+unix:///system/NEW-NAME): instant recovery; it is stopped and undefined when serving stops")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx, cancel := context.WithCancel(cmd.Context())
		defer cancel()
		if *vm == "" {
			return exitError{2, errors.New("serve needs --vm")}
		}
		if *parallel < 1 {
			return exitError{2, fmt.Errorf("--parallel %d: need at least 1", *parallel)}
		}
		if *writable != (*overlayDir != "") {
			return exitError{2, errors.New("--writable and --overlay DIR go together: writes land in the overlay, never in the repository")}
		}
		var domain libvirt.Target
		if *define != "" {
			if !*writable {
				return exitError{2, errors.New("--define runs a domain on the served disks: it needs --writable --overlay DIR")}
			}
			t, err := libvirt.ParseTarget(*define)
			if err != nil || t.Backup != "" {
				return exitError{2, fmt.Errorf("--define %q: want libvirt+unix:///system/NEW-NAME (%v)", *define, err)}
			}
			domain = t
		}
		network, addr, err := listenAddress(*listen)
		if err != nil {
			return exitError{2, err}
		}
		scfg, err := loadServeConfig()
		if err != nil {
			return err
		}
		if *overlayDir != "" {
			if err := os.MkdirAll(*overlayDir, 0o700); err != nil {
				return fmt.Errorf("--overlay: %w", err)
			}
		}
		rec, r, done, err := openBackup(ctx, *vm, *id)
		if err != nil {
			return err
		}
		defer done()
		if *define != "" && (rec.VMConfig == nil || rec.VMConfig.DomainXML == "") {
			return exitError{2, fmt.Errorf("--define: backup %s recorded no libvirt domain XML", rec.ID)}
		}
		var overlayFiles func(i int) (string, string)
		if *overlayDir != "" {
			overlayFiles = func(i int) (string, string) {
				base := filepath.Join(*overlayDir, fmt.Sprintf("disk%d", i))
				return base + ".raw", base + ".map"
			}
		}
		disks, closeAll, err := export.Open(ctx, r, rec, scfg.CacheMiB<<20, *parallel, overlayFiles)
		if err != nil {
			return err
		}
		defer closeAll()
		mode := "read-only"
		if *writable {
			mode = "writable, overlay " + *overlayDir
		}
		var defineErr error
		defined := false
		var defining chan struct{} // closed once the define has succeeded or failed
		err = serveNBD(ctx, network, addr, disks, func(exports []export.Served) {
			if *asJSON {
				printJSON(map[string]any{"backup_id": rec.ID, "vm": rec.VM, "writable": *writable, "exports": exports})
			} else {
				fmt.Printf("serving backup %s of %s (%s) until interrupted:\n", rec.ID, rec.VM, mode)
				for _, e := range exports {
					fmt.Printf("  %s  %s (%s)\n", e.URL, e.Disk, human(e.Size))
				}
			}
			if *define == "" {
				return
			}
			// QEMU opens the exports while the domain starts: serve first.
			defining = make(chan struct{})
			go func() {
				defer close(defining)
				if defineErr = defineOnExports(domain, rec, network, addr, exports); defineErr != nil {
					cancel()
					return
				}
				defined = true
				if *asJSON {
					printJSON(map[string]any{"event": "domain-started", "domain": domain.Domain})
				} else {
					fmt.Printf("domain %s started on the served disks (stopped and undefined when serving stops)\n", domain.Domain)
				}
			}()
		})
		if defining != nil {
			<-defining
		}
		if defined {
			if c, cerr := libvirt.Dial(domain); cerr == nil {
				if uerr := c.Undefine(domain.Domain); uerr != nil {
					fmt.Fprintf(os.Stderr, "strata: %v\n", uerr)
				}
				c.Close()
			}
		}
		return cmp.Or(defineErr, err)
	}
	return cmd
}

// defineOnExports defines and starts a libvirt domain from the backup's
// recorded XML whose disks read the served exports. A name in use is
// refused.
func defineOnExports(t libvirt.Target, rec *contracts.BackupRecord, network, addr string, exports []export.Served) error {
	c, err := libvirt.Dial(t)
	if err != nil {
		return err
	}
	defer c.Close()
	if exists, err := c.Exists(t.Domain); err != nil {
		return err
	} else if exists {
		return fmt.Errorf("--define: a domain named %s exists already", t.Domain)
	}
	disks := map[string]libvirt.DiskSource{}
	for i, e := range exports {
		src := libvirt.DiskSource{NBDExport: e.Name}
		if network == "unix" {
			src.NBDSocket = addr
		} else {
			host, port, _ := net.SplitHostPort(addr)
			src.NBDHost = cmp.Or(map[string]string{"localhost": "127.0.0.1"}[host], host)
			src.NBDPort, _ = strconv.Atoi(port)
		}
		disks[rec.Disks[i].Name] = src
	}
	xml, err := libvirt.NewDomainXML(rec.VMConfig.DomainXML, t.Domain, disks, true)
	if err != nil {
		return err
	}
	if err := c.Define(xml, true); err != nil {
		c.Undefine(t.Domain)
		return fmt.Errorf("--define: %w", err)
	}
	return nil
}

// serveNBD serves disks on network/addr until ctx ends (SIGINT/SIGTERM:
// a clean stop); announce runs once it listens.
func serveNBD(ctx context.Context, network, addr string, disks []export.Disk, announce func([]export.Served)) error {
	l, err := export.Listen(network, addr)
	if err != nil {
		return err
	}
	return export.Serve(ctx, l, disks, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})), announce)
}

// openBackup finds a backup (id or "latest") that can be read back and
// opens the repository holding it; done releases what it opened. The
// record comes from the catalog, or — with STRATA_NATS_URL empty, or NATS
// unreachable — from its copy in the repository: a site that lost its
// NATS cluster can still restore and serve.
func openBackup(ctx context.Context, vm, id string) (rec *contracts.BackupRecord, r *repo.Repository, done func(), err error) {
	var cfg runtime.Common
	if err := loadConfig(&cfg, &cfg); err != nil {
		return nil, nil, nil, err
	}
	done = func() {}
	// A command that reads creates nothing: not the bucket, not a
	// repository where none is (a typo in STRATA_S3_BUCKET is reported).
	store, r, err := cfg.OpenExisting(ctx)
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
		rec, err = catalog.FromCopies(ctx, store, r, vm, id)
	}
	if err == nil && rec.State != contracts.StateVerified && rec.State != contracts.StateCommitted {
		err = fmt.Errorf("backup %s is %s, not restorable", rec.ID, rec.State)
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

// liveRestore serves a backup point at once, writable, with each disk's
// target image as its overlay, and copies every chunk the guest has not
// written into the targets in the background. Until the copy is complete
// a target is PATH.partial beside PATH.partial.map (its progress, so the
// same command run again resumes without losing a guest write); then it
// becomes PATH and the serve goes on as plain pass-through.
func liveRestore(ctx context.Context, rec *contracts.BackupRecord, r *repo.Repository, paths []string, listen string, force bool, parallel int, asJSON bool) error {
	network, addr, err := listenAddress(listen)
	if err != nil {
		return exitError{2, fmt.Errorf("--serve: %w", err)}
	}
	scfg, err := loadServeConfig()
	if err != nil {
		return err
	}
	for _, p := range paths {
		if _, err := os.Stat(p + ".partial.map"); err == nil {
			continue // resuming: the map says what is there
		}
		if err := restore.CheckTarget(p, force); err != nil {
			return exitError{2, fmt.Errorf("restore %s: %w", rec.ID, err)}
		}
	}
	disks, closeAll, err := export.Open(ctx, r, rec, scfg.CacheMiB<<20, parallel, func(i int) (string, string) {
		return paths[i] + ".partial", paths[i] + ".partial.map"
	})
	if err != nil {
		return err
	}
	defer closeAll()
	say := func(event string, fields map[string]any, text string) {
		if asJSON {
			fields["event"] = event
			printJSON(fields)
		} else {
			fmt.Println(text)
		}
	}
	copyDone := make(chan error, 1)
	started := false
	announce := func(exports []export.Served) {
		have, total := 0, 0
		for _, d := range disks {
			p, n := d.Overlay.Progress()
			have, total = have+p, total+n
		}
		resumed := ""
		if have > 0 {
			resumed = fmt.Sprintf(" (resuming: %d of %d chunks there already)", have, total)
		}
		say("serving", map[string]any{"backup_id": rec.ID, "vm": rec.VM, "exports": exports, "targets": paths, "chunks_present": have, "chunks": total},
			fmt.Sprintf("live restore of backup %s of %s: serving now (writable), copying into %s in the background%s", rec.ID, rec.VM, strings.Join(paths, ", "), resumed))
		started = true
		if !asJSON {
			for _, e := range exports {
				fmt.Printf("  %s  %s (%s)\n", e.URL, e.Disk, human(e.Size))
			}
		}
		go func() {
			copyDone <- fillTargets(ctx, disks, paths, scfg.LiveRestoreMiBps, !asJSON && isTerminal(os.Stderr))
		}()
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- serveNBD(ctx, network, addr, disks, announce) }()
	for {
		select {
		case err := <-serveErr:
			if started && copyDone != nil {
				// Stopping mid-copy: let it flush its progress first.
				<-copyDone
				fmt.Fprintf(os.Stderr, "strata: live restore stopped before the copy finished; run the same command again to resume\n")
			}
			return err
		case err := <-copyDone:
			copyDone = nil
			if err != nil {
				if ctx.Err() != nil {
					continue // stopping: progress is kept for the next run
				}
				return fmt.Errorf("live restore %s: %w (run the same command again to resume)", rec.ID, err)
			}
			say("restored", map[string]any{"backup_id": rec.ID, "vm": rec.VM, "targets": paths},
				fmt.Sprintf("restore complete: %s holds backup %s plus every write made through the export; serving it on as pass-through until interrupted", strings.Join(paths, ", "), rec.ID))
		}
	}
}

// fillTargets copies each disk's missing chunks into its target, then
// moves the complete target into place and drops its map.
func fillTargets(ctx context.Context, disks []export.Disk, paths []string, mibPerSec int64, progress bool) error {
	for i, d := range disks {
		opt := overlay.FillOptions{BytesPerSecond: mibPerSec << 20, FlushEvery: 64 << 20, FlushInterval: time.Second}
		if progress {
			size := d.Overlay.Size()
			bar, report := restoreProgress(paths[i], size)
			opt.Progress = func(present, total int) { report(int64(float64(size) * float64(present) / float64(max(1, total)))) }
			defer bar.Finish()
		}
		// The budget is shared: one disk is copied at a time.
		if err := d.Overlay.Fill(ctx, opt); err != nil {
			return fmt.Errorf("%s: %w", paths[i], err)
		}
		// The open file follows the rename: the guest keeps writing to it.
		if err := os.Rename(paths[i]+".partial", paths[i]); err != nil {
			return err
		}
		if err := os.Remove(paths[i] + ".partial.map"); err != nil {
			return err
		}
	}
	return nil
}
