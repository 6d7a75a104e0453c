package e2e

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/demodisk"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/repo"
)

const chunkSize = 1 << 20

// A ≥1 GiB image through six processes, real NATS, real S3, real Jaeger:
// bit-exact sparse restore, exact chunk count, dedup on the second backup,
// one trace across all six services.
func TestBackupRestoreOneTrace(t *testing.T) {
	st := startStack(t, stackOptions{jaeger: true})
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	if err := demodisk.Write(img, 1<<30+12345, 42); err != nil {
		t.Fatal(err)
	}
	ids, zero := chunkCensus(t, img, chunkSize)
	distinct := len(ids)
	t.Logf("image: %d distinct non-zero chunks, %d zero chunks", distinct, zero)

	out := st.mustCLI("backup", "--vm", "web-01", "--source", "file://"+img, "--wait")
	id := strings.TrimSpace(strings.Split(out, "\n")[0])
	rec := st.record("web-01", id)
	if rec.State != contracts.StateVerified {
		t.Fatalf("backup %s is %s", id, rec.State)
	}

	restored := filepath.Join(dir, "restored.img")
	st.mustCLI("restore", "--vm", "web-01", "--backup", id, "--to", restored)
	if a, b := sha256File(t, img), sha256File(t, restored); a != b {
		t.Fatalf("sha256 differs: source %s, restored %s", a, b)
	}
	var fi syscall.Stat_t
	if err := syscall.Stat(restored, &fi); err != nil {
		t.Fatal(err)
	}
	dataBytes := int64(1<<30+12345) - int64(zero)*chunkSize
	if allocated := fi.Blocks * 512; allocated > dataBytes+chunkSize {
		t.Fatalf("restored image allocates %d bytes; the source's non-zero chunks hold %d: zero chunks were written", allocated, dataBytes)
	}

	if n := len(st.storedChunks()); n != distinct {
		t.Fatalf("%d chunks stored in S3, want %d distinct non-zero chunks", n, distinct)
	}
	// Two segments holding the same new chunk may both upload it at once
	// (harmless: same key, same bytes), so uploads can exceed the distinct
	// count by a little; the object count above is the exact check.
	if up := rec.Disks[0].UploadedChunks; up < int64(distinct) || up > int64(distinct)+16 {
		t.Fatalf("first backup uploaded %d chunks for %d distinct", up, distinct)
	}

	// The commit tells the verifier which chunks the workers' PUTs stored,
	// so it does not ask the store about them again: one run per upload.
	committed := lastCommitted(t, st)
	var acknowledged int64
	for _, r := range committed.Stored[0] {
		acknowledged += int64(r.Count)
	}
	if committed.BackupID != id || acknowledged != rec.Disks[0].UploadedChunks {
		t.Fatalf("commit of %s names %d stored chunks; the backup uploaded %d", committed.BackupID, acknowledged, rec.Disks[0].UploadedChunks)
	}

	out = st.mustCLI("backup", "--vm", "web-01", "--source", "file://"+img, "--wait")
	second := st.record("web-01", strings.TrimSpace(strings.Split(out, "\n")[0]))
	if c := lastCommitted(t, st); c.BackupID != second.ID || len(c.Stored) != 1 || len(c.Stored[0]) != 0 {
		t.Fatalf("commit of an unchanged backup names stored chunks: %+v", c.Stored)
	}
	// The file has no change tracking: the second backup re-reads it,
	// compared chunk by chunk with the first (Segment.Parent, read by range
	// from S3), so nothing is asked of dedup or uploaded.
	if second.Base != id {
		t.Fatalf("second full read was compared against %q, want the first backup %s", second.Base, id)
	}
	for _, p := range st.procs["transfer"] {
		if strings.Contains(p.Output(), "parent manifest unreadable") {
			t.Fatalf("transfer could not read the parent's manifest slice:\n%s", p.Output())
		}
	}
	if second.Disks[0].UploadedChunks != 0 || second.StoredBytes() != 0 {
		t.Fatalf("second backup of an unchanged image uploaded %d chunks (%d bytes)", second.Disks[0].UploadedChunks, second.StoredBytes())
	}
	if n := len(st.storedChunks()); n != distinct {
		t.Fatalf("stored chunks grew to %d after an unchanged backup", n)
	}

	// One trace for the first backup, with spans from all six services.
	want := map[string]bool{}
	for _, s := range services {
		want["strata-"+s] = true
	}
	var got map[string]bool
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		got = jaegerServices(t, st.jaeger.Query, rec.TraceID)
		if len(got) >= len(want) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	for s := range want {
		if !got[s] {
			t.Errorf("trace %s has no span from %s (has %v)", rec.TraceID, s, got)
		}
	}
}

// lastCommitted reads the newest BackupCommitted message from its stream.
func lastCommitted(t *testing.T, st *stack) *contracts.BackupCommitted {
	t.Helper()
	js := st.jetstream()
	stream, err := js.Stream(ctxT(t, 10*time.Second), contracts.StreamBackups)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := stream.GetLastMsgForSubject(ctxT(t, 10*time.Second), contracts.SubjectBackupCommitted)
	if err != nil {
		t.Fatal(err)
	}
	var c contracts.BackupCommitted
	if err := contracts.Decode(raw.Data, &c); err != nil {
		t.Fatal(err)
	}
	return &c
}

