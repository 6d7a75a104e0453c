package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/strata-backup/strata/pkg/runtime"
)

// repoFlag is --repo: the repository a read-side command reads, with no
// NATS at all (records come from their copies in it). One command runs
// per process, so one variable serves every command that has the flag.
var repoFlag string

// addRepoFlag gives a read-side command --repo.
func addRepoFlag(cmd *cobra.Command) {
	cmd.Flags().StringVar(&repoFlag, "repo", "", "read this repository directly, without NATS: dir:///path or s3://bucket[/prefix]?endpoint=URL&region=R (credentials from STRATA_S3_ACCESS_KEY/SECRET_KEY)")
}

// applyRepo points c at the repository --repo names, with NATS off; a
// malformed URL is a usage error.
func applyRepo(spec string, c *runtime.Common) error {
	if err := c.UseRepo(spec); err != nil {
		return exitError{2, fmt.Errorf("--repo %w", err)}
	}
	c.NATSURL = ""
	return nil
}
