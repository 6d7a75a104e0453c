package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/bus"
	"github.com/strata-backup/strata/pkg/catalog"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/policy"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/restore"
	"github.com/strata-backup/strata/pkg/runtime"
	"github.com/strata-backup/strata/pkg/source"
	"github.com/strata-backup/strata/pkg/telemetry"
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
	if err := loadConfig(&cfg, &cfg); err != nil {
		return nil, err
	}
	tp, err := telemetry.Tracing(ctx, "cli")
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	log := slog.New(&natsNotices{w: os.Stderr})
	b, err := bus.Connect(cctx, cfg.Dial("cli"), tp.Tracer("strata/cli"), log)
	if err != nil {
		return nil, fmt.Errorf("%w (is Strata running? STRATA_NATS_URL=%s)", err, cfg.NATSURL)
	}
	cat, err := catalog.Open(cctx, b.JS, nil, nil) // read-only: writes go through the services
	if err != nil {
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, fmt.Errorf("%w (no catalog yet: have the services started once?)", err)
		}
		return nil, err
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
		if !errors.Is(err, nats.ErrNoResponders) {
			return err
		}
		if time.Now().After(giveUp) {
			return fmt.Errorf("%w (no %s answers: is it running?)", err, serviceOf(subject))
		}
		select {
		case <-rctx.Done():
			return fmt.Errorf("%w (no %s answers: is it running?)", err, serviceOf(subject))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

const noResponderGrace = 15 * time.Second

// call is the whole of a command that is one request to one service:
// validate (a bad request is a usage error), connect, ask, decode.
func call(ctx context.Context, what, subject string, req, reply contracts.Message, timeout time.Duration) error {
	if err := req.Validate(); err != nil {
		return exitError{2, err}
	}
	c, err := connect(ctx)
	if err != nil {
		return err
	}
	defer c.close()
	if err := c.request(ctx, subject, req, reply, timeout); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// policies connects and opens the policy store.
func policies(ctx context.Context) (*policy.Store, func(), error) {
	c, err := connect(ctx)
	if err != nil {
		return nil, nil, err
	}
	s, err := policy.Open(ctx, c.bus.JS)
	if err != nil {
		c.close()
		return nil, nil, err
	}
	return s, c.close, nil
}

// serviceOf names the service behind a request subject (strata.<service>.…).
func serviceOf(subject string) string {
	if parts := strings.Split(subject, "."); len(parts) > 2 {
		return "strata-" + parts[1]
	}
	return "the service"
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newBackupCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "backup", Short: "request a backup of one VM (and wait for its outcome with --wait)", Args: usage(cobra.NoArgs)}
	fs := cmd.Flags()
	vm := fs.String("vm", "", "VM name")
	src := fs.String("source", "", "source URL, e.g. file:///abs/path.img")
	wait := fs.Bool("wait", false, "wait until the backup is verified (exit 0) or failed (exit 1)")
	verify := fs.String("verify", "", "verification on commit: stored, trivial, certify, chunks or restore-test (default: the verifier's)")
	cons := addConsistencyFlags(cmd)
	skipFree := fs.Bool("skip-free", false, "a full read skips the blocks the guest's ext2/3/4, XFS and NTFS filesystems mark free (stored as zeros; the record says how much)")
	asJSON := fs.Bool("json", false, "print JSON")
	plannedWait := fs.Duration("planned-timeout", 30*time.Second, "without --wait: how long to wait for the backup to be planned (a source that cannot be opened fails it then, exit 1)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		trigger := &contracts.BackupTrigger{Schema: contracts.SchemaVersion, VM: *vm, Source: *src, Verify: contracts.VerifyMode(*verify), SkipFree: *skipFree,
			Consistency: cons.get()}
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
			return fmt.Errorf("request backup: %w", err)
		}
		if !*wait {
			rec, err := c.waitPlanned(ctx, *vm, acc.BackupID, *plannedWait)
			if err != nil {
				return err
			}
			if *asJSON {
				out := map[string]string{"backup_id": acc.BackupID, "trace_id": acc.TraceID, "state": "requested"}
				if rec != nil {
					out["state"], out["error"] = string(rec.State), rec.Error
				}
				printJSON(out)
			} else {
				fmt.Println(acc.BackupID)
			}
			switch {
			case rec != nil && rec.State == contracts.StateFailed:
				return exitError{1, fmt.Errorf("backup %s failed: %s", acc.BackupID, rec.Error)}
			case rec == nil && !*asJSON:
				fmt.Fprintf(os.Stderr, "backup %s requested, not planned yet after %s; follow it with: strata ls --vm %s\n", acc.BackupID, *plannedWait, *vm)
			}
			return nil
		}
		if !*asJSON {
			fmt.Println(acc.BackupID)
		}
		rec, err := c.waitFinal(ctx, *vm, acc.BackupID, !*asJSON && isTerminal(os.Stderr))
		if errors.Is(err, context.Canceled) {
			// Ctrl-C stops the waiting, not the backup: say so, and how.
			return exitError{130, fmt.Errorf("stopped waiting; backup %s goes on (strata cancel --vm %s --backup %s stops it)", acc.BackupID, *vm, acc.BackupID)}
		}
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
	return cmd
}