// jaegerServices returns the services with spans in one trace.
func jaegerServices(t *testing.T, query, traceID string) map[string]bool {
	resp, err := http.Get(query + "/api/traces/" + traceID)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Data []struct {
			TraceID   string `json:"traceID"`
			Processes map[string]struct {
				ServiceName string `json:"serviceName"`
			} `json:"processes"`
		} `json:"data"`
	}
	json.NewDecoder(resp.Body).Decode(&body)
	out := map[string]bool{}
	for _, tr := range body.Data {
		for _, p := range tr.Processes {
			out[p.ServiceName] = true
		}
	}
	return out
}

// Two transfer workers; one is SIGKILLed mid-backup. Its unacked segment
// is redelivered to the other, and the backup completes bit-exact.
func TestTransferWorkerKilledMidBackup(t *testing.T) {
	slow := []string{"STRATA_TRANSFER_RATE_LIMIT=25000000", "STRATA_TRANSFER_CONCURRENCY=1", "STRATA_TRANSFER_ACK_WAIT=3s"}
	// The collection beside the running backup runs in 4 shards.
	st := startStack(t, stackOptions{transfers: 2, extraEnv: map[string][]string{"transfer": slow, "dedup": {"STRATA_GC_SHARDS=4"}}})
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	if err := demodisk.Write(img, 400<<20, 7); err != nil {
		t.Fatal(err)
	}
	out := st.mustCLI("backup", "--vm", "db-01", "--source", "file://"+img)
	id := strings.TrimSpace(out)

	victim := st.procs["transfer"][0]
	deadline := time.Now().Add(60 * time.Second)
	for {
		rec, _ := st.findRecord("db-01", id)
		if rec.SegmentsDone() >= 1 && !rec.State.Final() {
			break
		}
		if rec.State.Final() || time.Now().After(deadline) {
			t.Fatalf("backup reached %s (%d segments done) before the worker could be killed", rec.State, rec.SegmentsDone())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := victim.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	victim.Cmd.Wait()
	t.Logf("killed transfer worker 0 mid-backup")
	// Garbage collection beside the running backup, with no grace at all:
	// the backup's uploaded and reused chunks are all older than the
	// collection's cutoff, so only the mark (segment results, the drain of
	// in-flight segments, manifests) keeps them. One planted unreferenced
	// chunk is the only thing it may delete.
	if rec, _ := st.findRecord("db-01", id); rec.State.Final() {
		t.Fatalf("backup finished (%s) before garbage collection could run beside it", rec.State)
	}
	garbage := st.plantGarbageChunk()
	var gc contracts.GCReply
	if err := json.Unmarshal([]byte(st.mustCLI("gc", "--grace", "0s", "--json")), &gc); err != nil {
		t.Fatal(err)
	}
	if gc.Deleted != 1 || gc.FreedBytes != garbage {
		t.Fatalf("gc beside a running backup deleted %d chunks (%d bytes); want the 1 planted (%d bytes): %+v", gc.Deleted, gc.FreedBytes, garbage, gc)
	}
	t.Logf("gc beside a running backup: %+v", gc)

	var rec contracts.BackupRecord
	for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if rec = st.record("db-01", id); rec.State.Final() {
			break
		}
	}
	if rec.State != contracts.StateVerified {
		t.Fatalf("backup ended %s: %s", rec.State, rec.Error)
	}
	// The killed worker held a segment: the transfer consumer delivered
	// more messages than the backup has segments.
	js := st.jetstream()
	cons, err := js.Consumer(ctxT(t, 10*time.Second), contracts.StreamSegments, contracts.ConsumerTransfer)
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if published := publishedSegments(rec); info.Delivered.Consumer <= uint64(published) {
		t.Fatalf("%d deliveries for %d segments: the killed worker held no segment, so the test proved nothing", info.Delivered.Consumer, published)
	}
	t.Logf("%d deliveries for %d segments", info.Delivered.Consumer, publishedSegments(rec))
	restored := filepath.Join(dir, "restored.img")
	st.mustCLI("restore", "--vm", "db-01", "--backup", "latest", "--to", restored)
	if a, b := sha256File(t, img), sha256File(t, restored); a != b {
		t.Fatalf("sha256 differs after a worker was killed: %s vs %s", a, b)
	}
}

// plantGarbageChunk stores a valid chunk object no backup references and
// returns its stored size.
func (st *stack) plantGarbageChunk() int64 {
	st.t.Helper()
	data := make([]byte, 64<<10)
	rand.Read(data)
	stored := chunk.Encode(data)
	store, err := objstore.NewS3(context.Background(), objstore.S3Config{Endpoint: st.s3.Endpoint, Bucket: st.bucket,
		AccessKey: st.s3.AccessKey, SecretKey: st.s3.SecretKey, PathStyle: true})
	if err != nil {
		st.t.Fatal(err)
	}
	if err := store.Put(context.Background(), repo.ChunkKey(chunk.Hash(data)), stored); err != nil {
		st.t.Fatal(err)
	}
	return int64(len(stored))
}

func TestMain_binariesExist(t *testing.T) {
	for _, s := range append([]string{"strata"}, prefixed(services)...) {
		if _, err := os.Stat(filepath.Join(binDir, s)); err != nil {
			t.Fatal(err)
		}
	}
}

func prefixed(names []string) []string {
	var out []string
	for _, n := range names {
		out = append(out, "strata-"+n)
	}
	return out
}

// publishedSegments counts the segments a backup published (not those
// recorded untouched: unchanged, or of a full, nothing allocated).
func publishedSegments(rec contracts.BackupRecord) int {
	n := 0
	for _, d := range rec.Disks {
		for i := 0; i < d.Segments; i++ {
			if !d.IsUntouched(i) {
				n++
			}
		}
	}
	return n
}
