package merge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/metrics"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/policy"
	"github.com/strata-backup/strata/pkg/retention"
	"github.com/strata-backup/strata/pkg/runtime"
)

// prune applies retention rules to one VM. Every backup's manifest is a
// complete chunk map, so pruning is metadata only and never rewrites a
// newer backup: there is nothing to fold. Each backup is removed in the
// order manifests → record object → catalog entry: until the last step the
// backup stays listed, so a crash at any step leaves every other backup
// restorable and the next prune finishes the job (deletes are idempotent).
// Chunks are left to garbage collection.
// pruner removes backups: what it needs of the catalog and the store.
type pruner struct {
	cat interface {
		List(ctx context.Context, vm string) ([]*contracts.BackupRecord, error)
		Get(ctx context.Context, vm, id string) (*contracts.BackupRecord, uint64, error)
		DeleteCopy(ctx context.Context, vm, id string) error
		Delete(ctx context.Context, vm, id string) error
	}
	store interface {
		Delete(ctx context.Context, key string) error
	}
	// lockedUntil: before this date a backup whose record was last
	// written at written is under Object Lock (zero: no lock).
	lockedUntil func(written time.Time) time.Time
	hooks       Hooks
	log         *slog.Logger
}

// errLocked: a backup still under Object Lock; its deletion is refused.
type errLocked struct {
	id    string
	until time.Time
}

func (e *errLocked) Error() string {
	return fmt.Sprintf("backup %s is under Object Lock until %s", e.id, e.until.UTC().Format(time.RFC3339))
}

// locked says whether r may not be deleted yet, and until when.
func (p *pruner) locked(r *contracts.BackupRecord) *errLocked {
	if p.lockedUntil == nil {
		return nil
	}
	if until := p.lockedUntil(r.UpdatedAt); time.Now().Before(until) {
		return &errLocked{id: r.ID, until: until}
	}
	return nil
}

func (p *pruner) prune(ctx context.Context, vm string, rules retention.Rules, dryRun bool) (*contracts.PruneReply, error) {
	recs, err := p.cat.List(ctx, vm)
	if err != nil {
		return nil, err
	}
	keep, drop := retention.Plan(recs, rules)
	reply := &contracts.PruneReply{Schema: contracts.SchemaVersion, DryRun: dryRun, Kept: []string{}, Pruned: []string{}}
	var soonest time.Time
	for _, r := range keep {
		reply.Kept = append(reply.Kept, r.ID)
		if p.lockedUntil != nil {
			if u := p.lockedUntil(r.UpdatedAt); soonest.IsZero() || u.Before(soonest) {
				soonest = u
			}
		}
	}
	// A backup kept longer than it is locked can be deleted by whoever
	// holds the bucket's keys once its lock ends: the operator is warned
	// (StrataLockExpiringSoon) before.
	if !soonest.IsZero() && !dryRun {
		metrics.LockSoonest.WithLabelValues(vm).Set(float64(soonest.UnixMilli()) / 1000)
	}
	for _, r := range drop {
		if l := p.locked(r); l != nil {
			reply.Locked = append(reply.Locked, contracts.LockedBackup{ID: r.ID, Until: l.until})
			continue
		}
		if !dryRun {
			if err := p.pruneOne(ctx, r); err != nil {
				var le *errLocked
				if errors.As(err, &le) {
					reply.Locked = append(reply.Locked, contracts.LockedBackup{ID: r.ID, Until: le.until})
					continue
				}
				return nil, fmt.Errorf("prune %s: %w", r.ID, err)
			}
		}
		reply.Pruned = append(reply.Pruned, r.ID)
	}
	if !dryRun && len(drop) > 0 {
		p.log.InfoContext(ctx, "pruned", "vm", vm, "pruned", len(reply.Pruned), "kept", len(keep), "locked", len(reply.Locked))
	}
	return reply, nil
}

// pruneOne deletes one backup. Under Object Lock a backup whose lock has
// not passed is refused first, with its date (nothing deleted); a store
// that still refuses (an object written later than the record says) stops
// before the catalog entry goes, so the backup stays listed and whole.
func (p *pruner) pruneOne(ctx context.Context, r *contracts.BackupRecord) error {
	if l := p.locked(r); l != nil {
		return l
	}
	lockedErr := func(err error) error {
		var le *objstore.LockedError
		if errors.As(err, &le) {
			return &errLocked{id: r.ID, until: le.Until}
		}
		return err
	}
	step := func(name string) error {
		if p.hooks != nil {
			return p.hooks.BeforePruneStep(name, r.ID)
		}
		return nil
	}
	if err := step("manifests"); err != nil {
		return err
	}
	for _, d := range r.Disks {
		if d.Manifest != "" {
			if err := p.store.Delete(ctx, d.Manifest); err != nil {
				return lockedErr(err)
			}
		}
	}
	if err := step("record"); err != nil {
		return err
	}
	if err := p.cat.DeleteCopy(ctx, r.VM, r.ID); err != nil {
		return lockedErr(err)
	}
	if err := step("catalog"); err != nil {
		return err
	}
	return p.cat.Delete(ctx, r.VM, r.ID)
}

// policyRules reads a VM's retention rules from its policy.
func policyRules(ctx context.Context, rt *runtime.Runtime, vm string) (retention.Rules, bool, error) {
	policies, err := policy.Open(ctx, rt.Bus.JS)
	if err != nil {
		return retention.Rules{}, false, err
	}
	p, ok, err := policies.Get(ctx, vm)
	if err != nil || !ok {
		return retention.Rules{}, false, err
	}
	return retention.FromPolicy(p), true, nil
}

// remove deletes backups that ended failed or skipped, in the same crash-
// safe order as pruning. A backup that is running or good is refused:
// those leave by cancel and by retention.
func (p *pruner) remove(ctx context.Context, req *contracts.RemoveRequest) (*contracts.RemoveReply, error) {
	var recs []*contracts.BackupRecord
	if req.AllFailed {
		all, err := p.cat.List(ctx, req.VM)
		if err != nil {
			return nil, err
		}
		for _, r := range all {
			if r.State == contracts.StateFailed || r.State == contracts.StateSkipped {
				recs = append(recs, r)
			}
		}
	}
	for _, id := range req.BackupIDs {
		r, _, err := p.cat.Get(ctx, req.VM, id)
		if err != nil {
			return nil, err
		}
		if r.State != contracts.StateFailed && r.State != contracts.StateSkipped {
			return nil, fmt.Errorf("backup %s of %s is %s: only failed or skipped backups are removed (retention prunes good ones; strata cancel stops a running one)", id, req.VM, r.State)
		}
		recs = append(recs, r)
	}
	reply := &contracts.RemoveReply{Schema: contracts.SchemaVersion, Removed: []string{}}
	for _, r := range recs {
		if err := p.pruneOne(ctx, r); err != nil {
			return nil, fmt.Errorf("remove %s: %w", r.ID, err)
		}
		reply.Removed = append(reply.Removed, r.ID)
	}
	if len(recs) > 0 {
		p.log.InfoContext(ctx, "removed failed backups", "vm", req.VM, "removed", len(recs))
	}
	return reply, nil
}
