package snapshotter

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/svctest"
	"github.com/strata-backup/strata/pkg/source"
)

// A VM's first full stores its chunks with conditional PUTs first (they
// are new); a later full — here: a file source, which has no change
// tracking — asks dedup first (they are mostly stored already).
func TestFirstFullPutsFirst(t *testing.T) {
	ctx, rt := svctest.Runtime(t, "snapshotter", 64<<10)
	s := &snapshotter{rt: rt, keyInterval: 20, sources: &source.Opener{}}
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, []byte("data that is not zero"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img, 1<<20)
	d, err := source.OpenFile(img)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	disks := []openDisk{{PointDisk: source.PointDisk{Name: "disk0", URL: "file://" + img}, disk: d}}
	req := &contracts.BackupRequested{Schema: contracts.SchemaVersion, BackupID: "0190e1a0-0000-7000-8000-000000000001", VM: "vm", Source: "file://" + img, RequestedAt: time.Now()}

	first := &contracts.BackupRecord{ChunkSize: 64 << 10}
	if plans := s.whatToRead(ctx, req, disks, first); !plans[0].putFirst || first.Kind != contracts.KindFull {
		t.Fatalf("first full: %+v, kind %s", plans[0], first.Kind)
	}
	parent := &contracts.BackupRecord{Schema: contracts.SchemaVersion, ID: req.BackupID, VM: "vm", Source: req.Source, State: contracts.StateVerified,
		ChunkSize: 64 << 10, CreatedAt: time.Now(), Disks: []contracts.DiskRecord{{Index: 0, Name: "disk0", Size: 1 << 20, Segments: 1}}}
	if _, _, err := rt.Catalog.Import(ctx, parent); err != nil {
		t.Fatal(err)
	}
	next := &contracts.BackupRecord{ChunkSize: 64 << 10}
	if plans := s.whatToRead(ctx, req, disks, next); plans[0].putFirst || next.Kind != contracts.KindFull || next.FullReason == "" {
		t.Fatalf("second full: %+v, kind %s (%s)", plans[0], next.Kind, next.FullReason)
	}
}
