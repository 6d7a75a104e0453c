package dedup

import (
	"bytes"
	"context"
	"fmt"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/reach"
	"github.com/strata-backup/strata/pkg/runtime"
)

// PackHoldKey is the hold a dedup instance takes on a condemned pack.
func PackHoldKey(p chunk.PackID) string { return "pack-" + p.String() }

// packs collects the packs of a packed repository that no backup
// references, by the same five steps as chunks (see collect): a pack is
// live when any manifest or running backup's segment result places a
// chunk in it, so the mark holds one entry per pack, not per chunk.
// Packs partly referenced are kept whole (repacking them is not done yet).
func (c *collection) packs(ctx context.Context) error {
	rt, reply := c.rt, c.reply
	live := map[chunk.PackID]struct{}{}
	read := map[string]bool{}
	mark := func() error {
		if err := markResultPacks(ctx, rt, live); err != nil {
			return err
		}
		w := reach.Walker{Catalog: rt.Catalog, Repo: rt.Repo, Skip: func(key string) bool { return read[key] }}
		_, err := w.Walk(ctx, func(_ *contracts.BackupRecord, d contracts.DiskRecord, man *manifest.Manifest) error {
			for _, l := range man.Locs {
				if l.InPack() {
					live[l.Pack] = struct{}{}
				}
			}
			read[d.Manifest] = true
			return nil
		})
		if err != nil {
			return fmt.Errorf("mark packs: %w", err)
		}
		return nil
	}
	if err := mark(); err != nil {
		return err
	}
	type candidate struct {
		p    chunk.PackID
		size int64
	}
	var candidates []candidate
	cutoff := c.lock.Since.Add(-c.grace)
	err := rt.Repo.ListPacks(ctx, 0, 256, func(p chunk.PackID, info objstore.Info) error {
		reply.Packs++
		if _, ok := live[p]; ok {
			return nil
		}
		if info.Modified.After(cutoff) {
			reply.Young++
			return nil
		}
		candidates = append(candidates, candidate{p, info.Size})
		return nil
	})
	if err != nil {
		return err
	}
	if c.dryRun || len(candidates) == 0 {
		for _, cd := range candidates {
			reply.PacksDeleted++
			reply.FreedBytes += cd.size
		}
		return nil
	}

	var list bytes.Buffer
	for _, cd := range candidates {
		list.Write(cd.p[:])
	}
	done, err := c.condemn(ctx, fmt.Sprintf("gc/%s-packs.condemned", c.lock.ID), list.Bytes(), true)
	if err != nil {
		return err
	}
	defer done()
	if err := mark(); err != nil {
		return err
	}
	for _, cd := range candidates {
		if _, ok := live[cd.p]; ok {
			reply.Rescued++
			continue
		}
		claimed, err := rt.GC.Claim(ctx, c.lock.ID, PackHoldKey(cd.p))
		if err != nil {
			return err
		}
		if !claimed {
			reply.Rescued++
			continue
		}
		if err := rt.Repo.DeletePack(ctx, cd.p); err != nil {
			return fmt.Errorf("sweep: %w", err)
		}
		if err := rt.GC.Deleted(ctx, c.lock.ID, PackHoldKey(cd.p)); err != nil {
			return err
		}
		reply.PacksDeleted++
		reply.FreedBytes += cd.size
	}
	c.lock.CondemnedPacks = ""
	return c.setPhase(ctx, "mark", "")
}

// markResultPacks marks the packs named by segment results of running
// backups.
func markResultPacks(ctx context.Context, rt *runtime.Runtime, live map[chunk.PackID]struct{}) error {
	return eachResult(ctx, rt, func(d *contracts.SegmentDone) {
		for _, s := range d.Packs {
			if p, err := chunk.ParsePackID(s); err == nil {
				live[p] = struct{}{}
			}
		}
	})
}
