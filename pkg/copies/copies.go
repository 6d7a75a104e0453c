// Package copies keeps a second repository: it copies the backups the
// target lacks (repo.Copier for the content, the record last) and applies
// the copy's own retention there. strata copy and the merge service (a
// policy's copy target) both run it; it needs the two repositories, never
// NATS.
package copies

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/time/rate"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/catalog"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/retention"
	"github.com/strata-backup/strata/pkg/runtime"
)

// Target is the target repository's own settings (STRATA_COPY_*): a second
// site has its own credentials and, often, its own lock.
type Target struct {
	AccessKey  string               `envconfig:"COPY_S3_ACCESS_KEY"`
	SecretKey  string               `envconfig:"COPY_S3_SECRET_KEY"`
	ObjectLock string               `envconfig:"COPY_S3_OBJECT_LOCK"`
	LockDays   runtime.LockDuration `envconfig:"COPY_LOCK_DAYS" default:"30"`
	LockStep   runtime.LockDuration `envconfig:"COPY_LOCK_STEP"`
}

// Open opens (creating it when empty) the copy of from in the repository
// the URL spec names (dir:///path or s3://bucket/prefix?endpoint=…), with
// base's other settings and t's credentials and lock.
func Open(ctx context.Context, from *repo.Repository, base runtime.Common, t Target, spec string) (*repo.Repository, error) {
	dst := base
	// The copy's own credential, never the service's file for this
	// repository.
	dst.S3AccessKey, dst.S3SecretKey, dst.S3CredentialsFile = t.AccessKey, t.SecretKey, ""
	dst.S3ObjectLock, dst.LockDays, dst.LockStep = t.ObjectLock, t.LockDays, t.LockStep
	dst.S3Prefix, dst.S3Endpoint = "", ""
	if err := dst.UseRepo(spec); err != nil {
		return nil, fmt.Errorf("copy target %w", err)
	}
	var lock *repo.LockPolicy
	if t.ObjectLock != "" {
		var err error
		if lock, err = repo.NewLockPolicy(t.ObjectLock, time.Duration(t.LockDays), time.Duration(t.LockStep)); err != nil {
			return nil, fmt.Errorf("STRATA_COPY_S3_OBJECT_LOCK: %w", err)
		}
	}
	store, err := dst.OpenStore(ctx)
	if err != nil {
		return nil, fmt.Errorf("copy target %s: %w", spec, err)
	}
	return from.OpenCopy(ctx, store, lock)
}

// Options tune a copy.
type Options struct {
	VerifiedOnly bool          // only verified backups (else committed ones too)
	Parallel     int           // objects at once (default 8)
	Limit        *rate.Limiter // bytes per second read; nil: unlimited
	// Copied, if set, is told of each backup copied.
	Copied func(r *contracts.BackupRecord, st repo.CopyStats)
}

// Run copies the backups of recs the target lacks, oldest first: what
// each needs, then its record. A backup whose record the target has is
// skipped with one HEAD; so is every object the target has.
func Run(ctx context.Context, from, to *repo.Repository, recs []*contracts.BackupRecord, o Options) (*contracts.CopyReply, error) {
	reply := &contracts.CopyReply{From: from.Store.String(), To: to.Store.String(), Copied: []string{}}
	c := &repo.Copier{From: from, To: to, Parallel: o.Parallel, Limit: o.Limit}
	start := time.Now()
	for _, r := range recs {
		if r.State != contracts.StateVerified && (o.VerifiedOnly || r.State != contracts.StateCommitted) {
			continue
		}
		reply.Backups++
		key := catalog.CopyKey(from, r.VM, r.ID)
		if _, err := to.Store.Stat(ctx, key); err == nil {
			reply.AlreadyThere++
			continue
		} else if !errors.Is(err, objstore.ErrNotFound) {
			return reply, fmt.Errorf("copy target %s: %w", to.Store, err)
		}
		var mans []string
		for _, d := range r.Disks {
			mans = append(mans, d.Manifest)
		}
		if err := c.CopyBackup(ctx, mans); err != nil {
			return reply, fmt.Errorf("copy backup %s of %s: %w", r.ID, r.VM, err)
		}
		// The record last: a record at the target says all it needs is there.
		if err := c.CopyObject(ctx, key, func(b []byte) error { return catalog.CheckCopy(from, key, b) }); err != nil {
			return reply, fmt.Errorf("copy backup %s of %s: %w", r.ID, r.VM, err)
		}
		reply.Copied = append(reply.Copied, r.ID)
		if o.Copied != nil {
			o.Copied(r, c.Stats())
		}
	}
	st := c.Stats()
	reply.Objects, reply.Bytes, reply.ObjectsPresent, reply.ChunksChecked, reply.LockExtended = st.Objects, st.Bytes, st.Present, st.Chunks, st.Extended
	reply.Seconds = time.Since(start).Seconds()
	if reply.Seconds > 0 {
		reply.MBPerSec = float64(reply.Bytes) / 1e6 / reply.Seconds
	}
	return reply, nil
}

// Prune applies rules to vm's backups in the copy to: the dropped ones
// lose their manifests, then their record (the order prune keeps at the
// primary: a backup stays listed until its last object goes). One under
// Object Lock is kept and reported. Packs stay (the copy has no garbage
// collector yet: run strata gc against it as a deployment of its own).
func Prune(ctx context.Context, to *repo.Repository, vm string, rules retention.Rules) (pruned []string, locked []contracts.LockedBackup, err error) {
	if rules.None() {
		return nil, nil, nil
	}
	recs, _, err := catalog.ListCopies(ctx, to.Store, to, vm)
	if err != nil {
		return nil, nil, err
	}
	_, drop := retention.Plan(recs, rules)
	for _, r := range drop {
		if until := to.LockedUntil(r.UpdatedAt); time.Now().Before(until) {
			locked = append(locked, contracts.LockedBackup{ID: r.ID, Until: until})
			continue
		}
		err := func() error {
			for _, d := range r.Disks {
				if d.Manifest != "" {
					if err := to.Store.Delete(ctx, d.Manifest); err != nil {
						return err
					}
				}
			}
			return to.Store.Delete(ctx, catalog.CopyKey(to, r.VM, r.ID))
		}()
		var le *objstore.LockedError
		switch {
		case errors.As(err, &le):
			locked = append(locked, contracts.LockedBackup{ID: r.ID, Until: le.Until})
		case err != nil:
			return pruned, locked, fmt.Errorf("prune copy %s of %s: %w", r.ID, vm, err)
		default:
			pruned = append(pruned, r.ID)
		}
	}
	return pruned, locked, nil
}

// RulesOf is a policy's copy retention.
func RulesOf(k *contracts.Keep) retention.Rules {
	if k == nil {
		return retention.Rules{}
	}
	return retention.Rules{Last: k.Last, Hourly: k.Hourly, Daily: k.Daily, Weekly: k.Weekly, Monthly: k.Monthly, Yearly: k.Yearly}
}
