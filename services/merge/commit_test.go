package merge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/bus"
	"github.com/strata-backup/strata/pkg/catalog"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/metrics"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/retention"
)

const testChunk = 16 << 20 // 4 chunks per 64 MiB segment: small manifests

// testMerger is a merger on fakes and a repository in memory.
func testMerger(t *testing.T, recs ...*contracts.BackupRecord) (*merger, *fakeRecords, *fakeResults, *fakeBus, *repo.Repository) {
	t.Helper()
	r, err := repo.Open(context.Background(), objstore.NewMem(), testChunk, nil)
	if err != nil {
		t.Fatal(err)
	}
	cat, res, bus := newFakeRecords(recs...), &fakeResults{}, &fakeBus{}
	return &merger{cat: cat, repo: r, results: res, pub: bus, log: slog.New(slog.DiscardHandler)}, cat, res, bus, r
}

// diskOf is a transferring record of one disk of size bytes.
func diskOf(id string, size int64) *contracts.BackupRecord {
	_, segs := contracts.SegmentLayout(size, testChunk)
	return &contracts.BackupRecord{Schema: contracts.SchemaVersion, ID: id, VM: "vm", Source: "file:///x", State: contracts.StateTransferring,
		ChunkSize: testChunk, CreatedAt: time.Now(), Disks: []contracts.DiskRecord{{Index: 0, Name: "disk0", Size: size, Segments: segs}}}
}

// result is segment seg's result with an id per chunk (every third zero).
func result(id string, seg int, size int64) (*contracts.SegmentDone, []chunk.ID) {
	per, _ := contracts.SegmentLayout(size, testChunk)
	first := seg * per
	n := min(per, int((size+testChunk-1)/testChunk)-first)
	d := &contracts.SegmentDone{Schema: contracts.SchemaVersion, BackupID: id, VM: "vm", Index: seg, FirstChunk: int64(first), UploadedChunks: 1}
	var ids []chunk.ID
	for i := range n {
		c := chunk.ID{}
		if (first+i)%3 != 0 {
			c = chunk.Hash([]byte(fmt.Sprint(id, first+i)))
		}
		ids = append(ids, c)
		if c.IsZero() {
			d.IDs = append(d.IDs, "")
		} else {
			d.IDs = append(d.IDs, c.String())
		}
	}
	return d, ids
}

// Segment results arrive in any order and some twice: the backup is
// committed exactly once, after the last one, with a manifest holding every
// chunk where it belongs; a result again after the commit changes nothing.
func TestCommitFromResultsInAnyOrderAndDuplicated(t *testing.T) {
	const size = 3*64<<20 - 5<<20 // three segments, the last short
	ctx := context.Background()
	m, cat, res, bus, r := testMerger(t, diskOf("b1", size))
	want := make([]chunk.ID, 0, 12)
	results := map[int]*contracts.SegmentDone{}
	for seg := range 3 {
		d, ids := result("b1", seg, size)
		results[seg] = d
		want = append(want, ids...)
	}
	for i, seg := range []int{2, 0, 2, 1, 0} {
		res.put(results[seg])
		if err := m.segmentDone(ctx, results[seg]); err != nil {
			t.Fatalf("result %d (segment %d): %v", i, seg, err)
		}
		committed := cat.commits == 1
		if committed != (i >= 3) || cat.commits > 1 {
			t.Fatalf("after result %d (segment %d): %d commits", i, seg, cat.commits)
		}
	}
	if len(bus.sent) != 1 || len(res.purged) != 1 {
		t.Fatalf("committed messages %d, purges %d", len(bus.sent), len(res.purged))
	}
	rec, _, _ := cat.Get(ctx, "vm", "b1")
	man, err := r.GetManifest(ctx, rec.Disks[0].Manifest)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(denseIDs(man)) != fmt.Sprint(want) || rec.Disks[0].ZeroChunks != 4 || rec.Disks[0].UploadedChunks != 3 {
		t.Fatalf("manifest %v zero %d uploaded %d; want %v", denseIDs(man), rec.Disks[0].ZeroChunks, rec.Disks[0].UploadedChunks, want)
	}
}