// waitFinal watches the backup's catalog entry until it is verified or
// failed, redrawing progress (at most 10 times a second) on a terminal.
func (c *client) waitFinal(ctx context.Context, vm, id string, progress bool) (*contracts.BackupRecord, error) {
	start := time.Now()
	var last time.Time
	var final *contracts.BackupRecord
	watch := func(r *contracts.BackupRecord) bool {
		if r.State.Final() {
			final = r
		}
		if progress && (final != nil || time.Since(last) >= 100*time.Millisecond) {
			last = time.Now()
			total := max(1, r.Segments())
			elapsed := time.Since(start)
			eta := "-"
			if done := r.SegmentsDone(); done > 0 && done < total {
				eta = (elapsed * time.Duration(total-done) / time.Duration(done)).Round(time.Second).String()
			}
			fmt.Fprintf(os.Stderr, "\r%-12s %3d%%  %d/%d segments  %s stored  %s/s  %s  ETA %s   ", r.State,
				100*r.SegmentsDone()/total, r.SegmentsDone(), r.Segments(), human(r.StoredBytes()),
				human(int64(float64(r.StoredBytes())/max(elapsed.Seconds(), 0.001))), elapsed.Round(time.Second), eta)
			if final != nil {
				fmt.Fprintln(os.Stderr)
			}
		}
		return final != nil
	}
	// A watch lost with NATS (an outage, a leader moving) is started
	// again: its first value is the record as it is by then. natsNotices
	// says "waiting for NATS" meanwhile; only a watch that keeps failing
	// while NATS is there gives up.
	for failures := 0; ; {
		err := c.cat.Watch(ctx, vm, id, watch)
		if err == nil || ctx.Err() != nil || errors.Is(err, catalog.ErrNotFound) {
			if err != nil {
				return nil, err
			}
			return final, nil
		}
		if c.bus.NC.IsConnected() {
			if failures++; failures > 5 {
				return nil, err
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// waitPlanned waits (up to timeout) until the snapshotter has recorded the
// backup: a source that cannot be opened fails it there, and a user who
// did not ask to --wait should still hear about that.
func (c *client) waitPlanned(ctx context.Context, vm, id string, timeout time.Duration) (*contracts.BackupRecord, error) {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var rec *contracts.BackupRecord
	err := c.cat.Watch(wctx, vm, id, func(r *contracts.BackupRecord) bool { rec = r; return true })
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return nil, nil
	}
	return rec, err
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

// openRepoFlag opens the repository --repo names, for reading only.
func openRepoFlag(ctx context.Context) (objstore.Store, *repo.Repository, error) {
	var cfg runtime.Common
	if err := loadConfig(&cfg, &cfg); err != nil {
		return nil, nil, err
	}
	return cfg.OpenExisting(ctx)
}

// listFromRepo lists backup records from their copies in the repository
// (no NATS); copies that do not open are reported on stderr.
func listFromRepo(ctx context.Context, store objstore.Store, r *repo.Repository, vm string) ([]*contracts.BackupRecord, error) {
	recs, bad, err := catalog.ListCopies(ctx, store, r, vm)
	for _, b := range bad {
		fmt.Fprintln(os.Stderr, "strata: skipped:", b)
	}
	return recs, err
}

func newLsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "ls", Short: "list backups", Args: usage(cobra.NoArgs)}
	fs := cmd.Flags()
	vm := fs.String("vm", "", "only this VM")
	asJSON := fs.Bool("json", false, "print JSON")
	addRepoFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		var recs []*contracts.BackupRecord
		if repoFlag != "" {
			store, r, err := openRepoFlag(ctx)
			if err != nil {
				return err
			}
			if recs, err = listFromRepo(ctx, store, r, *vm); err != nil {
				return err
			}
		} else {
			c, err := connect(ctx)
			if err != nil {
				return err
			}
			defer c.close()
			if recs, err = c.cat.List(ctx, *vm); err != nil {
				return err
			}
		}
		if *asJSON {
			if recs == nil {
				recs = []*contracts.BackupRecord{}
			}
			return printJSON(recs)
		}
		tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VM\tBACKUP\tTIME\tKIND\tPARENT\tSIZE\tREAD\tSTORED\tCONSISTENCY\tVERIFY\tSTATE")
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
			cons := cmp.Or(r.Consistency, "-")
			if r.FrozenMillis > 0 {
				cons += fmt.Sprintf(" (%d ms)", r.FrozenMillis)
			}
			if failed := slices.IndexFunc(r.Hooks, func(h contracts.HookRun) bool { return h.Error != "" }); failed >= 0 {
				cons += " " + r.Hooks[failed].Phase + " hook failed"
			} else if len(r.Hooks) > 0 {
				cons += fmt.Sprintf(" %d hooks ok", len(r.Hooks))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.VM, r.ID, r.CreatedAt.Local().Format(time.DateTime), cmp.Or(string(r.Kind), "-"),
				parent, human(r.Size()), human(read), human(r.StoredBytes()), cons, verify, state)
		}
		return tw.Flush()
	}
	return cmd
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

// defaultFetches sizes a restore's parallel fetches to the machine: each
// fetch mostly waits on the store, so a few per CPU keep the decoding busy.
func defaultFetches() int { return min(32, max(8, 4*goruntime.NumCPU())) }

func newRestoreCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "restore", Short: "restore a backup to image files or to a new VM", Args: usage(cobra.NoArgs)}
	fs := cmd.Flags()
	addRepoFlag(cmd)
	vm := fs.String("vm", "", "VM name")
	id := fs.String("backup", "latest", "backup id, or latest (newest verified)")
	to := fs.String("to", "", "path of the raw image to write (disk N>0 of a multi-disk VM goes to PATH.N), an existing directory (each disk goes to DIR/<vm>-<disk>.img), or vsphere://HOST/NEW-VM[?datastore=DS&pool=POOL&folder=FOLDER] for a new VM beside the backed-up one (or, when it is gone, in its datacenter; the options override either)")
	force := fs.Bool("force", false, "replace existing image files")
	workers := fs.Int("parallel", defaultFetches(), "chunk runs fetched at once (default: 4 per CPU, 8 to 32)")
	serveAt := fs.String("serve", "", "live restore: serve the backup at once over NBD on this loopback HOST:PORT or unix socket, writable (a VM runs from it), while it is copied to --to; rerun the same command to resume")
	asJSON := fs.Bool("json", false, "print JSON")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		if *workers < 1 {
			return exitError{2, fmt.Errorf("--parallel %d: need at least 1", *workers)}
		}
		if *vm == "" || *to == "" {
			return exitError{2, errors.New("restore needs --vm and --to")}
		}
		rec, r, done, err := openBackup(ctx, *vm, *id)
		if err != nil {
			return err
		}
		defer done()
		progress := !*asJSON && isTerminal(os.Stderr)
		start := time.Now()
		// To a hypervisor (vsphere://HOST/NEW-VM): restore into scratch images,
		// then have the source's driver make a VM from them.
		var sources *source.Opener
		toHypervisor := (&source.Opener{}).RestoresTo(*to)
		if *serveAt != "" {
			if toHypervisor {
				return exitError{2, errors.New("--serve restores to image files, not to a hypervisor")}
			}
			return liveRestore(ctx, rec, r, restoreTargets(*to, rec), *serveAt, *force, *workers, *asJSON)
		}
		base := *to
		if toHypervisor {
			var vcfg source.Config
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
			var bar *progressbar.ProgressBar
			if progress {
				bar, report = restoreProgress(path, man.DataBytes())
			}
			st, err := restore.ToFile(ctx, r, man, path, restore.Options{Workers: *workers, Progress: report, Overwrite: *force})
			if bar != nil {
				if err == nil {
					bar.Finish()
				}
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
	return cmd
}

// restoreProgress is a progress bar for one disk's data (bytes, rate,
// ETA; all-zero chunks are holes, written in no time: counting them made
// the first rate read terabytes per second), drawn at most 10 times a
// second. Chunks finish out of order on parallel workers, so the bar only
// ever moves forward.
func restoreProgress(path string, size int64) (*progressbar.ProgressBar, func(int64)) {
	bar := progressbar.NewOptions64(size,
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionSetDescription("restoring "+filepath.Base(path)+" (data)"),
		progressbar.OptionShowBytes(true),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetWidth(30),
	)
	var mu sync.Mutex
	var high int64
	return bar, func(done int64) {
		mu.Lock()
		defer mu.Unlock()
		if done > high {
			high = done
			bar.Set64(done)
		}
	}
}
