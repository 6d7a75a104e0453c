package catalog

// The named transitions of a backup record. Services call these; none of
// them passes a function to change a record (contracts.Moves is the one
// table of what may follow what).

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/strata-backup/strata/contracts"
)

// ErrInvalid is wrapped by errors about a request that can never apply to
// the record (a segment result for a disk it does not have): retrying it
// changes nothing.
var ErrInvalid = errors.New("does not fit the backup record")

// SegmentResult is what one segment's transfer adds to its disk's record.
type SegmentResult struct {
	Disk, Index    int
	UploadedChunks int64
	UploadedBytes  int64
	ReadBytes      int64
}

// RecordSegment notes a segment's result on a transferring backup. done is
// false when nothing changed: the result was recorded already (a
// redelivery) or the backup is no longer transferring. Either way the
// record as it now is comes back.
func (c *Catalog) RecordSegment(ctx context.Context, vm, id string, s SegmentResult) (rec *contracts.BackupRecord, done bool, err error) {
	rec, err = c.update(ctx, vm, id, func(r *contracts.BackupRecord) error {
		if r.State != contracts.StateTransferring {
			return ErrUnchanged
		}
		if s.Disk < 0 || s.Disk >= len(r.Disks) || s.Index < 0 || s.Index >= r.Disks[s.Disk].Segments {
			return fmt.Errorf("%w: result for disk %d segment %d; the backup has %d disks", ErrInvalid, s.Disk, s.Index, len(r.Disks))
		}
		disk := &r.Disks[s.Disk]
		if !disk.MarkSegmentDone(s.Index) {
			return ErrUnchanged // a duplicate result
		}
		disk.UploadedChunks += s.UploadedChunks
		disk.UploadedBytes += s.UploadedBytes
		disk.ReadBytes += s.ReadBytes
		done = true
		return nil
	})
	return rec, done, err
}

// CommittedDisk is one disk's chunk map as the commit stored it.
type CommittedDisk struct {
	Manifest           string // object key
	Chunks, ZeroChunks int64
}

// Commit moves a transferring backup to committed, its manifests stored.
// The record comes back as it now is: not committed when it failed
// meanwhile or another instance committed it first.
func (c *Catalog) Commit(ctx context.Context, vm, id string, disks []CommittedDisk) (rec *contracts.BackupRecord, committed bool, err error) {
	rec, err = c.update(ctx, vm, id, func(r *contracts.BackupRecord) error {
		if r.State != contracts.StateTransferring {
			return ErrUnchanged
		}
		if len(disks) != len(r.Disks) {
			return fmt.Errorf("%w: %d manifests for %d disks", ErrInvalid, len(disks), len(r.Disks))
		}
		r.State = contracts.StateCommitted
		for i, d := range disks {
			r.Disks[i].Manifest = d.Manifest
			r.Disks[i].Chunks, r.Disks[i].ZeroChunks = d.Chunks, d.ZeroChunks
			r.Disks[i].DoneBitmap = nil
		}
		committed = true
		return nil
	})
	return rec, committed, err
}

// MarkVerified moves a committed backup to verified by mode, with the
// certify digests when there are any. verified is false when the backup
// was no longer committed (failed meanwhile, or verified already).
func (c *Catalog) MarkVerified(ctx context.Context, vm, id string, mode contracts.VerifyMode, digests []contracts.DiskDigest) (rec *contracts.BackupRecord, verified bool, err error) {
	rec, err = c.update(ctx, vm, id, func(r *contracts.BackupRecord) error {
		if r.State != contracts.StateCommitted {
			return ErrUnchanged
		}
		now := time.Now().UTC()
		r.State, r.FinishedAt, r.Verify = contracts.StateVerified, &now, mode
		setDigests(r, digests)
		verified = true
		return nil
	})
	return rec, verified, err
}

// RecordVerification notes a verification that passed on a committed or
// verified backup after its commit (strata verify): its mode becomes the
// record's Verify (the last one that passed, which ls shows), with the
// certify digests when there are any.
func (c *Catalog) RecordVerification(ctx context.Context, vm, id string, mode contracts.VerifyMode, digests []contracts.DiskDigest) error {
	_, err := c.update(ctx, vm, id, func(r *contracts.BackupRecord) error {
		if r.State != contracts.StateCommitted && r.State != contracts.StateVerified {
			return fmt.Errorf("%w: backup %s is %s: no verification to record", ErrInvalid, id, r.State)
		}
		r.Verify = mode
		setDigests(r, digests)
		return nil
	})
	return err
}

// SetDamaged sets or clears the damaged flag of a committed or verified
// backup; changed is false when it already was so.
func (c *Catalog) SetDamaged(ctx context.Context, vm, id string, damaged bool) (changed bool, err error) {
	_, err = c.update(ctx, vm, id, func(r *contracts.BackupRecord) error {
		if r.Damaged == damaged {
			return ErrUnchanged
		}
		if r.State != contracts.StateCommitted && r.State != contracts.StateVerified {
			return ErrUnchanged // nothing of it is stored to be damaged
		}
		r.Damaged, changed = damaged, true
		return nil
	})
	return changed, err
}

// setDigests writes certify digests into a record's disks.
func setDigests(r *contracts.BackupRecord, digests []contracts.DiskDigest) {
	for _, d := range digests {
		if d.Disk >= 0 && d.Disk < len(r.Disks) {
			r.Disks[d.Disk].Digest = d.Stored
		}
	}
}
