package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/mirror"
)

func newMirrorCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "mirror", Short: "standby mirrors: a VM's disk kept at its latest verified backup, ready to start",
		RunE: func(cmd *cobra.Command, args []string) error {
			return exitError{2, errors.New("mirror needs set, ls, sync, reseed or rm")}
		}}
	cmd.AddCommand(newMirrorSetCmd(), newMirrorLsCmd(), newMirrorSyncCmd("sync"), newMirrorSyncCmd("reseed"), newMirrorRmCmd())
	return cmd
}

func newMirrorSetCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "set", Short: "keep a VM's disk mirrored to a raw file or a writable NBD export", Args: usage(cobra.NoArgs)}
	fs := cmd.Flags()
	vm := fs.String("vm", "", "VM name")
	to := fs.String("to", "", "the target: file:///absolute/path.raw (created when missing) or nbd://host:port/export (writable; e.g. qemu-nbd of a shut-off libvirt domain's disk)")
	disk := fs.Int("disk", 0, "which disk of the VM")
	certify := fs.Bool("certify", false, "after each update hash the whole target against the backup (default: the trivial check, size and first MiB)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		if *vm == "" || *to == "" {
			return exitError{2, errors.New("mirror set needs --vm and --to")}
		}
		if _, err := mirror.ParseTarget(*to); err != nil {
			return exitError{2, err}
		}
		c, s, err := mirrors(ctx)
		if err != nil {
			return err
		}
		defer c.close()
		m, err := s.Set(ctx, *vm, *to, *disk, *certify)
		if err != nil {
			return err
		}
		fmt.Printf("mirror of %s disk %d: %s (the merge service updates it after each verified backup; strata mirror sync --vm %s now)\n", m.VM, m.Disk, m.Target, m.VM)
		return nil
	}
	return cmd
}

func newMirrorLsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "ls", Short: "list mirrors and the point each holds", Args: usage(cobra.NoArgs)}
	asJSON := cmd.Flags().Bool("json", false, "print JSON")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		c, s, err := mirrors(ctx)
		if err != nil {
			return err
		}
		defer c.close()
		ms, err := s.List(ctx)
		if err != nil {
			return err
		}
		if *asJSON {
			if ms == nil {
				ms = []contracts.Mirror{}
			}
			return printJSON(ms)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VM\tDISK\tTARGET\tPOINT\tLAST UPDATE\tWRITTEN\tCHECK\tSTATE")
		for _, m := range ms {
			when, state := "-", "ok"
			if m.SyncedAt != nil {
				when = m.SyncedAt.Local().Format(time.DateTime)
			}
			if m.NeedsReseed {
				state = "changed behind Strata's back: strata mirror reseed"
			} else if m.Error != "" {
				state = "failed: " + m.Error
			} else if m.Point == "" {
				state = "not seeded yet"
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", m.VM, m.Disk, m.Target, m.Point, when, human(m.BytesWritten), m.Check, state)
		}
		return tw.Flush()
	}
	return cmd
}

// newMirrorSyncCmd is sync (bring the mirror to a backup now) or reseed
// (compare every chunk of the target and write the ones that differ:
// after the target changed behind Strata's back, or to start over).
func newMirrorSyncCmd(name string) *cobra.Command {
	short := "bring a VM's mirror to a verified backup now (only the chunks that changed)"
	if name == "reseed" {
		short = "compare every chunk of a VM's mirror with a verified backup and write the ones that differ"
	}
	cmd := &cobra.Command{Use: name, Short: short, Args: usage(cobra.NoArgs)}
	fs := cmd.Flags()
	vm := fs.String("vm", "", "VM name")
	id := fs.String("backup", "latest", "backup id, or latest (newest verified)")
	asJSON := fs.Bool("json", false, "print JSON")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		if *vm == "" {
			return exitError{2, fmt.Errorf("mirror %s needs --vm", name)}
		}
		c, s, err := mirrors(ctx)
		if err != nil {
			return err
		}
		defer c.close()
		_, r, err := c.cfg.OpenExisting(ctx)
		if err != nil {
			return err
		}
		m, res, err := mirror.Sync(ctx, r, s, c.cat, *vm, *id, name == "reseed")
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(m)
		}
		fmt.Printf("mirror of %s at %s: %d chunks written (%s), %s check passed\n", m.VM, m.Point, res.ChunksWritten, human(res.BytesWritten), m.Check)
		return nil
	}
	return cmd
}

func newMirrorRmCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "rm", Short: "stop mirroring a VM (the target is left as it is)", Args: usage(cobra.NoArgs)}
	vm := cmd.Flags().String("vm", "", "VM name")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		if *vm == "" {
			return exitError{2, errors.New("mirror rm needs --vm")}
		}
		c, s, err := mirrors(ctx)
		if err != nil {
			return err
		}
		defer c.close()
		return s.Delete(ctx, *vm)
	}
	return cmd
}

// mirrors connects and opens the mirror store.
func mirrors(ctx context.Context) (*client, *mirror.Store, error) {
	c, err := connect(ctx)
	if err != nil {
		return nil, nil, err
	}
	s, err := mirror.Open(ctx, c.bus.JS)
	if err != nil {
		c.close()
		return nil, nil, err
	}
	return c, s, nil
}
