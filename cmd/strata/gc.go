package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/strata-backup/strata/contracts"
)

// cmdGC asks the dedup service to collect unreferenced chunks.
func newGCCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "gc", Short: "delete chunks (and packs) no backup references", Args: usage(cobra.NoArgs)}
	fs := cmd.Flags()
	req := contracts.GCRequest{Schema: contracts.SchemaVersion}
	fs.BoolVar(&req.DryRun, "dry-run", false, "report what would be freed, delete nothing")
	grace := fs.Duration("grace", -1, "spare unreferenced chunks younger than this (default: the service's STRATA_GC_GRACE)")
	asJSON := fs.Bool("json", false, "print JSON")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		if *grace >= 0 {
			req.Grace = grace.String()
		}
		var reply contracts.GCReply
		if err := call(ctx, "gc", contracts.SubjectDedupGC, &req, &reply, time.Hour); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(reply)
		}
		verb := "deleted"
		if reply.DryRun {
			verb = "would delete"
		}
		fmt.Printf("marked %d backups (%d chunks referenced); %d chunk objects: %s %d (%s), %d unreferenced but younger than %s\n",
			reply.Backups, reply.Referenced, reply.Chunks, verb, reply.Deleted, human(reply.FreedBytes), reply.Young, time.Duration(reply.GraceSeconds)*time.Second)
		if reply.Packs > 0 {
			fmt.Printf("%d packs: %s %d no backup references (packs partly referenced are kept whole)\n", reply.Packs, verb, reply.PacksDeleted)
		}
		return nil
	}
	return cmd
}
