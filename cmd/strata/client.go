package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/bus"
	"github.com/strata-backup/strata/pkg/catalog"
	"github.com/strata-backup/strata/pkg/restore"
	"github.com/strata-backup/strata/pkg/runtime"
	"github.com/strata-backup/strata/pkg/source"
	"github.com/strata-backup/strata/pkg/telemetry"
	"github.com/strata-backup/strata/pkg/vsphere"
)

// client is the CLI's connection to a running Strata.
type client struct {
	cfg runtime.Common
	bus *bus.Bus
	cat *catalog.Catalog
	tp  *sdktrace.TracerProvider
}

func connect(ctx context.Context) (*client, error) {
	var cfg runtime.Common
	if err := runtime.Load(&cfg); err != nil {
		return nil, err
	}
	tp, err := telemetry.Tracing(ctx, "cli")
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := bus.Connect(cctx, cfg.NATSURL, "cli", tp.Tracer("strata/cli"), log)
	if err != nil {
		return nil, fmt.Errorf("%w (is Strata running? STRATA_NATS_URL=%s)", err, cfg.NATSURL)
	}
	cat, err := catalog.Open(cctx, b.JS)
	if err != nil {
		return nil, fmt.Errorf("%w (have the services started once?)", err)
	}
	return &client{cfg: cfg, bus: b, cat: cat, tp: tp}, nil
}

func (c *client) close() {
	c.bus.NC.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.tp.Shutdown(ctx)
}

// request asks a service over NATS and waits up to timeout for its reply.
// A service that is not answering yet (just started, restarting) gets up
// to noResponderGrace before that is an error.
func (c *client) request(ctx context.Context, subject string, req, reply contracts.Message, timeout time.Duration) error {
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	giveUp := time.Now().Add(noResponderGrace)
	for {
		err := bus.Request(rctx, c.bus.NC, subject, req, reply)
		if !errors.Is(err, nats.ErrNoResponders) || time.Now().After(giveUp) {
			return err
		}
		select {
		case <-rctx.Done():
			return err
		case <-time.After(250 * time.Millisecond):
		}
	}
}

const noResponderGrace = 15 * time.Second

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func cmdBackup(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("backup", flag.ContinueOnError)
	vm := fs.String("vm", "", "VM name")
	src := fs.String("source", "", "source URL, e.g. file:///abs/path.img")
	wait := fs.Bool("wait", false, "wait until the backup is verified (exit 0) or failed (exit 1)")
	verify := fs.String("verify", "", "verification on commit: stored, trivial, certify or chunks (default: the verifier's)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return exitError{2, err}
	}
	trigger := &contracts.BackupTrigger{Schema: contracts.SchemaVersion, VM: *vm, Source: *src, Verify: contracts.VerifyMode(*verify)}
	if err := trigger.Validate(); err != nil {
		return exitError{2, err}
	}
	c, err := connect(ctx)
	if err != nil {
		return err
	}
	defer c.close()
	// With OTLP export configured, the CLI's span is the trace's root;
	// without it the scheduler opens the root span.
	if telemetry.Exporting() {
		var span trace.Span
		ctx, span = c.bus.Tracer.Start(ctx, "strata backup "+*vm)
		defer span.End()
	}
	var acc contracts.BackupAccepted
	if err := c.request(ctx, contracts.SubjectSchedulerRun, trigger, &acc, 30*time.Second); err != nil {
		return fmt.Errorf("request backup: %w (is strata-scheduler running?)", err)
	}
	if !*wait {
		if *asJSON {
			return printJSON(map[string]string{"backup_id": acc.BackupID, "trace_id": acc.TraceID})
		}
		fmt.Println(acc.BackupID)
		return nil
	}
	if !*asJSON {
		fmt.Println(acc.BackupID)
	}
	rec, err := c.waitFinal(ctx, *vm, acc.BackupID, !*asJSON && isTerminal(os.Stderr))
	if err != nil {
		return err
	}
	if *asJSON {
		printJSON(rec)
	}
	if rec.State != contracts.StateVerified {
		return exitError{1, fmt.Errorf("backup %s failed: %s", rec.ID, rec.Error)}
	}
	if !*asJSON {
		fmt.Fprintf(os.Stderr, "backup %s verified: %s disk, %s newly stored (stored/logical %.2f)\n",
			rec.ID, human(rec.Size()), human(rec.StoredBytes()), float64(rec.StoredBytes())/float64(max(1, rec.Size())))
	}
	return nil
}

