package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/strata-backup/strata/pkg/bus"
	"github.com/strata-backup/strata/pkg/catalog"
	"github.com/strata-backup/strata/pkg/runtime"
)

func newCatalogCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "catalog", Short: "the backup catalog (NATS KV) and its copy in the repository", Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			return exitError{2, fmt.Errorf("catalog needs a subcommand: rebuild")}
		}}
	rebuild := &cobra.Command{Use: "rebuild", Short: "restore the catalog from the backup records in the repository (after NATS was lost)", Args: usage(cobra.NoArgs)}
	asJSON := rebuild.Flags().Bool("json", false, "print JSON")
	rebuild.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		var cfg runtime.Common
		if err := loadConfig(&cfg, &cfg); err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		b, err := bus.Connect(cctx, cfg.Dial("cli"), nil, slog.New(&natsNotices{w: os.Stderr}))
		if err != nil {
			return fmt.Errorf("%w (is NATS running? STRATA_NATS_URL=%s)", err, cfg.NATSURL)
		}
		defer b.NC.Close()
		// A new NATS has no buckets yet: make them as a service would.
		if err := b.EnsureStreams(cctx, cfg.JSReplicas); err != nil {
			return err
		}
		store, r, err := cfg.OpenExisting(ctx)
		if err != nil {
			return err
		}
		cat, err := catalog.Open(cctx, b.JS, store, r)
		if err != nil {
			return err
		}
		rep, err := cat.Rebuild(ctx)
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(rep)
		}
		fmt.Printf("%d backup records in %s: %d restored to the catalog (%d of them unfinished, recorded failed), %d already there\n",
			rep.Records, store, rep.Restored, rep.Failed, rep.Present)
		for _, r := range rep.Refused {
			fmt.Println("refused:", r)
		}
		if len(rep.Refused) > 0 {
			return exitError{1, fmt.Errorf("%d records could not be read", len(rep.Refused))}
		}
		return nil
	}
	cmd.AddCommand(rebuild)
	return cmd
}
