// Command strata-dedup-crashing is the dedup service with a test hook: it
// exits, as a crash would, when a collection of packs reaches the step
// named by its first argument (condemned, packed, moved or deleted), or
// with "pause:STEP:DURATION" sleeps there instead each time, so that a
// test can read while packs move. Test scaffolding for the e2e suite;
// never shipped.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/strata-backup/strata/pkg/runtime"
	"github.com/strata-backup/strata/services/dedup"
)

type hook struct {
	step  string
	pause time.Duration // 0: crash
}

func (h hook) BeforeGCStep(step, pack string) error {
	if step != h.step {
		return nil
	}
	if h.pause > 0 {
		slog.Warn("test hook: pausing at gc step", "step", step, "pack", pack, "for", h.pause)
		time.Sleep(h.pause)
		return nil
	}
	slog.Warn("test hook: crashing at gc step", "step", step, "pack", pack)
	os.Exit(3)
	return nil
}

func main() {
	if len(os.Args) != 2 || os.Args[1] == "" {
		fmt.Fprintln(os.Stderr, "usage: strata-dedup-crashing condemned|packed|moved|deleted|pause:STEP:DURATION")
		os.Exit(2)
	}
	h := hook{step: os.Args[1]}
	if rest, ok := strings.CutPrefix(h.step, "pause:"); ok {
		step, d, _ := strings.Cut(rest, ":")
		pause, err := time.ParseDuration(d)
		if err != nil || pause <= 0 {
			fmt.Fprintln(os.Stderr, "pause: want pause:STEP:DURATION")
			os.Exit(2)
		}
		h = hook{step: step, pause: pause}
	}
	os.Args = os.Args[:1] // runtime.Main reads a "healthcheck" argument
	var cfg dedup.Config
	cfg.Hooks = h
	runtime.Main("dedup", &cfg, &cfg.Common, func(ctx context.Context, rt *runtime.Runtime) error {
		return dedup.Start(ctx, rt, cfg)
	})
}