// waitFinal watches the backup's catalog entry until it is verified or failed.
func (c *client) waitFinal(ctx context.Context, vm, id string, progress bool) (*contracts.BackupRecord, error) {
	w, err := c.cat.KV.Watch(ctx, contracts.CatalogKey(vm, id))
	if err != nil {
		return nil, fmt.Errorf("watch backup %s: %w", id, err)
	}
	defer w.Stop()
	start := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("catalog watch ended")
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var r contracts.BackupRecord
			if err := json.Unmarshal(e.Value(), &r); err != nil {
				return nil, fmt.Errorf("catalog entry of %s: %w", id, err)
			}
			if progress {
				total := max(1, r.Segments())
				fmt.Fprintf(os.Stderr, "\r%-12s %3d%%  %d/%d segments  %s stored  %s   ", r.State,
					100*r.SegmentsDone()/total, r.SegmentsDone(), r.Segments(), human(r.StoredBytes()), time.Since(start).Round(time.Second))
			}
			if r.State.Final() {
				if progress {
					fmt.Fprintln(os.Stderr)
				}
				return &r, nil
			}
		}
	}
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func cmdLs(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("ls", flag.ContinueOnError)
	vm := fs.String("vm", "", "only this VM")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return exitError{2, err}
	}
	c, err := connect(ctx)
	if err != nil {
		return err
	}
	defer c.close()
	recs, err := c.cat.List(ctx, *vm)
	if err != nil {
		return err
	}
	if *asJSON {
		if recs == nil {
			recs = []*contracts.BackupRecord{}
		}
		return printJSON(recs)
	}
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tBACKUP\tTIME\tKIND\tPARENT\tSIZE\tREAD\tSTORED\tVERIFY\tSTATE")
	for _, r := range recs {
		state := string(r.State)
		if r.Damaged {
			state += " DAMAGED (strata check)"
		}
		if r.Error != "" {
			state += ": " + r.Error
		}
		verify := cmp.Or(string(r.Verify), "-")
		if len(r.Disks) > 0 && r.Disks[0].Digest != "" {
			verify += " " + r.Disks[0].Digest[:16] + "…"
		}
		var read int64
		for _, d := range r.Disks {
			read += d.ReadBytes
		}
		parent := r.Parent
		if parent == "" {
			parent = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.VM, r.ID, r.CreatedAt.Local().Format(time.DateTime), cmp.Or(string(r.Kind), "-"),
			parent, human(r.Size()), human(read), human(r.StoredBytes()), verify, state)
	}
	return tw.Flush()
}

// restoreTargets names the image file of every disk: an existing
// directory gets DIR/<vm>-<disk>.img, a path is disk 0's and PATH.N disk
// N's.
func restoreTargets(to string, rec *contracts.BackupRecord) []string {
	paths := make([]string, len(rec.Disks))
	fi, err := os.Stat(to)
	dir := err == nil && fi.IsDir()
	for i, d := range rec.Disks {
		switch {
		case dir:
			paths[i] = filepath.Join(to, safeName(rec.VM)+"-"+safeName(cmp.Or(d.Name, "disk"+strconv.Itoa(d.Index)))+".img")
		case d.Index > 0:
			paths[i] = to + "." + strconv.Itoa(d.Index)
		default:
			paths[i] = to
		}
	}
	return paths
}

// safeName keeps a VM or disk name usable as one file name component
// ("Hard disk 1" -> "Hard-disk-1"; never a separator or "..").
func safeName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			b[i] = '-'
		}
	}
	out := strings.Trim(string(b), ".")
	if out == "" {
		return "disk"
	}
	return out
}

