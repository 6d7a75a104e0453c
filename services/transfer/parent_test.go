package transfer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/svctest"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/source"
)

// A full read compared with its parent (Segment.Parent) asks dedup only
// about the chunks that differ from the parent's at the same place, and
// uploads only those: chunks equal to the parent's are never sent, even
// though this store does not hold them (the test's parent is a manifest
// alone), which proves they were neither asked about nor uploaded.
func TestFullReadComparedWithParent(t *testing.T) {
	const cs = 64 << 10
	ctx, rt := svctest.Runtime(t, "transfer", cs)
	disk := make([]byte, 8*cs)
	for i := 1; i < 8; i++ { // chunk 0 stays zero
		copy(disk[i*cs:], []byte{byte(i), 'd', 'a', 't', 'a'})
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, disk, 0o644); err != nil {
		t.Fatal(err)
	}
	ids := make([]chunk.ID, 8)
	for i := 1; i < 8; i++ {
		ids[i] = rt.Repo.ChunkID(disk[i*cs : (i+1)*cs])
	}
	pids := slices.Clone(ids)
	pids[5] = chunk.Hash([]byte("what chunk 5 held the day before"))
	parent, err := manifest.FromIDs("0190e1a0-0000-7000-8000-000000000001", 0, cs, int64(len(disk)), pids, nil)
	if err != nil {
		t.Fatal(err)
	}
	key, err := rt.Repo.PutManifest(ctx, "vm", parent)
	if err != nil {
		t.Fatal(err)
	}
	backup := "0190e1a0-0000-7000-8000-000000000002"
	rec := &contracts.BackupRecord{Schema: contracts.SchemaVersion, ID: backup, VM: "vm", Source: "file://" + img, State: contracts.StateTransferring,
		ChunkSize: cs, CreatedAt: time.Now().UTC(), UpdatedAt: time.Now().UTC(), Base: parent.BackupID,
		Disks: []contracts.DiskRecord{{Index: 0, Name: "disk0", Size: int64(len(disk)), Segments: 1}}}
	if _, _, err := rt.Catalog.Create(ctx, rec); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var asked []string
	sub, err := rt.Bus.NC.Subscribe(contracts.SubjectDedupMissing, func(m *nats.Msg) {
		var req contracts.MissingRequest
		json.Unmarshal(m.Data, &req)
		mu.Lock()
		asked = append(asked, req.IDs...)
		mu.Unlock()
		b, _ := json.Marshal(&contracts.MissingReply{Schema: contracts.SchemaVersion, Missing: req.IDs})
		m.Respond(b)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	w := &worker{rt: rt, cfg: Config{Uploads: 4, Compression: "auto"}, disks: newDiskPool(ctx, source.NewOpener(source.Config{}), 2)}
	w.writer = rt.Repo.NewWriter(4, 1, nil)
	seg := &contracts.Segment{Schema: contracts.SchemaVersion, BackupID: backup, VM: "vm", Disk: 0, Index: 0, Source: "file://" + img,
		DiskSize: int64(len(disk)), ChunkSize: cs, FirstChunk: 0, Chunks: 8, Parent: key}
	if err := w.handle(ctx, seg); err != nil {
		t.Fatal(err)
	}
	if len(asked) != 1 || asked[0] != ids[5].String() {
		t.Fatalf("dedup asked about %d chunks %v, want only chunk 5 (%s)", len(asked), asked, ids[5])
	}
	missing, err := rt.Repo.Chunks.Missing(ctx, ids[1:])
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) != 6 || slices.Contains(missing, ids[5]) {
		t.Fatalf("stored: all but %d of chunks 1-7 missing; want only chunk 5 uploaded", len(missing))
	}
	// The result still names every chunk: the manifest is complete.
	stream, err := rt.Bus.JS.Stream(ctx, contracts.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := stream.GetLastMsgForSubject(ctx, contracts.SegmentDoneSubject(backup, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	var done contracts.SegmentDone
	if err := contracts.Decode(raw.Data, &done); err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		want := id.String()
		if i == 0 {
			want = ""
		}
		if done.IDs[i] != want {
			t.Fatalf("result entry %d = %q, want %q", i, done.IDs[i], want)
		}
	}
	if done.UploadedChunks != 1 || len(done.Stored) != 1 || done.Stored[0] != (contracts.ChunkRun{Start: 5, Count: 1}) {
		t.Fatalf("result: %d uploaded, stored runs %+v; want chunk 5 alone", done.UploadedChunks, done.Stored)
	}
}
