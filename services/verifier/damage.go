package verifier

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/catalog"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/metrics"
	"github.com/strata-backup/strata/pkg/reach"
	"github.com/strata-backup/strata/pkg/repo"
)

// recordDamage stores each bad chunk in the catalog bucket (dedup then
// treats it as missing, so the next backup that holds those bytes uploads
// them again) and marks every backup that references one damaged, in the
// catalog and in its S3 record. It returns those backups.
func (v *verifier) recordDamage(ctx context.Context, bad map[chunk.ID]string) ([]contracts.BackupRef, error) {
	now := time.Now().UTC()
	for id, reason := range bad {
		if err := v.bad.Mark(ctx, contracts.BadChunk{ID: id.String(), Reason: reason, FoundAt: now}); err != nil {
			return nil, err
		}
		v.log.ErrorContext(ctx, "bad chunk", "chunk", id.String(), "reason", reason)
	}
	damaged, _, _, err := v.refreshDamage(ctx, bad)
	return damaged, err
}

// refreshDamage sets every committed backup's damaged flag from the set
// of bad chunks: on when it references one, off otherwise. Reading every
// manifest is what a repository check costs; it runs only when a bad
// chunk is found or on `strata check`, never on the backup path.
// newestFailed lists the VMs whose newest backup failed (recs oldest
// first): a failure already followed by a good backup is history, not a
// health problem. Such a VM is unprotected — failed — when it is meant to
// be backed up: it has a policy, or an earlier backup that worked (its
// newest point in time is missing). A VM with neither (a one-off attempt
// with a mistyped name or source, never retried) is listed apart, as
// ignored: it does not make the repository unhealthy.
func newestFailed(recs []*contracts.BackupRecord, hasPolicy func(vm string) bool) (failed, ignored []contracts.FailedBackup) {
	newest := map[string]*contracts.BackupRecord{}
	protected := map[string]bool{} // had a backup that worked
	var order []string
	for _, r := range recs {
		if !r.State.Final() {
			continue
		}
		if _, ok := newest[r.VM]; !ok {
			order = append(order, r.VM)
		}
		newest[r.VM] = r
		if r.State == contracts.StateVerified {
			protected[r.VM] = true
		}
	}
	for _, vm := range order {
		r := newest[vm]
		if r.State != contracts.StateFailed {
			continue
		}
		f := contracts.FailedBackup{VM: r.VM, BackupID: r.ID, Reason: r.Error}
		if protected[vm] || hasPolicy(vm) {
			failed = append(failed, f)
		} else {
			ignored = append(ignored, f)
		}
	}
	return failed, ignored
}

func (v *verifier) refreshDamage(ctx context.Context, bad map[chunk.ID]string) (damaged []contracts.BackupRef, failed []contracts.FailedBackup, backups int, err error) {
	scan, err := v.scanDamage(ctx, bad, len(bad) > 0)
	if err != nil {
		return nil, nil, 0, err
	}
	return scan.damaged, scan.failed, scan.backups, nil
}

// damageScan is what one pass over the catalog found.
type damageScan struct {
	damaged      []contracts.BackupRef
	failed       []contracts.FailedBackup
	ignored      []contracts.FailedBackup // see newestFailed
	badManifests []contracts.BadManifest
	backups      int
}