func cmdRestore(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("restore", flag.ContinueOnError)
	vm := fs.String("vm", "", "VM name")
	id := fs.String("backup", "latest", "backup id, or latest (newest verified)")
	to := fs.String("to", "", "path of the raw image to write (disk N>0 of a multi-disk VM goes to PATH.N), an existing directory (each disk goes to DIR/<vm>-<disk>.img), or vsphere://HOST/NEW-VM[?datastore=DS&pool=POOL&folder=FOLDER] for a new VM beside the backed-up one (or, when it is gone, in its datacenter; the options override either)")
	force := fs.Bool("force", false, "replace existing image files")
	workers := fs.Int("parallel", 8, "chunks fetched at once")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return exitError{2, err}
	}
	if *vm == "" || *to == "" {
		return exitError{2, errors.New("restore needs --vm and --to")}
	}
	c, err := connect(ctx)
	if err != nil {
		return err
	}
	defer c.close()
	var rec *contracts.BackupRecord
	if *id == "latest" {
		rec, err = c.cat.Latest(ctx, *vm)
	} else {
		rec, _, err = c.cat.Get(ctx, *vm, *id)
	}
	if err != nil {
		return err
	}
	if rec.State != contracts.StateVerified && rec.State != contracts.StateCommitted {
		return fmt.Errorf("backup %s is %s, not restorable", rec.ID, rec.State)
	}
	store, err := c.cfg.OpenStore(ctx)
	if err != nil {
		return err
	}
	r, err := c.cfg.OpenRepo(ctx, store)
	if err != nil {
		return err
	}
	progress := !*asJSON && isTerminal(os.Stderr)
	start := time.Now()
	// To a hypervisor (vsphere://HOST/NEW-VM): restore into scratch images,
	// then have the source's driver make a VM from them.
	var sources *source.Opener
	toHypervisor := (&source.Opener{}).RestoresTo(*to)
	base := *to
	if toHypervisor {
		var vcfg vsphere.Config
		if err := runtime.Load(&vcfg); err != nil {
			return err
		}
		sources = source.NewOpener(vcfg)
		if err := sources.CheckRestore(ctx, rec, *to); err != nil {
			return exitError{2, fmt.Errorf("restore %s to %s: %w", rec.ID, *to, err)}
		}
		dir, err := os.MkdirTemp("", "strata-restore-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		base = filepath.Join(dir, "disk.img")
	}
	paths := restoreTargets(base, rec)
	for _, p := range paths {
		if err := restore.CheckTarget(p, *force); err != nil {
			return exitError{2, fmt.Errorf("restore %s: %w", rec.ID, err)}
		}
	}
	var results []map[string]any
	var images []source.Image
	for i, disk := range rec.Disks {
		path := paths[i]
		man, err := r.GetManifest(ctx, disk.Manifest)
		if err != nil {
			return fmt.Errorf("restore %s: %w", rec.ID, err)
		}
		var report func(int64)
		if progress {
			report = func(done int64) {
				fmt.Fprintf(os.Stderr, "\rrestoring %s  %3d%%  %s   ", path, 100*done/man.DiskSize, human(done))
			}
		}
		st, err := restore.ToFile(ctx, r, man, path, restore.Options{Workers: *workers, Progress: report, Overwrite: *force})
		if progress {
			fmt.Fprintln(os.Stderr)
		}
		if err != nil {
			return fmt.Errorf("restore %s: %w", rec.ID, err)
		}
		results = append(results, map[string]any{"path": path, "bytes": st.Bytes, "data_chunks": st.DataChunks, "zero_chunks": st.ZeroChunks})
		images = append(images, source.Image{Path: path, Size: disk.Size})
	}
	if toHypervisor {
		if err := sources.Restore(ctx, rec, *to, images); err != nil {
			return fmt.Errorf("restore %s to %s: %w", rec.ID, *to, err)
		}
		for _, r := range results {
			r["path"] = *to
		}
	}
	secs := time.Since(start).Seconds()
	if *asJSON {
		return printJSON(map[string]any{"backup_id": rec.ID, "vm": rec.VM, "disks": results, "seconds": secs})
	}
	where := *to
	if !toHypervisor {
		where = strings.Join(paths, ", ")
	}
	fmt.Printf("restored backup %s of %s to %s (%s in %.1fs)\n", rec.ID, rec.VM, where, human(rec.Size()), secs)
	return nil
}
