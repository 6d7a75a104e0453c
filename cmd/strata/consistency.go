package main

import (
	"github.com/spf13/cobra"

	"github.com/strata-backup/strata/contracts"
)

// consistencyFlags are --consistency, --require-consistency and
// --freeze-mountpoint, shared by backup and policy set.
type consistencyFlags struct {
	mode        *string
	required    *bool
	mountpoints *[]string
}

func addConsistencyFlags(cmd *cobra.Command) consistencyFlags {
	fs := cmd.Flags()
	return consistencyFlags{
		mode:        fs.String("consistency", "", "application, filesystem (default: the guest's filesystems frozen through its agent for the snapshot) or crash"),
		required:    fs.Bool("require-consistency", false, "fail the backup when the consistency asked for cannot be had (default: fall back to crash consistency, and the record says why)"),
		mountpoints: fs.StringSlice("freeze-mountpoint", nil, "freeze only these mountpoints of the guest (default: all)"),
	}
}

func (f consistencyFlags) get() contracts.Consistency {
	return contracts.Consistency{Consistency: *f.mode, ConsistencyRequired: *f.required, FreezeMountpoints: *f.mountpoints}
}
