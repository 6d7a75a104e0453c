package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/strata-backup/strata/pkg/guestfs"
	"github.com/strata-backup/strata/pkg/restore"
)

// filesFlags are what every `strata files` command takes.
type filesFlags struct {
	vm, backup *string
	disk       *int
	json       *bool
	stats      *bool
}

func addFilesFlags(cmd *cobra.Command) filesFlags {
	fs := cmd.Flags()
	addRepoFlag(cmd)
	return filesFlags{
		vm:     fs.String("vm", "", "VM name"),
		backup: fs.String("backup", "latest", "backup id, or latest (newest verified)"),
		disk:   fs.Int("disk", 0, "disk index in the backup record (0, 1, …)"),
		json:   fs.Bool("json", false, "print JSON"),
		stats:  fs.Bool("stats", false, "say on stderr how much of the disk was fetched from the repository, and how long it took"),
	}
}

func newFilesCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "files", Short: "list, read and restore files inside a backed-up disk, straight from the repository (no mount, no root)", Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			return exitError{2, errors.New("files needs ls, cat or get")}
		}}
	cmd.AddCommand(newFilesLsCmd(), newFilesCatCmd(), newFilesGetCmd())
	return cmd
}

// openGuest opens a backed-up disk for file access: chunks are fetched on
// demand through the restore read path (cached, each checked).
func openGuest(ctx context.Context, f filesFlags) (*guestfs.Guest, func(), error) {
	if *f.vm == "" {
		return nil, nil, exitError{2, errors.New("files needs --vm")}
	}
	scfg, err := loadServeConfig()
	if err != nil {
		return nil, nil, err
	}
	rec, r, done, err := openBackup(ctx, *f.vm, *f.backup)
	if err != nil {
		return nil, nil, err
	}
	if *f.disk < 0 || *f.disk >= len(rec.Disks) {
		done()
		return nil, nil, exitError{2, fmt.Errorf("--disk %d: backup %s has %d disk(s)", *f.disk, rec.ID, len(rec.Disks))}
	}
	man, err := r.GetManifest(ctx, rec.Disks[*f.disk].Manifest)
	if err != nil {
		done()
		return nil, nil, fmt.Errorf("backup %s: %w", rec.ID, err)
	}
	rd := restore.NewReader(ctx, r, man, restore.ReaderOptions{CacheBytes: scfg.CacheMiB << 20})
	g, err := guestfs.New(rd.At(ctx))
	if err != nil {
		done()
		return nil, nil, fmt.Errorf("backup %s disk %d: %w", rec.ID, *f.disk, err)
	}
	if *f.stats {
		start, release := time.Now(), done
		done = func() {
			chunks, bytes := rd.Fetched()
			fmt.Fprintf(os.Stderr, "fetched %d chunks, %d bytes of the %d-byte disk, in %v\n", chunks, bytes, rd.Size(), time.Since(start).Round(time.Millisecond))
			release()
		}
	}
	return g, done, nil
}

// guestPath resolves /<volume>/<path> to the volume's filesystem.
func guestPath(g *guestfs.Guest, p string) (guestfs.FS, string, string, error) {
	vol, inside, err := g.Split(p)
	if err != nil {
		return nil, "", "", exitError{2, err}
	}
	if vol == "" {
		return nil, "", ".", nil
	}
	fsys, err := g.Volume(vol)
	return fsys, vol, inside, err
}

func newFilesLsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "ls [/VOLUME/PATH]", Short: "list the volumes of a backed-up disk, or a directory in one", Args: usage(cobra.MaximumNArgs(1))}
	f := addFilesFlags(cmd)
	long := cmd.Flags().BoolP("long", "l", false, "mode, owner, size and time of each entry")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		g, done, err := openGuest(cmd.Context(), f)
		if err != nil {
			return err
		}
		defer done()
		p := "/"
		if len(args) == 1 {
			p = args[0]
		}
		fsys, vol, inside, err := guestPath(g, p)
		if err != nil {
			return err
		}
		if fsys == nil {
			if *f.json {
				return printJSON(g.Volumes())
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VOLUME\tFS\tLABEL\tUUID\tSIZE\tNOTE")
			for _, v := range g.Volumes() {
				fmt.Fprintf(tw, "/%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, cmpOrDash(v.FS), cmpOrDash(v.Label), cmpOrDash(v.UUID), human(v.Size), v.Note)
			}
			return tw.Flush()
		}
		e, err := fsys.Lstat(inside)
		if err != nil {
			return fmt.Errorf("/%s/%s: %w", vol, strings.TrimPrefix(inside, "."), err)
		}
		entries := []guestfs.Entry{e}
		if e.Mode.IsDir() {
			if entries, err = fsys.ReadDir(inside); err != nil {
				return fmt.Errorf("/%s/%s: %w", vol, inside, err)
			}
		}
		if *f.json {
			return printJSON(entries)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 1, ' ', 0)
		for _, e := range entries {
			name := e.Name
			if e.Mode.IsDir() {
				name += "/"
			}
			if !*long {
				fmt.Fprintln(tw, name)
				continue
			}
			owner := "-\t-"
			if e.HasOwner {
				owner = fmt.Sprintf("%d\t%d", e.UID, e.GID)
			}
			if e.Link != "" {
				name += " -> " + e.Link
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", e.Mode, owner, e.Size, e.ModTime.UTC().Format("2006-01-02 15:04:05"), name)
		}
		return tw.Flush()
	}
	return cmd
}

func cmpOrDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newFilesCatCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "cat /VOLUME/PATH", Short: "write one file of a backed-up disk to stdout", Args: usage(cobra.ExactArgs(1))}
	f := addFilesFlags(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		g, done, err := openGuest(cmd.Context(), f)
		if err != nil {
			return err
		}
		defer done()
		fsys, _, inside, err := guestPath(g, args[0])
		if err != nil {
			return err
		}
		if fsys == nil || inside == "." {
			return exitError{2, fmt.Errorf("%s: not a file (a file is /VOLUME/PATH; see strata files ls)", args[0])}
		}
		// Symlinks are followed as cat follows them in the guest, never
		// out of the volume.
		if inside, err = guestfs.Resolve(fsys, inside); err != nil {
			return fmt.Errorf("%s: %w", args[0], err)
		}
		r, err := fsys.Open(inside)
		if err != nil {
			return fmt.Errorf("%s: %w", args[0], err)
		}
		defer r.Close()
		if _, err := io.Copy(os.Stdout, r); err != nil {
			return fmt.Errorf("%s: %w", args[0], err)
		}
		return nil
	}
	return cmd
}

func newFilesGetCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "get /VOLUME/PATH... --to DIR", Short: "restore files or whole directories of a backed-up disk into a directory", Args: usage(cobra.MinimumNArgs(1))}
	f := addFilesFlags(cmd)
	to := cmd.Flags().String("to", "", "directory to write into (it must exist)")
	force := cmd.Flags().Bool("force", false, "replace files, symlinks and nodes already in --to (directories are merged)")
	devices := cmd.Flags().Bool("devices", false, "recreate device nodes and FIFOs (as root; without it they are skipped and listed)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if *to == "" {
			return exitError{2, errors.New("get needs --to DIR")}
		}
		if *devices && os.Geteuid() != 0 {
			return exitError{2, errors.New("--devices needs root (creating a device node does)")}
		}
		g, done, err := openGuest(cmd.Context(), f)
		if err != nil {
			return err
		}
		defer done()
		var total guestfs.GetStats
		for _, a := range args {
			fsys, vol, inside, err := guestPath(g, a)
			if err != nil {
				return err
			}
			if fsys == nil {
				return exitError{2, fmt.Errorf("%s: name a volume (/p1) or a path in one", a)}
			}
			st, err := guestfs.Get(fsys, inside, *to, guestfs.GetOptions{Owners: os.Geteuid() == 0, Overwrite: *force, Devices: *devices})
			total.Files, total.Dirs, total.Links, total.Bytes = total.Files+st.Files, total.Dirs+st.Dirs, total.Links+st.Links, total.Bytes+st.Bytes
			total.Nodes += st.Nodes
			for _, r := range st.Refused {
				total.Refused = append(total.Refused, "/"+vol+"/"+r)
			}
			for _, r := range st.Skipped {
				total.Skipped = append(total.Skipped, "/"+vol+"/"+r)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", a, err)
			}
		}
		if *f.json {
			printJSON(map[string]any{"files": total.Files, "dirs": total.Dirs, "symlinks": total.Links, "nodes": total.Nodes, "bytes": total.Bytes, "refused": total.Refused, "skipped": total.Skipped})
		} else {
			fmt.Printf("restored %d files (%s), %d directories, %d symlinks into %s", total.Files, human(total.Bytes), total.Dirs, total.Links, *to)
			if total.Nodes > 0 {
				fmt.Printf("; recreated %d device nodes and FIFOs", total.Nodes)
			}
			if len(total.Skipped) > 0 {
				fmt.Printf("; skipped %d special files (devices, FIFOs, sockets: --devices recreates devices and FIFOs)", len(total.Skipped))
			}
			fmt.Println()
			for _, r := range total.Refused {
				fmt.Fprintf(os.Stderr, "refused: %s\n", r)
			}
		}
		if len(total.Refused) > 0 {
			return exitError{1, fmt.Errorf("%d entries refused", len(total.Refused))}
		}
		return nil
	}
	return cmd
}
