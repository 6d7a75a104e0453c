package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/spf13/cobra"

	"github.com/strata-backup/strata/contracts"
)

// cmdGC asks the dedup service to collect unreferenced chunks.
func newGCCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "gc", Short: "delete chunks and packs no backup references; compact and recompress packs", Args: usage(cobra.NoArgs)}
	fs := cmd.Flags()
	req := contracts.GCRequest{Schema: contracts.SchemaVersion}
	fs.BoolVar(&req.DryRun, "dry-run", false, "report what would be freed, delete nothing")
	grace := fs.Duration("grace", -1, "spare unreferenced chunks younger than this (default: the service's STRATA_GC_GRACE)")
	repackBelow := fs.Float64("repack-below", -1, "rewrite packs whose live bytes are under this fraction of their size, 0 for none (default: the service's STRATA_GC_REPACK_BELOW, 0.5)")
	fs.BoolVar(&req.Recompress, "recompress", false, "also rewrite packs holding S2 chunks, re-encoding them with zstd (smaller; reads those packs once)")
	var rateLimit sizeFlag
	fs.Var(&rateLimit, "rate-limit", "read at most this much per second while rewriting packs (e.g. 50M; default unlimited)")
	timeout := fs.Duration("timeout", 6*time.Hour, "give up waiting for the dedup service after this long (the collection goes on)")
	asJSON := fs.Bool("json", false, "print JSON")
	progress := fs.Bool("progress", false, "show the collection's progress on stderr even when it is not a terminal")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		if *grace >= 0 {
			req.Grace = grace.String()
		}
		if fs.Changed("repack-below") {
			if *repackBelow < 0 || *repackBelow > 1 {
				return exitError{2, fmt.Errorf("--repack-below %v: want a fraction from 0 to 1", *repackBelow)}
			}
			req.RepackBelow = repackBelow
		}
		req.RateLimit = int64(rateLimit)
		var reply contracts.GCReply
		if err := req.Validate(); err != nil {
			return exitError{2, err}
		}
		c, err := connect(ctx)
		if err != nil {
			return err
		}
		defer c.close()
		if *progress || !*asJSON && isTerminal(os.Stderr) {
			stop := gcProgress(c, os.Stderr)
			defer stop()
		}
		if err := c.request(ctx, contracts.SubjectDedupGC, &req, &reply, *timeout); err != nil {
			return fmt.Errorf("gc: %w", err)
		}
		if *asJSON {
			return printJSON(reply)
		}
		verb := "deleted"
		if reply.DryRun {
			verb = "would delete"
		}
		fmt.Printf("marked %d backups (%d chunks referenced); %d chunk objects: %s %d (%s), %d unreferenced but younger than %s\n",
			reply.Backups, reply.Referenced, reply.Chunks, verb, reply.Deleted, human(reply.FreedBytes), reply.Young, time.Duration(reply.GraceSeconds)*time.Second)
		if reply.Packs > 0 {
			fmt.Printf("%d packs (%s, %s live): %s %d no backup references\n", reply.Packs, human(reply.PackBytes), human(reply.LiveBytes), verb, reply.PacksDeleted)
			rewrite := "rewrote"
			if reply.DryRun {
				rewrite = "would rewrite"
			}
			fmt.Printf("compaction (packs under %.0f%% live%s): %s %d packs", reply.RepackBelow*100, map[bool]string{true: ", or holding S2 chunks"}[req.Recompress], rewrite, reply.PacksRepacked)
			if !reply.DryRun {
				fmt.Printf(" into %d (%d chunks moved, %s read, %s written, %d recompressed saving %s)", reply.PacksWritten, reply.ChunksMoved, human(reply.BytesRead), human(reply.BytesWritten), reply.Recompressed, human(reply.RecompSaved))
			}
			fmt.Println()
			if reply.PacksNotMoved > 0 {
				fmt.Printf("%d packs left whole (a live chunk unreadable: run strata check)\n", reply.PacksNotMoved)
			}
			if reply.DanglingPacks > 0 {
				fmt.Printf("warning: %d referenced packs are neither stored nor moved: run strata check\n", reply.DanglingPacks)
			}
		}
		if reply.Locked > 0 {
			fmt.Printf("%d units (%s) left alone under Object Lock: a run after their retention frees them\n", reply.Locked, human(reply.LockedBytes))
		}
		fmt.Printf("freed %s\n", human(reply.FreedBytes))
		return nil
	}
	return cmd
}

// gcProgress prints the collection's progress reports (phase, done of
// total, rate, ETA) on one line of w until stop.
func gcProgress(c *client, w io.Writer) (stop func()) {
	var mu sync.Mutex
	var phase string
	var since time.Time
	sub, err := c.bus.NC.Subscribe(contracts.SubjectGCProgress, func(m *nats.Msg) {
		var p contracts.GCProgress
		if contracts.Decode(m.Data, &p) != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if p.Phase != phase {
			if phase != "" {
				fmt.Fprintln(w)
			}
			phase, since = p.Phase, time.Now()
		}
		line := fmt.Sprintf("gc: %s %d", p.Phase, p.Done)
		if p.Total > 0 {
			line += fmt.Sprintf("/%d", p.Total)
			if el := time.Since(since); p.Done > 0 && p.Done < p.Total && el > time.Second {
				line += fmt.Sprintf("  ETA %s", (el * time.Duration(p.Total-p.Done) / time.Duration(p.Done)).Round(time.Second))
			}
		}
		if p.Bytes > 0 {
			line += fmt.Sprintf("  %s", human(p.Bytes))
			if el := time.Since(since).Seconds(); el > 1 {
				line += fmt.Sprintf(" (%s/s)", human(int64(float64(p.Bytes)/el)))
			}
		}
		fmt.Fprintf(w, "\r%-78s", line)
	})
	if err != nil {
		return func() {}
	}
	return func() {
		sub.Unsubscribe()
		mu.Lock()
		if phase != "" {
			fmt.Fprintln(w)
		}
		mu.Unlock()
	}
}
