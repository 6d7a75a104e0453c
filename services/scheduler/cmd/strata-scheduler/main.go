// Command strata-scheduler runs the scheduler service.
package main

import (
	"context"

	"github.com/strata-backup/strata/pkg/runtime"
	"github.com/strata-backup/strata/services/scheduler"
)

func main() {
	var cfg scheduler.Config
	runtime.Main("scheduler", &cfg, &cfg.Common, func(ctx context.Context, rt *runtime.Runtime) error {
		return scheduler.Start(ctx, rt, cfg)
	})
}
