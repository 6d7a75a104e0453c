package verifier

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/repo"
)

const testChunk = 64 << 10

// storeBackup writes a verified one-disk backup whose chunks are n
// distinct blocks (plus a zero chunk) and returns its record and ids.
func storeBackup(t *testing.T, ctx context.Context, rt *testVerifier, vm string, seed, n int) (*contracts.BackupRecord, []chunk.ID) {
	t.Helper()
	id := fmt.Sprintf("0190e1a0-0000-7000-8000-%012d", seed)
	man := manifest.New(id, 0, testChunk, int64(n+1)*testChunk)
	var ids []chunk.ID
	for i := 0; i < n; i++ {
		data := make([]byte, testChunk)
		copy(data, fmt.Sprintf("vm %s seed %d block %d", vm, seed, i))
		cid := rt.repo.ChunkID(data)
		if err := rt.repo.Chunks.PutChunk(ctx, cid, rt.repo.EncodeChunk(cid, data)); err != nil {
			t.Fatal(err)
		}
		man.Append(int64(i), chunk.Ref{ID: cid})
		ids = append(ids, cid)
	}
	key, err := rt.repo.PutManifest(ctx, vm, man)
	if err != nil {
		t.Fatal(err)
	}
	rec := &contracts.BackupRecord{Schema: contracts.SchemaVersion, ID: id, VM: vm, Source: "file:///x.img", State: contracts.StateVerified,
		ChunkSize: testChunk, CreatedAt: time.Now().UTC(), UpdatedAt: time.Now().UTC(),
		Disks: []contracts.DiskRecord{{Index: 0, Name: "disk0", Size: man.DiskSize, Segments: 1, Manifest: key}}}
	rt.cat.put(rec)
	return rec, ids
}

// strata check (on in-memory ports and store): it finds
// a chunk deleted from the store and a manifest that no longer decodes on
// its own (nothing known bad beforehand), records and attributes them as
// the verifier does, in one pass or in shards, and is healthy again once
// both are repaired.
func TestCheckLooksForItself(t *testing.T) {
	ctx := context.Background()
	rt := newTestVerifier(t)
	v := rt
	a, aIDs := storeBackup(t, ctx, rt, "a", 1, 20)
	b, _ := storeBackup(t, ctx, rt, "b", 2, 10)
	check := func(shards int) *contracts.CheckReply {
		t.Helper()
		reply, err := v.health(ctx, &contracts.CheckRequest{Schema: contracts.SchemaVersion, Shards: shards})
		if err != nil {
			t.Fatal(err)
		}
		return reply
	}
	if r := check(0); !r.Healthy || r.Referenced != 30 || r.Listed != 30 || r.Missing != 0 || r.Backups != 2 {
		t.Fatalf("healthy repository: %+v", r)
	}

	// A chunk vanishes from the store.
	victim := aIDs[7]
	data, err := rt.repo.Chunks.GetChunk(ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.repo.Chunks.Delete(ctx, victim); err != nil {
		t.Fatal(err)
	}
	// And b's manifest is corrupted.
	obj, _ := rt.repo.Store.Get(ctx, b.Disks[0].Manifest)
	good := append([]byte(nil), obj...)
	obj[len(obj)/2] ^= 0x01
	rt.repo.Store.Put(ctx, b.Disks[0].Manifest, obj)

	for _, shards := range []int{1, 4} {
		r := check(shards)
		if r.Healthy || len(r.BadChunks) != 1 || r.BadChunks[0].ID != victim.String() || len(r.BadManifests) != 1 || r.BadManifests[0].BackupID != b.ID {
			t.Fatalf("shards=%d: %+v", shards, r)
		}
		damaged := map[string]bool{}
		for _, d := range r.Damaged {
			damaged[d.BackupID] = true
		}
		if !damaged[a.ID] || !damaged[b.ID] || len(r.Damaged) != 2 {
			t.Fatalf("shards=%d: damaged %+v, want both backups", shards, r.Damaged)
		}
	}
	if rec, _, _ := rt.cat.Get(ctx, "a", a.ID); !rec.Damaged {
		t.Fatal("backup a not marked damaged in the catalog")
	}
	marks, _ := rt.bad.List(ctx)
	if len(marks) != 1 || marks[0].ID != victim.String() {
		t.Fatalf("bad-chunk marks: %+v", marks)
	}

	// Repaired: the chunk stored again (as the next backup would), the
	// manifest restored.
	rt.repo.Chunks.PutChunk(ctx, victim, rt.repo.EncodeChunk(victim, data))
	rt.repo.Store.Put(ctx, b.Disks[0].Manifest, good)
	r := check(0)
	if !r.Healthy || len(r.Repaired) != 1 || len(r.Damaged) != 0 {
		t.Fatalf("after repair: %+v", r)
	}
	if rec, _, _ := rt.cat.Get(ctx, "a", a.ID); rec.Damaged {
		t.Fatal("backup a still marked damaged")
	}
	if _, err := repo.CheckChunks(ctx, rt.repo, repo.Refs(aIDs, nil), 4); err != nil {
		t.Fatal(err)
	}
}

// Verification on commit does not ask the store about chunks the backup's
// workers stored with an acknowledged PUT, and still finds every other
// missing chunk.
func TestCommitCheckTrustsAcknowledgedUploads(t *testing.T) {
	ctx := context.Background()
	rt := newTestVerifier(t)
	v := rt
	rec, ids := storeBackup(t, ctx, rt, "a", 1, 20)
	for _, i := range []int{3, 12} {
		if err := rt.repo.Chunks.Delete(ctx, ids[i]); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name   string
		stored [][]contracts.ChunkRun
		want   string
	}{
		{"no hint: both found", nil, "2 chunk objects missing"},
		{"chunks 0-9 acknowledged: only 12 asked about", [][]contracts.ChunkRun{{{Start: 0, Count: 10}}}, "1 chunk objects missing, e.g. " + repo.ChunkKey(ids[12])},
		{"all acknowledged", [][]contracts.ChunkRun{{{Start: 0, Count: 21}}}, ""},
		{"runs beyond the disk are ignored", [][]contracts.ChunkRun{{{Start: 15, Count: 100}}}, "2 chunk objects missing"},
	}
	for _, tc := range tests {
		problem, err := v.check(ctx, rec, tc.stored)
		if err != nil {
			t.Fatal(err)
		}
		if tc.want == "" && problem != "" || tc.want != "" && (len(problem) < len(tc.want) || problem[:len(tc.want)] != tc.want) {
			t.Errorf("%s: problem %q, want %q", tc.name, problem, tc.want)
		}
	}
}
