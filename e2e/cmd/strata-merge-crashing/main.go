// Command strata-merge-crashing is the merge service with a test hook: it
// exits, as a crash would, when pruning reaches the step named by its
// first argument (manifests, record or catalog). Test scaffolding for the
// e2e suite; never shipped.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/strata-backup/strata/pkg/runtime"
	"github.com/strata-backup/strata/services/merge"
)

type crashAt string

func (c crashAt) BeforePruneStep(step, backupID string) error {
	if step == string(c) {
		slog.Warn("test hook: crashing at prune step", "step", step, "backup", backupID)
		os.Exit(3)
	}
	return nil
}

func main() {
	if len(os.Args) != 2 || os.Args[1] == "" {
		fmt.Fprintln(os.Stderr, "usage: strata-merge-crashing manifests|record|catalog")
		os.Exit(2)
	}
	step := os.Args[1]
	os.Args = os.Args[:1] // runtime.Main reads a "healthcheck" argument
	var cfg merge.Config
	cfg.Hooks = crashAt(step)
	runtime.Main("merge", &cfg, &cfg.Common, func(ctx context.Context, rt *runtime.Runtime) error {
		return merge.Start(ctx, rt, cfg)
	})
}
