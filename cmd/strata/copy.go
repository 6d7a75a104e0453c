package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/kelseyhightower/envconfig"
	"github.com/spf13/cobra"
	"golang.org/x/time/rate"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/catalog"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/runtime"
)

// copyTarget is the target repository's own settings (STRATA_COPY_*):
// a second site has its own credentials and, often, its own lock.
type copyTarget struct {
	AccessKey  string               `envconfig:"COPY_S3_ACCESS_KEY"`
	SecretKey  string               `envconfig:"COPY_S3_SECRET_KEY"`
	ObjectLock string               `envconfig:"COPY_S3_OBJECT_LOCK"`
	LockDays   runtime.LockDuration `envconfig:"COPY_LOCK_DAYS" default:"30"`
	LockStep   runtime.LockDuration `envconfig:"COPY_LOCK_STEP"`
}

// CopyReply is what strata copy --json prints.
type CopyReply struct {
	From           string   `json:"from"`
	To             string   `json:"to"`
	Backups        int      `json:"backups"`         // backups selected
	Copied         []string `json:"copied"`          // backups copied by this run
	AlreadyThere   int      `json:"already_there"`   // backups the target had
	Skipped        []string `json:"skipped"`         // not copied, with why
	Objects        int64    `json:"objects"`         // objects written
	Bytes          int64    `json:"bytes"`           // their bytes
	ObjectsPresent int64    `json:"objects_present"` // objects the target had (not read)
	ChunksChecked  int64    `json:"chunks_checked"`  // chunks checked against their ids on the way
	LockExtended   int      `json:"lock_extended,omitempty"`
	Seconds        float64  `json:"seconds"`
	MBPerSec       float64  `json:"mb_per_sec"`
}

func newCopyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "copy", Short: "copy backups to another repository (only what it lacks; resumable; encrypted stays encrypted)", Args: usage(cobra.NoArgs)}
	fs := cmd.Flags()
	vm := fs.String("vm", "", "copy this VM's backups")
	all := fs.Bool("all", false, "copy every VM's backups")
	to := fs.String("to", "", "the target repository: dir:///path or s3://bucket[/prefix]?endpoint=URL&region=R (credentials from STRATA_COPY_S3_ACCESS_KEY/SECRET_KEY)")
	verifiedOnly := fs.Bool("verified-only", false, "copy only verified backups (default: verified and committed ones)")
	parallel := fs.Int("parallel", 8, "objects copied at once")
	var rateLimit sizeFlag
	fs.Var(&rateLimit, "rate-limit", "read at most this much per second (e.g. 50M; default unlimited)")
	asJSON := fs.Bool("json", false, "print JSON")
	addRepoFlag(cmd) // the source, when it is not the configured repository (pull mode)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		if (*vm == "") == !*all {
			return exitError{2, errors.New("copy needs --vm NAME or --all")}
		}
		if *to == "" {
			return exitError{2, errors.New("copy needs --to REPO")}
		}
		if *parallel < 1 {
			return exitError{2, fmt.Errorf("--parallel %d: at least 1", *parallel)}
		}
		fromStore, from, err := openRepoFlag(ctx)
		if err != nil {
			return err
		}
		var src runtime.Common
		if err := runtime.Load(&src); err != nil {
			return err
		}
		var tgt copyTarget
		if err := envconfig.Process("STRATA", &tgt); err != nil {
			return fmt.Errorf("configuration: %w", err)
		}
		dst := src
		dst.S3AccessKey, dst.S3SecretKey = tgt.AccessKey, tgt.SecretKey
		dst.S3ObjectLock, dst.LockDays, dst.LockStep = tgt.ObjectLock, tgt.LockDays, tgt.LockStep
		dst.S3Prefix, dst.S3Endpoint = "", ""
		if err := applyRepo(*to, &dst); err != nil {
			return err
		}
		toStore, err := dst.OpenStore(ctx)
		if err != nil {
			return fmt.Errorf("target %s: %w", *to, err)
		}
		var lock *repo.LockPolicy
		if tgt.ObjectLock != "" {
			if lock, err = repo.NewLockPolicy(tgt.ObjectLock, time.Duration(tgt.LockDays), time.Duration(tgt.LockStep)); err != nil {
				return exitError{2, fmt.Errorf("STRATA_COPY_S3_OBJECT_LOCK: %w", err)}
			}
		}
		target, err := from.OpenCopy(ctx, toStore, lock)
		if err != nil {
			return err
		}
		recs, err := listFromRepo(ctx, fromStore, from, *vm)
		if err != nil {
			return err
		}
		reply := CopyReply{From: fromStore.String(), To: toStore.String(), Copied: []string{}, Skipped: []string{}}
		c := &repo.Copier{From: from, To: target, Parallel: *parallel}
		if rateLimit > 0 {
			c.Limit = rate.NewLimiter(rate.Limit(rateLimit), max(int(rateLimit), 16<<20))
		}
		start := time.Now()
		for _, r := range recs {
			ok := r.State == contracts.StateVerified || r.State == contracts.StateCommitted && !*verifiedOnly
			if !ok {
				continue
			}
			reply.Backups++
			key := catalog.CopyKey(from, r.VM, r.ID)
			if _, err := toStore.Stat(ctx, key); err == nil {
				reply.AlreadyThere++
				continue
			} else if !errors.Is(err, objstore.ErrNotFound) {
				return fmt.Errorf("target %s: %w", *to, err)
			}
			var mans []string
			for _, d := range r.Disks {
				mans = append(mans, d.Manifest)
			}
			if err := c.CopyBackup(ctx, mans); err != nil {
				return fmt.Errorf("copy backup %s of %s: %w", r.ID, r.VM, err)
			}
			// The record last: a record at the target says all it needs is there.
			if err := c.CopyObject(ctx, key, func(b []byte) error { return catalog.CheckCopy(from, key, b) }); err != nil {
				return fmt.Errorf("copy backup %s of %s: %w", r.ID, r.VM, err)
			}
			reply.Copied = append(reply.Copied, r.ID)
			if !*asJSON {
				st := c.Stats()
				fmt.Fprintf(os.Stderr, "copied %s of %s (%d objects, %s so far)\n", r.ID, r.VM, st.Objects, human(st.Bytes))
			}
		}
		st := c.Stats()
		reply.Objects, reply.Bytes, reply.ObjectsPresent, reply.ChunksChecked, reply.LockExtended = st.Objects, st.Bytes, st.Present, st.Chunks, st.Extended
		reply.Seconds = time.Since(start).Seconds()
		if reply.Seconds > 0 {
			reply.MBPerSec = float64(reply.Bytes) / 1e6 / reply.Seconds
		}
		if *asJSON {
			return printJSON(reply)
		}
		fmt.Printf("copied %d backups to %s (%d already there): %d objects, %s in %.1fs (%.1f MB/s); %d objects the target had; %d chunks checked\n",
			len(reply.Copied), reply.To, reply.AlreadyThere, reply.Objects, human(reply.Bytes), reply.Seconds, reply.MBPerSec, reply.ObjectsPresent, reply.ChunksChecked)
		return nil
	}
	return cmd
}
