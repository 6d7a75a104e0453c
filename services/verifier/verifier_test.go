package verifier

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/repo"
)

// imageBackup writes a raw image of n distinct chunks and a zero one, and
// a committed backup of it (the verifier's input), sharing the chunks
// given first; it returns the record, the image's path and the chunk ids.
func imageBackup(t *testing.T, tv *testVerifier, vm, id string, blocks [][]byte) (*contracts.BackupRecord, string, []chunk.ID) {
	t.Helper()
	ctx := context.Background()
	img := filepath.Join(t.TempDir(), vm+".img")
	var disk []byte
	man := manifest.New(id, 0, testChunk, int64(len(blocks)+1)*testChunk)
	var ids []chunk.ID
	for _, b := range blocks {
		data := make([]byte, testChunk)
		copy(data, b)
		disk = append(disk, data...)
		cid := tv.repo.ChunkID(data)
		if err := tv.repo.Chunks.PutChunk(ctx, cid, tv.repo.EncodeChunk(cid, data)); err != nil {
			t.Fatal(err)
		}
		man.Append(int64(len(ids)), chunk.Ref{ID: cid})
		ids = append(ids, cid)
	}
	disk = append(disk, make([]byte, testChunk)...)
	if err := os.WriteFile(img, disk, 0o600); err != nil {
		t.Fatal(err)
	}
	key, err := tv.repo.PutManifest(ctx, vm, man)
	if err != nil {
		t.Fatal(err)
	}
	rec := &contracts.BackupRecord{Schema: contracts.SchemaVersion, ID: id, VM: vm, Source: "file://" + img, State: contracts.StateCommitted,
		ChunkSize: testChunk, CreatedAt: testTime, UpdatedAt: testTime,
		Disks: []contracts.DiskRecord{{Index: 0, Name: "disk0", Source: "file://" + img, Size: man.DiskSize, Segments: 1, Manifest: key}}}
	tv.cat.put(rec)
	return rec, img, ids
}

func blocks(tag string, n int) [][]byte {
	var out [][]byte
	for i := range n {
		out = append(out, []byte(fmt.Sprintf("%s block %d", tag, i)))
	}
	return out
}

