package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/natstest"
	"github.com/strata-backup/strata/pkg/bus"
	"github.com/strata-backup/strata/pkg/objstore"
)

func testCatalog(t *testing.T) (context.Context, *Catalog, objstore.Store) {
	t.Helper()
	nc := natstest.Start(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	b := &bus.Bus{NC: nc, JS: js}
	if err := b.EnsureStreams(ctx, 1); err != nil {
		t.Fatal(err)
	}
	store := objstore.NewMem()
	c, err := Open(ctx, js, store, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ctx, c, store
}

func newRecord(id string, state contracts.State) *contracts.BackupRecord {
	return &contracts.BackupRecord{Schema: contracts.SchemaVersion, ID: id, VM: "web", Source: "file:///x.img", State: state, ChunkSize: 64 << 10,
		CreatedAt: time.Now().UTC(), Disks: []contracts.DiskRecord{{Index: 0, Name: "disk0", Size: 1 << 20, Segments: 2}}}
}

// The named transitions walk a record through its life; a result twice,
// a commit twice, a verification of a failed backup change nothing; every
// move the lifecycle does not allow is refused and leaves the record (and
// its copy) as it was.
func TestLifecycleTransitions(t *testing.T) {
	ctx, c, store := testCatalog(t)
	const id = "01a23600-0000-7000-8000-00000000000a"
	if _, _, err := c.Create(ctx, newRecord(id, contracts.StateCommitted)); !errors.Is(err, ErrIllegalMove) {
		t.Fatalf("created committed: %v", err)
	}
	if _, created, err := c.Create(ctx, newRecord(id, contracts.StateTransferring)); err != nil || !created {
		t.Fatalf("create: %v", err)
	}
	if _, _, err := c.RecordSegment(ctx, "web", id, SegmentResult{Disk: 1}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("result for a disk the backup lacks: %v", err)
	}
	if _, _, err := c.Commit(ctx, "web", id, nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("commit without manifests: %v", err)
	}
	for _, idx := range []int{0, 0, 1} {
		rec, done, err := c.RecordSegment(ctx, "web", id, SegmentResult{Index: idx, UploadedChunks: 3, UploadedBytes: 300, ReadBytes: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if rec.Disks[0].UploadedChunks != int64(3*rec.SegmentsDone()) {
			t.Fatalf("after segment %d (done=%v): %d chunks for %d segments", idx, done, rec.Disks[0].UploadedChunks, rec.SegmentsDone())
		}
	}
	if _, ok, err := c.MarkVerified(ctx, "web", id, contracts.VerifyTrivial, nil); err != nil || ok {
		t.Fatalf("verified while transferring: %v %v", ok, err)
	}
	disks := []CommittedDisk{{Manifest: "manifests/web/0/" + id, Chunks: 16, ZeroChunks: 2}}
	if rec, ok, err := c.Commit(ctx, "web", id, disks); err != nil || !ok || rec.State != contracts.StateCommitted || rec.Disks[0].Manifest != disks[0].Manifest {
		t.Fatalf("commit: %+v %v %v", rec, ok, err)
	}
	if _, ok, err := c.Commit(ctx, "web", id, disks); err != nil || ok {
		t.Fatalf("second commit: %v %v", ok, err)
	}
	if changed, err := c.SetDamaged(ctx, "web", id, true); err != nil || !changed {
		t.Fatalf("damaged: %v %v", changed, err)
	}
	digests := []contracts.DiskDigest{{Disk: 0, Stored: "abc"}}
	if rec, ok, err := c.MarkVerified(ctx, "web", id, contracts.VerifyCertify, digests); err != nil || !ok || rec.Disks[0].Digest != "abc" || !rec.Damaged {
		t.Fatalf("verify: %+v %v %v", rec, ok, err)
	}
	if changed, err := c.Fail(ctx, "web", id, "late"); err != nil || changed {
		t.Fatalf("fail of a verified backup: %v %v", changed, err)
	}
	// The copy in the repository followed every change of state.
	b, err := store.Get(ctx, RecordKey("web", id))
	if err != nil {
		t.Fatal(err)
	}
	var copied contracts.BackupRecord
	if json.Unmarshal(b, &copied); copied.State != contracts.StateVerified || !copied.Damaged {
		t.Fatalf("record copy: %+v", copied)
	}

	// Every illegal move, from every state a record can be in.
	states := []contracts.State{contracts.StateTransferring, contracts.StateCommitted, contracts.StateVerified, contracts.StateFailed, contracts.StateSkipped}
	for i, from := range states {
		rid := "01a23600-0000-7000-8000-00000000010" + string(rune('0'+i))
		rec := newRecord(rid, contracts.StateTransferring)
		if from == contracts.StateSkipped || from == contracts.StateFailed {
			rec.State = from
		}
		if _, _, err := c.Create(ctx, rec); err != nil {
			t.Fatal(err)
		}
		if from == contracts.StateCommitted || from == contracts.StateVerified {
			c.Commit(ctx, "web", rid, disks)
		}
		if from == contracts.StateVerified {
			c.MarkVerified(ctx, "web", rid, contracts.VerifyTrivial, nil)
		}
		for _, to := range append(states, contracts.StateNone) {
			if contracts.CanMove(from, to) {
				continue
			}
			_, err := c.update(ctx, "web", rid, func(r *contracts.BackupRecord) error { r.State = to; return nil })
			if !errors.Is(err, ErrIllegalMove) {
				t.Errorf("%s → %q: %v, want refused", from, to, err)
			}
			if got, _, _ := c.Get(ctx, "web", rid); got.State != from {
				t.Errorf("%s → %q refused, but the record is now %s", from, to, got.State)
			}
		}
	}
}
