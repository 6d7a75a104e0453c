// Command strata-transfer runs one transfer worker; run as many as needed.
package main

import (
	"context"

	"github.com/strata-backup/strata/pkg/runtime"
	"github.com/strata-backup/strata/services/transfer"
)

func main() {
	var cfg transfer.Config
	runtime.Main("transfer", &cfg, &cfg.Common, func(ctx context.Context, rt *runtime.Runtime) error {
		return transfer.Start(ctx, rt, cfg)
	})
}