func (tv *testVerifier) run(t *testing.T, rec *contracts.BackupRecord, mode contracts.VerifyMode) *contracts.BackupRecord {
	t.Helper()
	if err := tv.verify(context.Background(), &contracts.BackupCommitted{Schema: contracts.SchemaVersion, VM: rec.VM, BackupID: rec.ID}); err != nil {
		t.Fatalf("verify %s: %v", mode, err)
	}
	got, _, err := tv.cat.Get(context.Background(), rec.VM, rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// Each level passes a good backup: the record is verified by that level,
// its outcome published once, certify's digests kept.
func TestVerifyEachLevelPassesAGoodBackup(t *testing.T) {
	for _, mode := range []contracts.VerifyMode{contracts.VerifyStored, contracts.VerifyTrivial, contracts.VerifyChunks, contracts.VerifyCertify} {
		t.Run(string(mode), func(t *testing.T) {
			tv := newTestVerifier(t)
			rec, _, _ := imageBackup(t, tv, "vm1", "b1", blocks("good", 3))
			rec.Verify = mode
			tv.cat.put(rec)
			got := tv.run(t, rec, mode)
			if got.State != contracts.StateVerified || got.Verify != mode {
				t.Fatalf("state %s verify %s error %q", got.State, got.Verify, got.Error)
			}
			if len(tv.pub.outcomes) != 1 || tv.pub.outcomes[0].State != contracts.StateVerified {
				t.Fatalf("outcomes %+v", tv.pub.outcomes)
			}
			if (mode == contracts.VerifyCertify) != (got.Disks[0].Digest != "") {
				t.Fatalf("digest %q after %s", got.Disks[0].Digest, mode)
			}
			// A redelivery changes nothing and publishes nothing more.
			tv.run(t, rec, mode)
			if len(tv.pub.outcomes) != 1 {
				t.Fatalf("a redelivered commit published again: %d outcomes", len(tv.pub.outcomes))
			}
		})
	}
}

// Each level finds what it is for, and only that: stored a missing chunk
// object; trivial a change in the first MiBs (not one further in: its
// contract); certify any change of the source; chunks a corrupt chunk,
// which is recorded bad and attributed to every backup that references it
// and to no other.
func TestVerifyEachLevelFindsItsDamage(t *testing.T) {
	ctx := context.Background()
	type tc struct {
		mode    contracts.VerifyMode
		harm    func(t *testing.T, tv *testVerifier, img string, ids []chunk.ID)
		failure string // "": passes
	}
	patch := func(at int64) func(t *testing.T, tv *testVerifier, img string, ids []chunk.ID) {
		return func(t *testing.T, tv *testVerifier, img string, ids []chunk.ID) {
			f, err := os.OpenFile(img, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			f.WriteAt([]byte{0xEE}, at)
		}
	}
	corrupt := func(t *testing.T, tv *testVerifier, img string, ids []chunk.ID) {
		key := repo.Where(ids[1], chunk.Loc{})
		obj, err := tv.repo.Store.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		obj[len(obj)-1] ^= 0xff
		tv.repo.Store.Put(ctx, key, obj)
	}
	for _, c := range []tc{
		{contracts.VerifyStored, func(t *testing.T, tv *testVerifier, _ string, ids []chunk.ID) {
			tv.repo.Chunks.Delete(ctx, ids[2])
		}, "1 chunk objects missing"},
		{contracts.VerifyStored, corrupt, ""}, // stored asks the store, it reads nothing
		{contracts.VerifyTrivial, patch(10), "byte 10 differs"},
		{contracts.VerifyTrivial, patch(3*testChunk - 1), ""},
		{contracts.VerifyCertify, patch(3*testChunk - 1), "digest of the source"},
		{contracts.VerifyChunks, corrupt, "1 bad chunks"},
	} {
		t.Run(fmt.Sprintf("%s/%s", c.mode, cmpOr(c.failure, "passes")), func(t *testing.T) {
			tv := newTestVerifier(t)
			shared := blocks("shared", 3)
			rec, img, ids := imageBackup(t, tv, "vm1", "b2", shared)
			rec.Verify = c.mode
			tv.cat.put(rec)
			// Another VM's verified backup holds the same chunks; a third
			// holds none of them.
			other, _, _ := imageBackup(t, tv, "vm2", "b1", shared)
			other.State = contracts.StateVerified
			tv.cat.put(other)
			unrelated, _, _ := imageBackup(t, tv, "vm3", "b0", blocks("unrelated", 2))
			unrelated.State = contracts.StateVerified
			tv.cat.put(unrelated)

			c.harm(t, tv, img, ids)
			got := tv.run(t, rec, c.mode)
			if c.failure == "" {
				if got.State != contracts.StateVerified {
					t.Fatalf("failed: %s", got.Error)
				}
				return
			}
			if got.State != contracts.StateFailed || !strings.Contains(got.Error, c.failure) {
				t.Fatalf("state %s error %q, want failed with %q", got.State, got.Error, c.failure)
			}
			if len(tv.pub.outcomes) != 0 {
				t.Fatalf("a failed backup published a verified outcome")
			}
			marks, _ := tv.bad.List(ctx)
			if c.mode != contracts.VerifyChunks {
				if len(marks) != 0 {
					t.Fatalf("%s recorded bad chunks: %+v", c.mode, marks)
				}
				return
			}
			if len(marks) != 1 || marks[0].ID != ids[1].String() {
				t.Fatalf("bad marks %+v, want chunk %s", marks, ids[1])
			}
			for vm, want := range map[string]bool{"vm2": true, "vm3": false} {
				id := map[string]string{"vm2": other.ID, "vm3": unrelated.ID}[vm]
				r, _, _ := tv.cat.Get(ctx, vm, id)
				if r.Damaged != want {
					t.Errorf("%s damaged=%v, want %v", vm, r.Damaged, want)
				}
			}
		})
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
