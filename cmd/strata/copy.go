package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/kelseyhightower/envconfig"
	"github.com/spf13/cobra"
	"golang.org/x/time/rate"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/copies"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/runtime"
)

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
	var keep contracts.Keep
	fs.IntVar(&keep.Last, "keep-last", 0, "then keep this many newest backups of each VM in the copy (the copy's own retention; none: keep all)")
	fs.IntVar(&keep.Hourly, "keep-hourly", 0, "… and the newest of this many hours")
	fs.IntVar(&keep.Daily, "keep-daily", 0, "… days")
	fs.IntVar(&keep.Weekly, "keep-weekly", 0, "… ISO weeks")
	fs.IntVar(&keep.Monthly, "keep-monthly", 0, "… months")
	fs.IntVar(&keep.Yearly, "keep-yearly", 0, "… years")
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
		var base runtime.Common
		if err := runtime.Load(&base); err != nil {
			return err
		}
		var t copies.Target
		if err := envconfig.Process("STRATA", &t); err != nil {
			return fmt.Errorf("configuration: %w", err)
		}
		target, err := copies.Open(ctx, from, base, t, *to)
		if err != nil {
			return err
		}
		recs, err := listFromRepo(ctx, fromStore, from, *vm)
		if err != nil {
			return err
		}
		o := copies.Options{VerifiedOnly: *verifiedOnly, Parallel: *parallel}
		if rateLimit > 0 {
			o.Limit = rate.NewLimiter(rate.Limit(rateLimit), max(int(rateLimit), 16<<20))
		}
		if !*asJSON {
			o.Copied = func(r *contracts.BackupRecord, st repo.CopyStats) {
				fmt.Fprintf(os.Stderr, "copied %s of %s (%d objects, %s so far)\n", r.ID, r.VM, st.Objects, human(st.Bytes))
			}
		}
		reply, err := copies.Run(ctx, from, target, recs, o)
		if err != nil {
			return err
		}
		if rules := copies.RulesOf(&keep); !rules.None() {
			vms := map[string]bool{}
			for _, r := range recs {
				vms[r.VM] = true
			}
			for v := range vms {
				pruned, locked, err := copies.Prune(ctx, target, v, rules)
				if err != nil {
					return err
				}
				reply.Pruned, reply.Locked = append(reply.Pruned, pruned...), append(reply.Locked, locked...)
			}
		}
		if *asJSON {
			return printJSON(reply)
		}
		fmt.Printf("copied %d backups to %s (%d already there): %d objects, %s in %.1fs (%.1f MB/s); %d objects the target had; %d chunks checked\n",
			len(reply.Copied), reply.To, reply.AlreadyThere, reply.Objects, human(reply.Bytes), reply.Seconds, reply.MBPerSec, reply.ObjectsPresent, reply.ChunksChecked)
		if len(reply.Pruned)+len(reply.Locked) > 0 {
			fmt.Printf("the copy's retention pruned %d backups, kept %d more under Object Lock\n", len(reply.Pruned), len(reply.Locked))
		}
		return nil
	}
	return cmd
}