// A replica behind: the results stream answers not found at first. The
// result that completes the backup is taken as delivered (the stream is
// not asked for it), the others are asked again until they show: the
// backup commits on the first delivery — a retry through a redelivery is
// what a server lost (nats-server#5727).
func TestCommitWhileTheResultsLag(t *testing.T) {
	const size = 2 * 64 << 20
	ctx := context.Background()
	m, cat, res, _, _ := testMerger(t, diskOf("lag", size))
	d0, _ := result("lag", 0, size)
	d1, _ := result("lag", 1, size)
	res.put(d0)
	if err := m.segmentDone(ctx, d0); err != nil || cat.commits != 0 {
		t.Fatalf("first result: %v, %d commits", err, cat.commits)
	}
	res.lag = 3 // the first result now reads as missing three times, the last one is not in the stream at all
	if err := m.segmentDone(ctx, d1); err != nil || cat.commits != 1 {
		t.Fatalf("last result with the stream behind: %v, %d commits", err, cat.commits)
	}
}

// An incremental takes untouched segments and inherited chunks from its
// parent's manifest; a result for a segment the backup does not have is
// refused for good (never retried), and so is one whose parent is gone.
func TestIncrementalInheritsFromItsParent(t *testing.T) {
	const size = 2 * 64 << 20
	ctx := context.Background()
	m, cat, res, _, r := testMerger(t)
	parentRes := map[int]*contracts.SegmentDone{}
	var parentIDs []chunk.ID
	for seg := range 2 {
		d, ids := result("p", seg, size)
		parentRes[seg] = d
		parentIDs = append(parentIDs, ids...)
	}
	pm := &contracts.BackupRecord{}
	*pm = *diskOf("p", size)
	cat.recs["vm/p"] = pm
	for seg := range 2 {
		res.put(parentRes[seg])
		if err := m.segmentDone(ctx, parentRes[seg]); err != nil {
			t.Fatal(err)
		}
	}
	inc := diskOf("i", size)
	inc.Parent = "p"
	inc.Disks[0].MarkUntouched(0)
	cat.recs["vm/i"] = clone(inc)
	d, ids := result("i", 1, size)
	d.IDs[1] = contracts.InheritID
	ids[1] = parentIDs[5]
	if err := m.segmentDone(ctx, &contracts.SegmentDone{Schema: 1, BackupID: "i", VM: "vm", Index: 7}); !bus.IsPermanent(err) {
		t.Fatalf("result for a segment the backup lacks: %v", err)
	}
	res.put(d)
	if err := m.segmentDone(ctx, d); err != nil {
		t.Fatal(err)
	}
	rec, _, _ := cat.Get(ctx, "vm", "i")
	man, err := r.GetManifest(ctx, rec.Disks[0].Manifest)
	if err != nil {
		t.Fatal(err)
	}
	want := append(append([]chunk.ID{}, parentIDs[:4]...), ids...)
	if rec.State != contracts.StateCommitted || fmt.Sprint(denseIDs(man)) != fmt.Sprint(want) {
		t.Fatalf("incremental %s: %v, want %v", rec.State, denseIDs(man), want)
	}
	orphan := diskOf("o", size)
	orphan.Parent = "gone"
	orphan.Disks[0].MarkUntouched(0)
	orphan.Disks[0].MarkUntouched(1)
	cat.recs["vm/o"] = clone(orphan)
	od, _ := result("o", 1, size)
	res.put(od)
	if err := m.commit(ctx, clone(orphan), nil); err == nil || !errors.Is(err, catalog.ErrNotFound) {
		t.Fatalf("commit of an incremental whose parent is gone: %v", err)
	}
}

