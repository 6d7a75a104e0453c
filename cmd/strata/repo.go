package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/strata-backup/strata/contracts"
)

func newRepoCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "repo", Short: "the repository: what it stores and what maintenance would free", Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			return exitError{2, fmt.Errorf("repo needs a subcommand: stats")}
		}}
	st := &cobra.Command{Use: "stats", Short: "logical and stored bytes, live and dead bytes, codecs, dedup and compression ratios, the last gc", Args: usage(cobra.NoArgs)}
	asJSON := st.Flags().Bool("json", false, "print JSON")
	timeout := st.Flags().Duration("timeout", 30*time.Minute, "give up waiting for the dedup service after this long (it reads every manifest and every pack's trailer)")
	st.RunE = func(cmd *cobra.Command, args []string) error {
		var r contracts.RepoStatsReply
		if err := call(cmd.Context(), "repo stats", contracts.SubjectDedupStats, &contracts.RepoStatsRequest{Schema: contracts.SchemaVersion}, &r, *timeout); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(r)
		}
		fmt.Printf("%d backups, %s logical; stored %s (packs %s in %d, loose chunks %s in %d)\n",
			r.Backups, human(r.LogicalBytes), human(r.PackBytes+r.LooseBytes), human(r.PackBytes), r.Packs, human(r.LooseBytes), r.LooseChunks)
		fmt.Printf("live in packs: %s in %d chunks (dedup %.2fx, compression %.2fx); dead: %s\n",
			human(r.LiveBytes), r.LiveChunks, r.DedupRatio, r.CompressionRatio, human(r.DeadBytes))
		fmt.Printf("packs under %.0f%% live: %d, holding %s dead (the next gc compacts them)\n", r.RepackBelow*100, r.PacksBelow, human(r.BelowDeadBytes))
		var codecs []string
		for _, c := range slices.Sorted(maps.Keys(r.LiveByCodec)) {
			codecs = append(codecs, fmt.Sprintf("%s %s", c, human(r.LiveByCodec[c])))
		}
		if len(codecs) > 0 {
			hint := ""
			if r.LiveByCodec["s2"] > 0 || r.LiveByCodec["unknown"] > 0 {
				hint = " (gc --recompress re-encodes S2 with zstd)"
			}
			fmt.Printf("live by codec: %s%s\n", strings.Join(codecs, ", "), hint)
		}
		if r.MovedRecords > 0 {
			fmt.Printf("moved records of compacted packs: %d\n", r.MovedRecords)
		}
		if g := r.LastGC; g != nil {
			when := "at an unknown time"
			if r.LastGCAt != nil {
				when = fmt.Sprintf("%s (%s ago)", r.LastGCAt.Local().Format("2006-01-02 15:04"), time.Since(*r.LastGCAt).Round(time.Minute))
			}
			fmt.Printf("last gc %s: freed %s; %d chunks and %d packs deleted, %d packs rewritten (%d chunks recompressed)\n",
				when, human(g.FreedBytes), g.Deleted, g.PacksDeleted, g.PacksRepacked, g.Recompressed)
		} else {
			fmt.Println("no gc has finished yet")
		}
		return nil
	}
	cmd.AddCommand(st)
	return cmd
}
