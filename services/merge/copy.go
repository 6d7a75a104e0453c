package merge

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/copies"
	"github.com/strata-backup/strata/pkg/mirror"
	"github.com/strata-backup/strata/pkg/policy"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/runtime"
)

// copier runs policies' copies: after a verified backup of a VM whose
// policy names a copy target, every backup of the VM the target lacks is
// copied there, then the copy's retention applied.
type copier struct {
	rt       *runtime.Runtime
	cfg      Config
	policies *policy.Store
	mu       sync.Mutex
	targets  map[string]*repo.Repository // opened targets, by URL
}

func (c *copier) target(ctx context.Context, spec string) (*repo.Repository, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.targets[spec]; ok {
		return t, nil
	}
	t, err := copies.Open(ctx, c.rt.Repo, c.cfg.Common, c.cfg.Target, spec)
	if err != nil {
		return nil, err
	}
	c.targets[spec] = t
	return t, nil
}

func (c *copier) afterVerified(ctx context.Context, o *contracts.BackupOutcome) error {
	p, ok, err := c.policies.Get(ctx, o.VM)
	if err != nil || !ok || p.CopyTo == "" {
		return err
	}
	to, err := c.target(ctx, p.CopyTo)
	if err != nil {
		return fmt.Errorf("copy %s: %w", o.VM, err)
	}
	recs, err := c.rt.Catalog.List(ctx, o.VM)
	if err != nil {
		return err
	}
	reply, err := copies.Run(ctx, c.rt.Repo, to, recs, copies.Options{VerifiedOnly: true})
	if err != nil {
		c.rt.Log.ErrorContext(ctx, "copy to the policy's target failed", "vm", o.VM, "to", p.CopyTo, "err", err)
		return err
	}
	pruned, locked, err := copies.Prune(ctx, to, o.VM, copies.RulesOf(p.CopyKeep))
	if err != nil {
		return err
	}
	c.rt.Log.InfoContext(ctx, "copied", "vm", o.VM, "to", p.CopyTo, "backups", len(reply.Copied), "already_there", reply.AlreadyThere,
		"objects", reply.Objects, "bytes", reply.Bytes, "mb_per_s", reply.MBPerSec, "copy_pruned", len(pruned), "copy_locked", len(locked))
	return nil
}

// followMirror brings the VM's standby mirror, if it has one, to the
// backup just verified. A target changed behind Strata's back is recorded
// (the mirror waits for strata mirror reseed), not retried.
func followMirror(ctx context.Context, rt *runtime.Runtime, s *mirror.Store, o *contracts.BackupOutcome) error {
	m, res, err := mirror.Sync(ctx, rt.Repo, s, rt.Catalog, o.VM, o.BackupID, false)
	switch {
	case errors.Is(err, mirror.ErrNoMirror):
		return nil
	case errors.Is(err, mirror.ErrChanged):
		rt.Log.ErrorContext(ctx, "mirror refused", "vm", o.VM, "target", m.Target, "err", err)
		return nil
	case err != nil:
		rt.Log.ErrorContext(ctx, "mirror update failed", "vm", o.VM, "err", err)
		return err
	}
	rt.Log.InfoContext(ctx, "mirror updated", "vm", o.VM, "target", m.Target, "point", m.Point,
		"bytes_written", res.BytesWritten, "chunks_written", res.ChunksWritten, "check", res.Check)
	return nil
}
