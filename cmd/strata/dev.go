package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"time"

	"github.com/docker/go-units"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/spf13/cobra"

	"github.com/strata-backup/strata/pkg/demodisk"
	"github.com/strata-backup/strata/pkg/runtime"
	"github.com/strata-backup/strata/services/api"
	"github.com/strata-backup/strata/services/dedup"
	"github.com/strata-backup/strata/services/merge"
	"github.com/strata-backup/strata/services/scheduler"
	"github.com/strata-backup/strata/services/snapshotter"
	"github.com/strata-backup/strata/services/transfer"
	"github.com/strata-backup/strata/services/verifier"
)

// cmdDev runs an embedded nats-server with JetStream and all six services
// in this process, storing everything under --data: zero set-up.
func newDevCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "dev", Short: "run NATS and all six services in this process (laptop mode)", Args: usage(cobra.NoArgs)}
	fs := cmd.Flags()
	data := fs.String("data", "", "directory for NATS state and the repository")
	port := fs.Int("port", 4222, "NATS client port (127.0.0.1)")
	cpuProfile := fs.String("cpu-profile", "", "write a CPU profile of the whole process (all services and NATS) to this file at exit (go tool pprof)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		if *data == "" {
			return exitError{2, errors.New("dev needs --data DIR")}
		}
		dir, err := filepath.Abs(*data)
		if err != nil {
			return err
		}
		if *cpuProfile != "" {
			f, err := os.Create(*cpuProfile)
			if err != nil {
				return err
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				return err
			}
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
		ns, err := server.NewServer(&server.Options{
			ServerName: "strata-dev", Host: "127.0.0.1", Port: *port,
			JetStream: true, StoreDir: filepath.Join(dir, "nats"), NoSigs: true,
		})
		if err != nil {
			return fmt.Errorf("embedded nats: %w", err)
		}
		go ns.Start()
		if !ns.ReadyForConnections(10 * time.Second) {
			return fmt.Errorf("embedded nats did not start on 127.0.0.1:%d", *port)
		}
		defer ns.Shutdown()

		var common runtime.Common
		if err := runtime.Load(&common); err != nil {
			return err
		}
		common.NATSURL = ns.ClientURL()
		common.StoreDir = filepath.Join(dir, "objects")

		var (
			schedCfg = scheduler.Config{Common: common}
			snapCfg  = snapshotter.Config{Common: common}
			xferCfg  = transfer.Config{Common: common}
			dedupCfg = dedup.Config{Common: common}
			mergeCfg = merge.Config{Common: common}
			verCfg   = verifier.Config{Common: common}
			apiCfg   = api.Config{Common: common}
		)
		for _, cfg := range []any{&schedCfg, &snapCfg, &xferCfg, &dedupCfg, &mergeCfg, &verCfg, &apiCfg} { // their own STRATA_* defaults
			if err := runtime.Load(cfg); err != nil {
				return err
			}
		}
		schedCfg.Common, snapCfg.Common, xferCfg.Common, dedupCfg.Common, mergeCfg.Common, verCfg.Common, apiCfg.Common = common, common, common, common, common, common, common
		if dedupCfg.IndexDir == "" {
			dedupCfg.IndexDir = filepath.Join(dir, "dedup") // beside everything else of this repository
		}
		var apiURL string
		services := []struct {
			name  string
			start func(context.Context, *runtime.Runtime) error
		}{
			{"scheduler", func(ctx context.Context, rt *runtime.Runtime) error { return scheduler.Start(ctx, rt, schedCfg) }},
			{"snapshotter", func(ctx context.Context, rt *runtime.Runtime) error { return snapshotter.Start(ctx, rt, snapCfg) }},
			{"transfer", func(ctx context.Context, rt *runtime.Runtime) error { return transfer.Start(ctx, rt, xferCfg) }},
			{"dedup", func(ctx context.Context, rt *runtime.Runtime) error { return dedup.Start(ctx, rt, dedupCfg) }},
			{"merge", func(ctx context.Context, rt *runtime.Runtime) error { return merge.Start(ctx, rt, mergeCfg) }},
			{"verifier", func(ctx context.Context, rt *runtime.Runtime) error { return verifier.Start(ctx, rt, verCfg) }},
			{"api", func(ctx context.Context, rt *runtime.Runtime) error {
				// A busy port costs the console, not the backups: dev goes on.
				addr, err := api.Serve(ctx, rt, apiCfg)
				if err != nil {
					fmt.Fprintf(os.Stderr, "strata dev: no API or console (%v); set STRATA_API_ADDR to another address\n", err)
					apiURL = "(none)"
					return nil
				}
				apiURL = "http://" + addr.String()
				return nil
			}},
		}
		var started []*runtime.Runtime
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			for _, rt := range started {
				rt.Close(sctx)
			}
		}()
		for _, s := range services {
			rt, err := runtime.Start(ctx, s.name, common)
			if err != nil {
				return fmt.Errorf("start %s: %w", s.name, err)
			}
			started = append(started, rt)
			if err := s.start(ctx, rt); err != nil {
				return fmt.Errorf("start %s: %w", s.name, err)
			}
		}
		if err := common.ServeMetrics(ctx, "dev", started[0].Log); err != nil {
			fmt.Fprintf(os.Stderr, "strata dev: no metrics (%v)\n", err)
		}
		remove, err := writeDevState(devState{NATSURL: common.NATSURL, StoreDir: common.StoreDir, PID: os.Getpid()})
		if err != nil {
			fmt.Fprintf(os.Stderr, "strata dev: could not record where it runs (%v): commands in another shell need the exports below\n", err)
		}
		defer remove()
		fmt.Fprintf(os.Stderr, "strata dev: all six services up; the API at %s (/v1/openapi.json).", apiURL)
		fmt.Fprintf(os.Stderr, " In another shell (strata finds this dev by itself while nothing else is configured):\n  export STRATA_NATS_URL=%s STRATA_STORE_DIR=%s\n  strata backup --vm demo --source file:///abs/disk.img --wait\n", common.NATSURL, common.StoreDir)
		<-ctx.Done()
		return nil
	}
	return cmd
}

func newMkdiskCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "mkdisk PATH", Short: "write a deterministic demo disk image", Args: usage(cobra.ExactArgs(1))}
	fs := cmd.Flags()
	var size sizeFlag = 256 << 20
	fs.Var(&size, "size", "image size: bytes, or with a binary unit (512M, 1G, 1.5GiB)")
	seed := fs.String("seed", "1", "seed: same seed and size, same image")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) != 1 {
			return exitError{2, errors.New("mkdisk needs one PATH")}
		}
		s, err := strconv.ParseUint(*seed, 10, 64)
		if err != nil {
			return exitError{2, fmt.Errorf("seed: %w", err)}
		}
		return demodisk.Write(args[0], int64(size), s)
	}
	return cmd
}

// sizeFlag is a byte size given as 1073741824, 1G, 1GiB or 512M (binary
// units, as qemu-img and disk tools read them).
type sizeFlag int64

func (s *sizeFlag) String() string { return units.BytesSize(float64(*s)) }
func (s *sizeFlag) Type() string   { return "size" }
func (s *sizeFlag) Set(v string) error {
	n, err := units.RAMInBytes(v)
	if err != nil || n <= 0 {
		return fmt.Errorf("%q is not a size (512M, 1G, 1073741824)", v)
	}
	*s = sizeFlag(n)
	return nil
}
