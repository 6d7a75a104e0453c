package mirror

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/repo"
)

const cs = 64 << 10

// point stores disk as a backup and returns its record and manifest.
func point(t *testing.T, r *repo.Repository, id string, disk []byte) (*contracts.BackupRecord, *manifest.Manifest) {
	t.Helper()
	ctx := context.Background()
	m := manifest.New(id, 0, cs, int64(len(disk)))
	for i := range m.Count() {
		d := disk[i*cs : min(int64(len(disk)), (i+1)*cs)]
		if chunk.AllZero(d) {
			continue
		}
		cid := r.ChunkID(d)
		if err := r.Chunks.PutChunk(ctx, cid, r.EncodeChunk(cid, d)); err != nil {
			t.Fatal(err)
		}
		if err := m.Append(i, chunk.Ref{ID: cid}); err != nil {
			t.Fatal(err)
		}
	}
	key, err := r.PutManifest(ctx, "vm", m)
	if err != nil {
		t.Fatal(err)
	}
	return &contracts.BackupRecord{ID: id, VM: "vm", State: contracts.StateVerified, Disks: []contracts.DiskRecord{{Manifest: key, Size: int64(len(disk))}}}, m
}

// Each update writes exactly the chunks that changed; a target changed
// behind the mirror's back is refused until a reseed, which writes only
// what differs.
func TestUpdateWritesOnlyWhatChanged(t *testing.T) {
	ctx := context.Background()
	r, err := repo.Open(ctx, objstore.NewMem(), cs, nil)
	if err != nil {
		t.Fatal(err)
	}
	disk := make([]byte, 10*cs+1000) // a short last chunk
	for i := 0; i < len(disk); i += 7 {
		disk[i] = byte(i / 7)
	}
	copy(disk[3*cs:4*cs], make([]byte, cs)) // a zero chunk
	target := filepath.Join(t.TempDir(), "standby.raw")
	m := &contracts.Mirror{Schema: contracts.SchemaVersion, VM: "vm", Target: "file://" + target}
	rec1, man1 := point(t, r, "b1", disk)
	res, err := Update(ctx, r, m, rec1, nil, false)
	if err != nil || res.ChunksWritten != 10 || m.Point != "b1" {
		t.Fatalf("seed: %+v %v, mirror %+v", res, err, m)
	}
	if got, _ := os.ReadFile(target); !bytes.Equal(got, disk) {
		t.Fatal("the seeded target differs from the disk")
	}
	disk[5*cs+3] ^= 0xff
	disk[10*cs+5] ^= 0xff // the short last chunk
	rec2, man2 := point(t, r, "b2", disk)
	if res, err = Update(ctx, r, m, rec2, man1, false); err != nil || res.ChunksWritten != 2 || res.BytesWritten != cs+1000 {
		t.Fatalf("update: %+v %v", res, err)
	}
	if got, _ := os.ReadFile(target); !bytes.Equal(got, disk) {
		t.Fatal("the updated target differs from the disk")
	}
	// Someone writes into the standby: refused, and stays refused.
	f, _ := os.OpenFile(target, os.O_WRONLY, 0)
	f.WriteAt([]byte{1, 2, 3}, 10)
	f.Close()
	disk[7*cs] ^= 1
	rec3, _ := point(t, r, "b3", disk)
	if _, err := Update(ctx, r, m, rec3, man2, false); !errors.Is(err, ErrChanged) || !m.NeedsReseed || m.Point != "b2" {
		t.Fatalf("a tampered target: %v, mirror %+v", err, m)
	}
	if _, err := Update(ctx, r, m, rec3, man2, false); !errors.Is(err, ErrChanged) {
		t.Fatalf("a mirror waiting for reseed updated: %v", err)
	}
	if res, err = Update(ctx, r, m, rec3, nil, true); err != nil || res.ChunksWritten != 2 || m.NeedsReseed || m.Point != "b3" {
		t.Fatalf("reseed: %+v %v, mirror %+v", res, err, m)
	}
	if got, _ := os.ReadFile(target); !bytes.Equal(got, disk) {
		t.Fatal("the reseeded target differs from the disk")
	}
	// Certified: every chunk checked.
	m.Certify = true
	disk[0] ^= 1
	rec4, man4 := point(t, r, "b4", disk)
	_ = man4
	if res, err = Update(ctx, r, m, rec4, nil, false); err != nil || res.Check != "certified" {
		t.Fatalf("certified update: %+v %v", res, err)
	}
}

func TestParseTargetRefusesWhatIsNotATarget(t *testing.T) {
	for _, bad := range []string{"file://relative/x", "file:///x?y=1", "nbd://host/export", "http://h/x", "/abs/path", "file://host/abs"} {
		if _, err := ParseTarget(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	for _, good := range []string{"file:///srv/standby/web.raw", "nbd://127.0.0.1:10809/disk"} {
		if _, err := ParseTarget(good); err != nil {
			t.Errorf("%q: %v", good, err)
		}
	}
}
