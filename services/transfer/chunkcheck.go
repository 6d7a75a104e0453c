package transfer

import (
	"context"
	"errors"
	"os"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/objstore"
)

// checkChunks is a batch of a chunks verification job: download, decode
// and re-hash each chunk; corrupt or missing ones are reported, never
// "fixed" here (the verifier records them and dedup has the next backup
// upload them again).
func (w *worker) checkChunks(ctx context.Context, c *contracts.ChunkCheck) error {
	res := &contracts.ChunkChecked{Schema: contracts.SchemaVersion, Job: c.Job, Index: c.Index}
	res.Worker, _ = os.Hostname()
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(1, w.cfg.Uploads))
	for _, s := range c.IDs {
		id, err := chunk.ParseID(s)
		if err != nil {
			return err
		}
		g.Go(func() error {
			data, err := w.rt.Repo.Chunks.GetChunk(gctx, id)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, chunk.ErrCorrupt), errors.Is(err, objstore.ErrNotFound):
				res.Bad = append(res.Bad, contracts.BadChunk{ID: s, Reason: err.Error()})
			case err != nil:
				return err
			default:
				res.Checked++
				res.Bytes += int64(len(data))
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if err := w.rt.Bus.Publish(ctx, contracts.ChunkCheckedSubject(c.Job, c.Index), res, ""); err != nil {
		return err
	}
	w.rt.Log.DebugContext(ctx, "chunks checked", "job", c.Job, "batch", c.Index, "checked", res.Checked, "bad", len(res.Bad))
	return nil
}
