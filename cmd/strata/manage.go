package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/strata-backup/strata/contracts"
)

// newCancelCmd stops a running backup (through the scheduler).
func newCancelCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "cancel", Short: "stop a running backup (it ends failed: cancelled)", Args: usage(cobra.NoArgs)}
	fs := cmd.Flags()
	req := contracts.CancelRequest{Schema: contracts.SchemaVersion}
	fs.StringVar(&req.VM, "vm", "", "VM name")
	fs.StringVar(&req.BackupID, "backup", "", "backup id")
	asJSON := fs.Bool("json", false, "print JSON")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		var reply contracts.CancelReply
		if err := call(ctx, "cancel", contracts.SubjectSchedulerCancel, &req, &reply, 30*time.Second); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(reply)
		}
		if reply.Cancelled {
			fmt.Printf("backup %s of %s cancelled\n", req.BackupID, req.VM)
			return nil
		}
		fmt.Printf("backup %s of %s had already ended: %s %s\n", req.BackupID, req.VM, reply.State, reply.Reason)
		return nil
	}
	return cmd
}

// newRmCmd removes failed backups (through the merge service, which owns
// removal of backups).
func newRmCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "rm", Short: "remove failed backups of a VM (good ones leave by retention: strata prune)", Args: usage(cobra.NoArgs)}
	fs := cmd.Flags()
	req := contracts.RemoveRequest{Schema: contracts.SchemaVersion}
	fs.StringVar(&req.VM, "vm", "", "VM name")
	fs.StringSliceVar(&req.BackupIDs, "backup", nil, "failed backup id (repeatable)")
	fs.BoolVar(&req.AllFailed, "failed", false, "every failed backup of the VM")
	asJSON := fs.Bool("json", false, "print JSON")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		var reply contracts.RemoveReply
		if err := call(ctx, "rm", contracts.SubjectMergeRemove, &req, &reply, 5*time.Minute); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(reply)
		}
		fmt.Printf("removed %d failed backups of %s\n", len(reply.Removed), req.VM)
		for _, id := range reply.Removed {
			fmt.Println("  -", id)
		}
		return nil
	}
	return cmd
}
