package verifier

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/bus"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/guestfs"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/source"
)

// chunkRun reads chunks back for one verification run: each chunk once
// however many backups or disks share it; bad ones (corrupt or missing)
// remembered with the reason.
type chunkRun struct {
	v       *verifier
	seen    map[chunk.ID]struct{}
	bad     map[chunk.ID]string
	checked int
	bytes   int64
}

func (v *verifier) newRun() *chunkRun {
	return &chunkRun{v: v, seen: map[chunk.ID]struct{}{}, bad: map[chunk.ID]string{}}
}

// checkManifest reads back every non-zero chunk of man not yet seen in
// this run.
func (r *chunkRun) checkManifest(ctx context.Context, man *manifest.Manifest) error {
	var fresh []chunk.Ref
	for _, ref := range man.Data() {
		if _, ok := r.seen[ref.ID]; !ok {
			r.seen[ref.ID] = struct{}{}
			fresh = append(fresh, ref)
		}
	}
	res, err := repo.CheckChunks(ctx, r.v.repo, fresh, 8)
	if err != nil {
		for _, ref := range fresh { // not looked at: another run may
			delete(r.seen, ref.ID)
		}
		return err
	}
	r.add(res)
	return nil
}

func (r *chunkRun) add(res repo.CheckResult) {
	r.checked += res.Checked
	r.bytes += res.Bytes
	for id, reason := range res.Bad {
		r.bad[id] = reason
	}
}

// badIn counts the ids this run found bad.
func (r *chunkRun) badIn(man *manifest.Manifest) int {
	n := 0
	if len(r.bad) == 0 {
		return 0
	}
	for _, ref := range man.Data() {
		if _, ok := r.bad[ref.ID]; ok {
			n++
		}
	}
	return n
}

// openSource opens the source a disk was read from. A source that is gone
// or unreadable (a file removed, a mount missing, no permission) does not
// come back by asking again in a few seconds: the backup fails at once with
// the reason, rather than after every retry.
func (v *verifier) openSource(ctx context.Context, disk contracts.DiskRecord) (source.Disk, error) {
	src, err := v.sources.Open(ctx, disk.Source)
	if err != nil {
		err = fmt.Errorf("cannot read the source of %s: %w", disk.Name, err)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
			return nil, bus.Permanent(err)
		}
		return nil, err
	}
	return src, nil
}

// sourceDigest re-reads the whole disk from its source.
func (v *verifier) sourceDigest(ctx context.Context, disk contracts.DiskRecord, chunkSize int) (string, error) {
	src, err := v.openSource(ctx, disk)
	if err != nil {
		return "", err
	}
	defer src.Close()
	if src.Size() != disk.Size {
		return "", bus.Permanent(fmt.Errorf("source of %s is %d bytes, the backup %d", disk.Name, src.Size(), disk.Size))
	}
	// A --skip-free backup stored wholly free chunks as zeros: read the
	// source through the same bitmaps (from the same source) to compare.
	var free [][2]int64
	if strings.HasPrefix(disk.FreeMap, "filesystem bitmaps") {
		if free, _, err = guestfs.FreeChunks(src, chunkSize); err != nil {
			return "", fmt.Errorf("free-block map of the source of %s: %w", disk.Name, err)
		}
	}
	d := manifest.NewDigester()
	buf := make([]byte, chunkSize)
	for off := int64(0); off < disk.Size; off += int64(chunkSize) {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		if i := off / int64(chunkSize); len(free) > 0 && i >= free[0][0] {
			for len(free) > 0 && i >= free[0][1] {
				free = free[1:]
			}
			if len(free) > 0 && i >= free[0][0] {
				d.Add(chunk.ID{})
				continue
			}
		}
		n := int(min(int64(chunkSize), disk.Size-off))
		if _, err := src.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("read source of %s at %d: %w", disk.Name, off, err)
		}
		if chunk.AllZero(buf[:n]) {
			d.Add(chunk.ID{})
		} else {
			d.Add(v.repo.ChunkID(buf[:n]))
		}
	}
	return d.Sum(), nil
}

