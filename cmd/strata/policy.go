package main

import (
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/mirror"
	"github.com/strata-backup/strata/pkg/policy"
	"github.com/strata-backup/strata/pkg/runtime"
	"github.com/strata-backup/strata/pkg/schedule"
)

func newPolicySetCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "set", Short: "set the backup policy of one VM", Args: usage(cobra.NoArgs)}
	fs := cmd.Flags()
	p := contracts.Policy{Schema: contracts.SchemaVersion}
	fs.StringVar(&p.VM, "vm", "", "VM name")
	fs.StringVar(&p.Source, "source", "", "source URL")
	fs.StringVar(&p.Schedule, "schedule", "", `cron schedule: "0 2 * * *", with optional seconds field, or "@every 6h"`)
	fs.DurationVar(&p.Jitter, "jitter", 0, "spread start times over this much (deterministic per VM and slot)")
	fs.DurationVar(&p.RPO, "rpo", 0, "recovery point objective: the newest verified backup may be this old before the VM counts as unprotected (default: twice the schedule's interval)")
	fs.IntVar(&p.KeyInterval, "key-interval", 0, "every Nth backup is a full re-read (0: the snapshotter's default)")
	fs.BoolVar(&p.SkipFree, "skip-free", false, "full reads skip the blocks the guest's filesystems mark free")
	fs.IntVar(&p.KeepLast, "keep-last", 0, "retention: keep the last N backups")
	fs.IntVar(&p.KeepHourly, "keep-hourly", 0, "retention: keep one per hour for H hours")
	fs.IntVar(&p.KeepDaily, "keep-daily", 0, "retention: keep one per day for D days")
	fs.IntVar(&p.KeepWeekly, "keep-weekly", 0, "retention: keep one per week for W weeks")
	fs.IntVar(&p.KeepMonthly, "keep-monthly", 0, "retention: keep one per month for M months")
	fs.IntVar(&p.KeepYearly, "keep-yearly", 0, "retention: keep one per year for Y years")
	verify := fs.String("verify", "", "verification on commit: stored, trivial, certify, chunks or restore-test (default: the verifier's)")
	fs.StringVar(&p.CopyTo, "copy-to", "", "after each verified backup, copy the VM's backups to this repository (dir:///path or s3://bucket/prefix?endpoint=…; the merge service's STRATA_COPY_S3_* credentials)")
	mirrorTo := fs.String("mirror-to", "", "also keep a standby mirror of the VM's first disk there (file:///path.raw or nbd://host:port/export; see strata mirror)")
	var keep contracts.Keep
	fs.IntVar(&keep.Last, "copy-keep-last", 0, "the copy's retention: keep the last N backups (copies usually keep more than the primary)")
	fs.IntVar(&keep.Hourly, "copy-keep-hourly", 0, "the copy's retention: hours")
	fs.IntVar(&keep.Daily, "copy-keep-daily", 0, "the copy's retention: days")
	fs.IntVar(&keep.Weekly, "copy-keep-weekly", 0, "the copy's retention: weeks")
	fs.IntVar(&keep.Monthly, "copy-keep-monthly", 0, "the copy's retention: months")
	fs.IntVar(&keep.Yearly, "copy-keep-yearly", 0, "the copy's retention: years")
	cons := addConsistencyFlags(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		p.Verify = contracts.VerifyMode(*verify)
		p.Consistency = cons.get()
		if keep != (contracts.Keep{}) {
			p.CopyKeep = &keep
		}
		if p.CopyTo != "" {
			var c runtime.Common
			if err := c.UseRepo(p.CopyTo); err != nil {
				return exitError{2, fmt.Errorf("--copy-to %w", err)}
			}
		}
		p.UpdatedAt = time.Now().UTC()
		if err := p.Validate(); err != nil {
			return exitError{2, err}
		}
		if *mirrorTo != "" {
			if _, err := mirror.ParseTarget(*mirrorTo); err != nil {
				return exitError{2, err}
			}
		}
		c, err := connect(ctx)
		if err != nil {
			return err
		}
		defer c.close()
		store, err := policy.Open(ctx, c.bus.JS)
		if err != nil {
			return err
		}
		if err := store.Put(ctx, &p); err != nil {
			return err
		}
		if *mirrorTo != "" {
			ms, err := mirror.Open(ctx, c.bus.JS)
			if err != nil {
				return err
			}
			if _, err := ms.Set(ctx, p.VM, *mirrorTo, 0, false); err != nil {
				return err
			}
		}
		fmt.Printf("policy of %s set: %s\n", p.VM, p.Schedule)
		return nil
	}
	return cmd
}

func newPolicyLsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "ls", Short: "list policies", Args: usage(cobra.NoArgs)}
	fs := cmd.Flags()
	asJSON := fs.Bool("json", false, "print JSON")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		store, done, err := policies(ctx)
		if err != nil {
			return err
		}
		defer done()
		ps, err := store.List(ctx)
		if err != nil {
			return err
		}
		// Each policy with when it next runs (the scheduler's slot plus
		// the VM's jitter).
		type view struct {
			contracts.Policy
			NextRun *time.Time `json:"next_run,omitempty"`
		}
		now := time.Now()
		views := []view{}
		for _, p := range ps {
			v := view{Policy: p}
			if _, run, err := schedule.NextRun(p.VM, p.Schedule, p.Jitter, now); err == nil {
				v.NextRun = &run
			}
			views = append(views, v)
		}
		if *asJSON {
			return printJSON(views)
		}
		tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VM\tSCHEDULE\tJITTER\tNEXT RUN\tKEY INTERVAL\tKEEP (last/hourly/daily/weekly/monthly/yearly)\tSOURCE")
		for _, v := range views {
			p, next := v.Policy, "-"
			if v.NextRun != nil {
				next = fmt.Sprintf("%s (in %s)", v.NextRun.Local().Format(time.DateTime), v.NextRun.Sub(now).Round(time.Second))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d/%d/%d/%d/%d/%d\t%s\n", p.VM, p.Schedule, p.Jitter, next, p.KeyInterval, p.KeepLast, p.KeepHourly, p.KeepDaily, p.KeepWeekly, p.KeepMonthly, p.KeepYearly, p.Source)
		}
		return tw.Flush()
	}
	return cmd
}

func newPolicyRmCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "rm", Short: "remove the policy of one VM", Args: usage(cobra.NoArgs)}
	fs := cmd.Flags()
	vm := fs.String("vm", "", "VM name")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		if *vm == "" {
			return exitError{2, errors.New("policy rm needs --vm")}
		}
		store, done, err := policies(ctx)
		if err != nil {
			return err
		}
		defer done()
		if err := store.Delete(ctx, *vm); err != nil {
			return err
		}
		fmt.Printf("policy of %s removed\n", *vm)
		return nil
	}
	return cmd
}
