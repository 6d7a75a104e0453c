package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/repo"
)

// cmdVerify runs a verification now, through the verifier service.
func newVerifyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "verify", Short: "verify a backup (or every backup) now", Args: usage(cobra.NoArgs)}
	fs := cmd.Flags()
	req := contracts.VerifyRequest{Schema: contracts.SchemaVersion}
	fs.StringVar(&req.VM, "vm", "", "VM name")
	fs.StringVar(&req.BackupID, "backup", "", "backup id, or latest")
	fs.BoolVar(&req.All, "all", false, "every backup of every VM (mode chunks: each chunk read once)")
	mode := fs.String("mode", string(contracts.VerifyChunks), "stored, trivial, certify, chunks or restore-test")
	asJSON := fs.Bool("json", false, "print JSON")
	timeout := fs.Duration("timeout", time.Hour, "give up waiting for the verifier after this long")
	addRepoFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		req.Mode = contracts.VerifyMode(*mode)
		if repoFlag != "" {
			reply, err := verifyFromRepo(ctx, &req)
			if err != nil {
				return err
			}
			return printVerify(reply, *asJSON)
		}
		c, err := connect(ctx)
		if err != nil {
			return err
		}
		defer c.close()
		if req.BackupID == "latest" {
			rec, err := c.cat.Latest(ctx, req.VM)
			if err != nil {
				return err
			}
			req.BackupID = rec.ID
		}
		if err := req.Validate(); err != nil {
			return exitError{2, err}
		}
		var reply contracts.VerifyReply
		if err := c.request(ctx, contracts.SubjectVerify, &req, &reply, *timeout); err != nil {
			return fmt.Errorf("verify: %w", err)
		}
		return printVerify(&reply, *asJSON)
	}
	return cmd
}

// printVerify prints a verification's reply; exit 1 when it failed.
func printVerify(reply *contracts.VerifyReply, asJSON bool) error {
	if asJSON {
		printJSON(reply)
	} else {
		fmt.Printf("%s verification: %d chunks (%s) read back in %.1fs\n", reply.Mode, reply.ChunksChecked, human(reply.BytesChecked), reply.Seconds)
		for _, d := range reply.Digests {
			fmt.Printf("  disk %d digest: source %s, stored %s\n", d.Disk, d.Source, d.Stored)
		}
		for _, b := range reply.BadChunks {
			fmt.Printf("  bad chunk %s: %s\n", b.ID, b.Reason)
		}
		for _, b := range reply.Damaged {
			fmt.Printf("  damaged backup %s of %s\n", b.BackupID, b.VM)
		}
	}
	if !reply.OK {
		return exitError{1, fmt.Errorf("%s", reply.Problem)}
	}
	if !asJSON {
		fmt.Println("ok")
	}
	return nil
}

// verifyFromRepo runs the chunks verification in this process against the
// repository --repo names, with no services: every chunk of the backup
// (or of every backup) read back and re-hashed once, and each disk's chunk
// map checked against its certify digest where one was recorded. Nothing
// is written: bad chunks and damaged backups are reported, not marked.
func verifyFromRepo(ctx context.Context, req *contracts.VerifyRequest) (*contracts.VerifyReply, error) {
	if req.Mode != contracts.VerifyChunks {
		return nil, exitError{2, fmt.Errorf("--repo verifies with --mode chunks (%s needs the services or the source)", req.Mode)}
	}
	start := time.Now()
	var recs []*contracts.BackupRecord
	var r *repo.Repository
	if req.All {
		store, rr, err := openRepoFlag(ctx)
		if err != nil {
			return nil, err
		}
		all, err := listFromRepo(ctx, store, rr, "")
		if err != nil {
			return nil, err
		}
		for _, rec := range all {
			if rec.State == contracts.StateVerified || rec.State == contracts.StateCommitted {
				recs = append(recs, rec)
			}
		}
		r = rr
	} else {
		if req.VM == "" || req.BackupID == "" {
			return nil, exitError{2, errors.New("verify needs --vm and --backup, or --all")}
		}
		rec, rr, done, err := openBackup(ctx, req.VM, req.BackupID)
		if err != nil {
			return nil, err
		}
		defer done()
		recs, r = []*contracts.BackupRecord{rec}, rr
	}
	reply := &contracts.VerifyReply{Schema: contracts.SchemaVersion, Mode: req.Mode}
	bad := map[chunk.ID]string{}
	seen := map[chunk.ID]bool{}
	var problems []string
	for _, rec := range recs {
		damaged := false
		for _, d := range rec.Disks {
			man, err := r.GetManifest(ctx, d.Manifest)
			if err != nil {
				problems = append(problems, fmt.Sprintf("backup %s of %s, %s: %v", rec.ID, rec.VM, d.Name, err))
				damaged = true
				continue
			}
			var fresh []chunk.Ref
			for _, ref := range man.Data() {
				if !seen[ref.ID] {
					seen[ref.ID] = true
					fresh = append(fresh, ref)
				}
			}
			res, err := repo.CheckChunks(ctx, r, fresh, 8)
			if err != nil {
				return nil, err
			}
			reply.ChunksChecked += res.Checked
			reply.BytesChecked += res.Bytes
			for id, why := range res.Bad {
				bad[id] = why
			}
			nbad := 0
			for _, ref := range man.Data() {
				if _, ok := bad[ref.ID]; ok {
					nbad++
				}
			}
			switch {
			case nbad > 0:
				problems = append(problems, fmt.Sprintf("backup %s of %s, %s: %d bad chunks", rec.ID, rec.VM, d.Name, nbad))
				damaged = true
			case d.Digest != "" && man.Digest() != d.Digest:
				problems = append(problems, fmt.Sprintf("backup %s of %s, %s: chunk map digest %s… differs from the certified %s…", rec.ID, rec.VM, d.Name, man.Digest()[:12], d.Digest[:min(12, len(d.Digest))]))
				damaged = true
			}
		}
		if damaged {
			reply.Damaged = append(reply.Damaged, contracts.BackupRef{VM: rec.VM, BackupID: rec.ID})
		}
	}
	for id, why := range bad {
		reply.BadChunks = append(reply.BadChunks, contracts.BadChunk{ID: id.String(), Reason: why})
	}
	reply.OK = len(problems) == 0
	if !reply.OK {
		reply.Problem = "chunks verification: " + strings.Join(problems[:min(3, len(problems))], "; ")
		if len(problems) > 3 {
			reply.Problem += fmt.Sprintf("; and %d more", len(problems)-3)
		}
	}
	reply.Seconds = time.Since(start).Seconds()
	return reply, nil
}

