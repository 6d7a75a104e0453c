// Command strata-merge runs the merge service.
package main

import (
	"context"

	"github.com/strata-backup/strata/pkg/runtime"
	"github.com/strata-backup/strata/services/merge"
)

func main() {
	var cfg merge.Config
	runtime.Main("merge", &cfg, &cfg.Common, func(ctx context.Context, rt *runtime.Runtime) error {
		return merge.Start(ctx, rt, cfg)
	})
}