// A full whose first segment had nothing allocated (never published):
// merge writes zeros there, without looking for a parent.
func TestFullWithEmptySegments(t *testing.T) {
	const size = 2 * 64 << 20
	ctx := context.Background()
	m, cat, res, _, r := testMerger(t)
	full := diskOf("f", size)
	full.Disks[0].MarkUntouched(0)
	cat.recs["vm/f"] = clone(full)
	d, ids := result("f", 1, size)
	res.put(d)
	if err := m.segmentDone(ctx, d); err != nil {
		t.Fatal(err)
	}
	rec, _, _ := cat.Get(ctx, "vm", "f")
	man, err := r.GetManifest(ctx, rec.Disks[0].Manifest)
	if err != nil {
		t.Fatal(err)
	}
	per, _ := contracts.SegmentLayout(size, testChunk)
	want := append(make([]chunk.ID, per), ids...)
	zeros := int64(per)
	for _, id := range ids {
		if id.IsZero() {
			zeros++
		}
	}
	if rec.State != contracts.StateCommitted || fmt.Sprint(denseIDs(man)) != fmt.Sprint(want) || rec.Disks[0].ZeroChunks != zeros {
		t.Fatalf("full with an empty segment: %s, %d zero chunks (want %d), manifest right %v", rec.State, rec.Disks[0].ZeroChunks, zeros, fmt.Sprint(denseIDs(man)) == fmt.Sprint(want))
	}
}

// Pruning removes manifests, then the record copy, then the entry; a prune
// stopped after any step leaves the kept backups alone, and the next one
// finishes the job.
func TestPruneStopsAndResumes(t *testing.T) {
	ctx := context.Background()
	store := objstore.NewMem()
	cat := newFakeRecords()
	base := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for i := range 4 {
		r := diskOf(fmt.Sprint("b", i), 64<<20)
		r.State, r.CreatedAt = contracts.StateVerified, base.Add(time.Duration(i)*time.Hour)
		r.Disks[0].Manifest = fmt.Sprint("manifests/vm/0/b", i)
		store.Put(ctx, r.Disks[0].Manifest, []byte("m"))
		cat.recs["vm/"+r.ID] = r
	}
	stopAt := stepHook("record")
	p := &pruner{cat: cat, store: store, hooks: &stopAt, log: slog.New(slog.DiscardHandler)}
	if _, err := p.prune(ctx, "vm", retention.Rules{Last: 2}, false); err == nil {
		t.Fatal("prune stopped at the record step succeeded")
	}
	if _, err := store.Get(ctx, "manifests/vm/0/b0"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("the first pruned backup's manifest is still there: %v", err)
	}
	for _, id := range []string{"b2", "b3"} {
		if _, err := store.Get(ctx, "manifests/vm/0/"+id); err != nil {
			t.Fatalf("kept backup %s lost its manifest: %v", id, err)
		}
	}
	p.hooks = nil
	reply, err := p.prune(ctx, "vm", retention.Rules{Last: 2}, false)
	if err != nil || fmt.Sprint(reply.Pruned) != "[b0 b1]" || fmt.Sprint(reply.Kept) != "[b2 b3]" {
		t.Fatalf("rerun: %+v %v", reply, err)
	}
	if recs, _ := cat.List(ctx, "vm"); len(recs) != 2 {
		t.Fatalf("%d records after the rerun", len(recs))
	}
}

type stepHook string

func (s *stepHook) BeforePruneStep(step, _ string) error {
	if step == string(*s) {
		return errors.New("stopped at " + step)
	}
	return nil
}

