// Command strata-dedup runs the chunk index service.
package main

import (
	"context"

	"github.com/strata-backup/strata/pkg/runtime"
	"github.com/strata-backup/strata/services/dedup"
)

func main() {
	var cfg dedup.Config
	runtime.Main("dedup", &cfg, &cfg.Common, func(ctx context.Context, rt *runtime.Runtime) error {
		return dedup.Start(ctx, rt, cfg)
	})
}