// scanDamage sets every committed backup's damaged flag: on when it
// references a bad chunk or one of its manifests cannot be read (read only
// when readManifests), off otherwise.
func (v *verifier) scanDamage(ctx context.Context, bad map[chunk.ID]string, readManifests bool) (*damageScan, error) {
	recs, err := v.cat.List(ctx, "")
	if err != nil {
		return nil, err
	}
	policies, err := v.policyNames(ctx)
	if err != nil {
		return nil, err
	}
	scan := &damageScan{backups: len(recs)}
	scan.failed, scan.ignored = newestFailed(recs, func(vm string) bool { return policies[vm] })
	hits := map[string]bool{} // catalog key
	if readManifests {
		w := reach.Walker{Catalog: v.cat, Repo: v.repo, Records: recs, Keep: reach.Committed,
			BadManifest: func(r *contracts.BackupRecord, d contracts.DiskRecord, err error) error {
				if repo.IsBadManifest(err) {
					hits[contracts.CatalogKey(r.VM, r.ID)] = true
					scan.badManifests = append(scan.badManifests, contracts.BadManifest{VM: r.VM, BackupID: r.ID, Disk: d.Index, Key: d.Manifest, Reason: err.Error()})
					return nil
				}
				return err // the store did not answer: no finding
			}}
		_, err := w.Walk(ctx, func(r *contracts.BackupRecord, _ contracts.DiskRecord, man *manifest.Manifest) error {
			key := contracts.CatalogKey(r.VM, r.ID)
			if hits[key] || len(bad) == 0 {
				return nil
			}
			for _, r := range man.Data() {
				if _, ok := bad[r.ID]; ok {
					hits[key] = true
					break
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("damage scan: %w", err)
		}
	}
	for _, r := range recs {
		if !reach.Committed(r) {
			continue
		}
		hit := hits[contracts.CatalogKey(r.VM, r.ID)]
		if hit {
			scan.damaged = append(scan.damaged, contracts.BackupRef{VM: r.VM, BackupID: r.ID})
		}
		if hit == r.Damaged {
			continue
		}
		_, err := v.cat.SetDamaged(ctx, r.VM, r.ID, hit)
		if errors.Is(err, catalog.ErrNotFound) {
			continue // pruned meanwhile
		}
		if err != nil {
			return nil, err
		}
		v.log.WarnContext(ctx, "backup damage changed", "vm", r.VM, "backup", r.ID, "damaged", hit)
	}
	return scan, nil
}

// badChunks reads the bad-chunk entries of the catalog bucket.
func (v *verifier) badChunks(ctx context.Context) ([]contracts.BadChunk, error) {
	return v.bad.List(ctx)
}

// verifyNow is `strata verify`: one backup in one mode, or a chunks job
// over every committed backup (each chunk read once).
func (v *verifier) verifyNow(ctx context.Context, req *contracts.VerifyRequest) (*contracts.VerifyReply, error) {
	var recs []*contracts.BackupRecord
	if req.All && req.Mode == contracts.VerifyChunks {
		return v.chunkJob(ctx, nil)
	}
	if req.All {
		all, err := v.cat.List(ctx, "")
		if err != nil {
			return nil, err
		}
		for _, r := range all {
			if r.State == contracts.StateVerified || r.State == contracts.StateCommitted {
				recs = append(recs, r)
			}
		}
	} else {
		r, _, err := v.cat.Get(ctx, req.VM, req.BackupID)
		if err != nil {
			return nil, fmt.Errorf("backup %s of %s: %w", req.BackupID, req.VM, err)
		}
		if r.State != contracts.StateVerified && r.State != contracts.StateCommitted {
			return nil, fmt.Errorf("backup %s is %s: nothing to verify", r.ID, r.State)
		}
		recs = append(recs, r)
	}
	run := v.newRun()
	total := &contracts.VerifyReply{Schema: contracts.SchemaVersion, Mode: req.Mode, OK: true}
	var problems []string
	for _, r := range recs {
		reply, err := v.deep(ctx, r, req.Mode, run)
		if err != nil {
			return nil, err
		}
		total.Digests = append(total.Digests, reply.Digests...)
		metrics.Verifications.WithLabelValues(string(req.Mode), map[bool]string{true: "passed", false: "failed"}[reply.OK]).Inc()
		if !reply.OK {
			total.OK = false
			problems = append(problems, fmt.Sprintf("%s/%s: %s", r.VM, r.ID, reply.Problem))
		}
		if reply.OK {
			if err := v.cat.RecordVerification(ctx, r.VM, r.ID, req.Mode, reply.Digests); err != nil && !errors.Is(err, catalog.ErrNotFound) {
				return nil, err
			}
		}
		total.Seconds += reply.Seconds
	}
	if err := v.recordBad(ctx, run, total); err != nil {
		return nil, err
	}
	total.ChunksChecked, total.BytesChecked = run.checked, run.bytes
	sort.Strings(problems)
	total.Problem = strings.Join(problems, "\n")
	return total, nil
}

// policyNames is the set of VMs that have a backup policy (pkg/policy).
func (v *verifier) policyNames(ctx context.Context) (map[string]bool, error) {
	list, err := v.policies.List(ctx)
	if err != nil {
		return nil, err
	}
	names := make(map[string]bool, len(list))
	for _, p := range list {
		names[p.VM] = true
	}
	return names, nil
}
