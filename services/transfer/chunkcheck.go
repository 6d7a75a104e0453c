package transfer

import (
	"context"
	"os"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/repo"
)

// checkChunks is a batch of a chunks verification job: download, decode
// and re-hash each chunk; corrupt or missing ones are reported, never
// "fixed" here (the verifier records them and dedup has the next backup
// upload them again).
func (w *worker) checkChunks(ctx context.Context, c *contracts.ChunkCheck) error {
	ids := make([]chunk.Ref, len(c.IDs))
	for i, s := range c.IDs {
		id, err := chunk.ParseID(s)
		if err != nil {
			return err
		}
		ids[i].ID = id
	}
	for _, l := range c.Locs { // validated
		p, err := chunk.ParsePackID(c.Packs[l.Pack])
		if err != nil {
			return err
		}
		ids[l.At].Loc = chunk.Loc{Pack: p, Off: l.Off, Len: l.Len}
	}
	found, err := repo.CheckChunks(ctx, w.rt.Repo, ids, w.cfg.Uploads)
	if err != nil {
		return err
	}
	res := &contracts.ChunkChecked{Schema: contracts.SchemaVersion, Job: c.Job, Index: c.Index, Checked: found.Checked, Bytes: found.Bytes}
	res.Worker, _ = os.Hostname()
	for id, reason := range found.Bad {
		res.Bad = append(res.Bad, contracts.BadChunk{ID: id.String(), Reason: reason})
	}
	if err := w.rt.Bus.Publish(ctx, contracts.ChunkCheckedSubject(c.Job, c.Index), res, ""); err != nil {
		return err
	}
	w.rt.Log.DebugContext(ctx, "chunks checked", "job", c.Job, "batch", c.Index, "checked", res.Checked, "bad", len(res.Bad))
	return nil
}
