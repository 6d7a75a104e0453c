package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/strata-backup/strata/contracts"
)

// cmdPrune applies retention through the merge service. Without --yes it
// is a dry run: it prints what would be pruned.
func newPruneCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "prune", Short: "apply retention to one VM (dry run without --yes)", Args: usage(cobra.NoArgs)}
	fs := cmd.Flags()
	req := contracts.PruneRequest{Schema: contracts.SchemaVersion}
	fs.StringVar(&req.VM, "vm", "", "VM name")
	fs.IntVar(&req.KeepLast, "keep-last", 0, "keep the last N backups")
	fs.IntVar(&req.KeepHourly, "keep-hourly", 0, "keep one per hour for H hours")
	fs.IntVar(&req.KeepDaily, "keep-daily", 0, "keep one per day for D days")
	fs.IntVar(&req.KeepWeekly, "keep-weekly", 0, "keep one per week for W weeks")
	fs.IntVar(&req.KeepMonthly, "keep-monthly", 0, "keep one per month for M months")
	fs.IntVar(&req.KeepYearly, "keep-yearly", 0, "keep one per year for Y years")
	yes := fs.Bool("yes", false, "really prune (default: dry run)")
	asJSON := fs.Bool("json", false, "print JSON")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up waiting for the merge service after this long")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		req.UsePolicy = !req.HasRules()
		req.DryRun = !*yes
		var reply contracts.PruneReply
		if err := call(ctx, "prune", contracts.SubjectMergePrune, &req, &reply, *timeout); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(reply)
		}
		verb := "pruned"
		if reply.DryRun {
			verb = "would prune (dry run; --yes to prune)"
		}
		fmt.Printf("%s %d backups of %s, keeping %d\n", verb, len(reply.Pruned), req.VM, len(reply.Kept))
		for _, id := range reply.Pruned {
			fmt.Println("  -", id)
		}
		if len(reply.Locked) > 0 {
			fmt.Printf("kept %d more under Object Lock (pruned by a run after their date):\n", len(reply.Locked))
			for _, l := range reply.Locked {
				fmt.Printf("  = %s  locked until %s\n", l.ID, l.Until.UTC().Format(time.RFC3339))
			}
		}
		return nil
	}
	return cmd
}
