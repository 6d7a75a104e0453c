package main

import (
	"time"

	"github.com/spf13/cobra"

	"github.com/strata-backup/strata/contracts"
)

// consistencyFlags are --consistency, --require-consistency,
// --freeze-mountpoint and the hooks, shared by backup and policy set.
type consistencyFlags struct {
	mode        *string
	required    *bool
	mountpoints *[]string
	pre, post   *[]string
	preHost     *[]string
	postHost    *[]string
	hookTimeout *time.Duration
}

func addConsistencyFlags(cmd *cobra.Command) consistencyFlags {
	fs := cmd.Flags()
	return consistencyFlags{
		mode:        fs.String("consistency", "", "application, filesystem (default: the guest's filesystems frozen through its agent for the snapshot) or crash"),
		required:    fs.Bool("require-consistency", false, "fail the backup when the consistency asked for cannot be had (default: fall back to crash consistency, and the record says why)"),
		mountpoints: fs.StringSlice("freeze-mountpoint", nil, "freeze only these mountpoints of the guest (default: all)"),
		pre:         fs.StringArray("pre-freeze", nil, "run CMD in the guest through its agent (guest-exec) right before the freeze; a failure counts as a failed freeze (repeatable)"),
		post:        fs.StringArray("post-thaw", nil, "run CMD in the guest through its agent after the snapshot and the thaw (repeatable)"),
		preHost:     fs.StringArray("pre-freeze-host", nil, "run PROGRAM [ARGS] from the snapshotter's STRATA_HOOKS_DIR right before the freeze (repeatable)"),
		postHost:    fs.StringArray("post-thaw-host", nil, "run PROGRAM [ARGS] from the snapshotter's STRATA_HOOKS_DIR after the thaw (repeatable)"),
		hookTimeout: fs.Duration("hook-timeout", contracts.DefaultHookTimeoutSec*time.Second, "time limit of each hook (a hook that runs longer fails)"),
	}
}

func (f consistencyFlags) get() contracts.Consistency {
	c := contracts.Consistency{Consistency: *f.mode, ConsistencyRequired: *f.required, FreezeMountpoints: *f.mountpoints}
	timeout := int(f.hookTimeout.Round(time.Second) / time.Second)
	hooks := func(cmds []string, host bool) (hs []contracts.Hook) {
		for _, cmd := range cmds {
			hs = append(hs, contracts.Hook{Command: cmd, Host: host, TimeoutSec: timeout})
		}
		return hs
	}
	c.PreFreeze = append(hooks(*f.pre, false), hooks(*f.preHost, true)...)
	c.PostThaw = append(hooks(*f.post, false), hooks(*f.postHost, true)...)
	return c
}
