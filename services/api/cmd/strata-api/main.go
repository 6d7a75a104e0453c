// Command strata-api runs the operator API.
package main

import (
	"context"

	"github.com/strata-backup/strata/pkg/runtime"
	"github.com/strata-backup/strata/services/api"
)

func main() {
	var cfg api.Config
	runtime.Main("api", &cfg, &cfg.Common, func(ctx context.Context, rt *runtime.Runtime) error {
		return api.Start(ctx, rt, cfg)
	})
}