// Under Object Lock, prune leaves a backup whose lock has not passed
// (listed with its date, nothing of it deleted) and prunes the rest; a
// store that still refuses (objstore.ErrLocked) stops that backup before
// its catalog entry goes.
func TestPruneRespectsLocks(t *testing.T) {
	ctx := context.Background()
	store := objstore.NewFaulty(objstore.NewMem(), &objstore.Fault{Method: "Delete", KeyPrefix: "manifests/vm/0/b1",
		Err: &objstore.LockedError{Key: "manifests/vm/0/b1", Until: time.Now().Add(time.Hour)}, Times: 100})
	cat := newFakeRecords()
	now := time.Now()
	for i := range 4 {
		r := diskOf(fmt.Sprint("b", i), 64<<20)
		r.State, r.CreatedAt, r.UpdatedAt = contracts.StateVerified, now.Add(time.Duration(i-4)*time.Hour), now.Add(time.Duration(i-4)*time.Hour)
		r.Disks[0].Manifest = fmt.Sprint("manifests/vm/0/b", i)
		store.Put(ctx, r.Disks[0].Manifest, []byte("m"))
		cat.recs["vm/"+r.ID] = r
	}
	// Locked for 150 minutes after the last write: b2 (2 h ago) still is.
	p := &pruner{cat: cat, store: store, log: slog.New(slog.DiscardHandler),
		lockedUntil: func(w time.Time) time.Time { return w.Add(150 * time.Minute) }}
	reply, err := p.prune(ctx, "vm", retention.Rules{Last: 1}, false)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(reply.Pruned) != "[b0]" || len(reply.Locked) != 2 {
		t.Fatalf("prune under lock: %+v", reply)
	}
	for _, l := range reply.Locked {
		if !l.Until.After(now) || (l.ID != "b1" && l.ID != "b2") {
			t.Fatalf("locked entry %+v", l)
		}
	}
	// The kept b3's lock (written an hour ago, 150 min) is the soonest.
	if got, want := testutil.ToFloat64(metrics.LockSoonest.WithLabelValues("vm")), float64(now.Add(-time.Hour+150*time.Minute).UnixMilli())/1000; got != want {
		t.Fatalf("soonest lock gauge %v, want %v", got, want)
	}
	for _, id := range []string{"b1", "b2", "b3"} {
		if _, _, err := cat.Get(ctx, "vm", id); err != nil {
			t.Fatalf("backup %s is gone: %v", id, err)
		}
		if _, err := store.Get(ctx, "manifests/vm/0/"+id); err != nil {
			t.Fatalf("backup %s lost its manifest: %v", id, err)
		}
	}
}

// denseIDs is every chunk's id of a small manifest, zero ones included.
func denseIDs(m *manifest.Manifest) []chunk.ID {
	ids := make([]chunk.ID, m.Count())
	for i, r := range m.Data() {
		ids[i] = r.ID
	}
	return ids
}

// A worker that gave a segment up reports it (its credential may not write
// the catalog): merge fails a transferring backup with the worker's
// reason, and ignores a late report once the backup is past the transfer.
func TestFailedSegmentFailsTheBackup(t *testing.T) {
	ctx := context.Background()
	m, cat, _, _, _ := testMerger(t, diskOf("b1", 64<<20))
	var failed []string
	m.fail = func(_ context.Context, vm, id, reason string) error {
		failed = append(failed, id+": "+reason)
		return nil
	}
	d := &contracts.SegmentDone{Schema: contracts.SchemaVersion, BackupID: "b1", VM: "vm", Failed: "segment 0 of disk 0: source gone"}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := m.segmentDone(ctx, d); err != nil || len(failed) != 1 || failed[0] != "b1: segment 0 of disk 0: source gone" {
		t.Fatalf("failed %q, err %v", failed, err)
	}
	if cat.commits != 0 {
		t.Fatal("a failed segment was committed")
	}
	cat.mu.Lock()
	cat.recs["vm/b1"].State = contracts.StateCommitted
	cat.mu.Unlock()
	if err := m.segmentDone(ctx, d); err != nil || len(failed) != 1 {
		t.Fatalf("a late report failed a committed backup: %q, %v", failed, err)
	}
	if err := (&contracts.SegmentDone{Schema: 1, BackupID: "b1", VM: "vm", Failed: "x", IDs: []string{""}}).Validate(); err == nil {
		t.Fatal("a failed result with ids accepted")
	}
}