// cmdCheck reports the repository's health: bad chunks (each read again;
// repaired ones cleared) and the backups they damage. Exit 1 when damaged.
func newCheckCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "check", Short: "check the repository: every referenced chunk stored, every manifest readable (--read-data: every chunk re-hashed)", Args: usage(cobra.NoArgs)}
	fs := cmd.Flags()
	req := contracts.CheckRequest{Schema: contracts.SchemaVersion}
	fs.BoolVar(&req.ReadData, "read-data", false, "also download and re-hash every referenced chunk (on the transfer workers)")
	subset := fs.String("read-data-subset", "", "download and re-hash a random N% of the referenced chunks, e.g. 10%")
	fs.IntVar(&req.Shards, "shards", 0, "passes over the chunk-id space (power of two; default: the verifier's STRATA_CHECK_SHARDS)")
	asJSON := fs.Bool("json", false, "print JSON")
	timeout := fs.Duration("timeout", 6*time.Hour, "give up waiting for the verifier after this long")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		if *subset != "" {
			p, err := strconv.ParseFloat(strings.TrimSuffix(*subset, "%"), 64)
			if err != nil || p <= 0 || p > 100 {
				return exitError{2, fmt.Errorf("--read-data-subset %q: want a percentage such as 10%%", *subset)}
			}
			req.ReadDataPercent = p
		}
		var reply contracts.CheckReply
		if err := call(ctx, "check", contracts.SubjectCheck, &req, &reply, *timeout); err != nil {
			return err
		}
		if *asJSON {
			printJSON(reply)
		} else {
			fmt.Printf("%d backups; %d chunks referenced, %d stored, %d missing", reply.Backups, reply.Referenced, reply.Listed, reply.Missing)
			if reply.ChunksRead > 0 {
				fmt.Printf("; %d read back (%s)", reply.ChunksRead, human(reply.BytesRead))
			}
			fmt.Printf(" in %.1fs\n", reply.Seconds)
			for _, id := range reply.Repaired {
				fmt.Printf("repaired chunk %s\n", id)
			}
			for _, b := range reply.BadChunks {
				fmt.Printf("bad chunk %s (found %s): %s\n", b.ID, b.FoundAt.Local().Format(time.DateTime), b.Reason)
			}
			for _, m := range reply.BadManifests {
				fmt.Printf("unreadable manifest of backup %s of %s, disk %d: %s\n", m.BackupID, m.VM, m.Disk, m.Reason)
			}
			for _, b := range reply.Damaged {
				fmt.Printf("damaged backup %s of %s\n", b.BackupID, b.VM)
			}
			for _, b := range reply.Failed {
				fmt.Printf("newest backup of %s failed: %s: %s\n", b.VM, b.BackupID, b.Reason)
			}
			for _, b := range reply.FailedIgnored {
				fmt.Printf("ignored: %s has no policy and no backup that worked; its newest attempt %s failed: %s (strata rm --vm %s --failed removes it)\n", b.VM, b.BackupID, b.Reason, b.VM)
			}
			if reply.Healthy {
				fmt.Println("healthy")
			}
		}
		if !reply.Healthy {
			return exitError{1, fmt.Errorf("not healthy: %d bad chunks, %d unreadable manifests, %d damaged backups; the newest backup of %d VMs failed",
				len(reply.BadChunks), len(reply.BadManifests), len(reply.Damaged), len(reply.Failed))}
		}
		return nil
	}
	return cmd
}