// trivial compares the disk size and the first n bytes of the source with
// the backup's. It reads little and misses any change further in: that is
// its contract (XSIBackup's trivial check).
func (v *verifier) trivial(ctx context.Context, disk contracts.DiskRecord, man *manifest.Manifest, n int64) (string, error) {
	src, err := v.openSource(ctx, disk)
	if err != nil {
		return "", err
	}
	defer src.Close()
	if src.Size() != disk.Size {
		return fmt.Sprintf("%s: source is %d bytes, the backup %d", disk.Name, src.Size(), disk.Size), nil
	}
	n = min(n, disk.Size)
	want := make([]byte, man.ChunkSize)
	for i := int64(0); i*int64(man.ChunkSize) < n; i++ {
		off := i * int64(man.ChunkSize)
		size := int(min(int64(man.ChunkSize), n-off, disk.Size-off))
		var stored []byte
		if ref := man.Ref(i); ref.ID.IsZero() {
			stored = make([]byte, size)
		} else if stored, err = v.repo.ReadChunk(ctx, ref.ID, ref.Loc); err != nil {
			if repo.IsBad(err) {
				return fmt.Sprintf("%s: %v", disk.Name, err), nil
			}
			return "", err
		}
		if _, err := src.ReadAt(want[:size], off); err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("read source of %s at %d: %w", disk.Name, off, err)
		}
		if !bytes.Equal(want[:size], stored[:size]) {
			for j := range size {
				if want[j] != stored[j] {
					return fmt.Sprintf("%s: byte %d differs between the source and the backup", disk.Name, off+int64(j)), nil
				}
			}
		}
	}
	return "", nil
}

// deep runs mode on rec and returns the reply, with the problem set when
// the backup is not good. Bad chunks collect in run; the caller records
// them (recordBad) once the run is over.
func (v *verifier) deep(ctx context.Context, rec *contracts.BackupRecord, mode contracts.VerifyMode, run *chunkRun) (*contracts.VerifyReply, error) {
	start := time.Now()
	reply := &contracts.VerifyReply{Schema: contracts.SchemaVersion, Mode: mode}
	var problems []string
	var err error
	if mode == contracts.VerifyRestoreTest {
		problems, err = v.restoreTest(ctx, rec, run)
	} else {
		problems, err = v.perDisk(ctx, rec, mode, run, reply)
	}
	if err != nil {
		return nil, err
	}
	reply.ChunksChecked, reply.BytesChecked = run.checked, run.bytes
	reply.OK = len(problems) == 0
	if !reply.OK {
		reply.Problem = fmt.Sprintf("%s verification: %s", mode, joinMax(problems, 3))
	}
	reply.Seconds = time.Since(start).Seconds()
	return reply, nil
}

// perDisk runs the trivial, chunks or certify mode on each disk; certify
// digests go into reply.
func (v *verifier) perDisk(ctx context.Context, rec *contracts.BackupRecord, mode contracts.VerifyMode, run *chunkRun, reply *contracts.VerifyReply) ([]string, error) {
	var problems []string
	for _, disk := range rec.Disks {
		man, err := v.repo.GetManifest(ctx, disk.Manifest)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		switch mode {
		case contracts.VerifyTrivial:
			p, err := v.trivial(ctx, disk, man, v.trivialBytes)
			if err != nil {
				return nil, err
			}
			if p != "" {
				problems = append(problems, p)
			}
		case contracts.VerifyChunks, contracts.VerifyCertify:
			if err := run.checkManifest(ctx, man); err != nil {
				return nil, err
			}
			if n := run.badIn(man); n > 0 {
				problems = append(problems, fmt.Sprintf("%s: %d bad chunks", disk.Name, n))
				continue
			}
			if mode == contracts.VerifyCertify {
				src, err := v.sourceDigest(ctx, disk, man.ChunkSize)
				if err != nil {
					return nil, err
				}
				stored := man.Digest() // valid: every chunk was read back good above
				reply.Digests = append(reply.Digests, contracts.DiskDigest{Disk: disk.Index, Source: src, Stored: stored})
				if src != stored {
					problems = append(problems, fmt.Sprintf("%s: digest of the source %s… differs from the backup's %s…", disk.Name, src[:12], stored[:12]))
				}
			}
		}
	}
	return problems, nil
}

// recordBad records the run's bad chunks and the backups they damage into
// reply.
func (v *verifier) recordBad(ctx context.Context, run *chunkRun, reply *contracts.VerifyReply) error {
	if len(run.bad) == 0 {
		return nil
	}
	damaged, err := v.recordDamage(ctx, run.bad)
	if err != nil {
		return err
	}
	reply.Damaged = damaged
	for id, reason := range run.bad {
		reply.BadChunks = append(reply.BadChunks, contracts.BadChunk{ID: id.String(), Reason: reason})
	}
	return nil
}

func joinMax(list []string, n int) string {
	s := ""
	for i, p := range list {
		if i == n {
			return s + fmt.Sprintf("; and %d more", len(list)-n)
		}
		if i > 0 {
			s += "; "
		}
		s += p
	}
	return s
}
