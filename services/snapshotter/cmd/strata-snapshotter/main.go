// Command strata-snapshotter runs the snapshotter service.
package main

import (
	"context"

	"github.com/strata-backup/strata/pkg/runtime"
	"github.com/strata-backup/strata/services/snapshotter"
)

func main() {
	var cfg snapshotter.Config
	runtime.Main("snapshotter", &cfg, &cfg.Common, func(ctx context.Context, rt *runtime.Runtime) error {
		return snapshotter.Start(ctx, rt, cfg)
	})
}
