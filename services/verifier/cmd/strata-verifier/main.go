// Command strata-verifier runs the verifier service.
package main

import (
	"context"

	"github.com/strata-backup/strata/pkg/runtime"
	"github.com/strata-backup/strata/services/verifier"
)

func main() {
	var cfg verifier.Config
	runtime.Main("verifier", &cfg, &cfg.Common, func(ctx context.Context, rt *runtime.Runtime) error {
		return verifier.Start(ctx, rt, cfg)
	})
}
