package e2e

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/testserver"
	"github.com/strata-backup/strata/pkg/demodisk"
)

// Certify, damage report and self-healing: two certified backups; one bit
// flipped in a chunk object both reference (in the S3 server's files);
// certify names the chunk and both backups; `strata check` reports them
// damaged and restore refuses the bad bytes; the next backup re-reads the
// disk and uploads exactly that chunk again; `strata check` is healthy and
// every point restores bit-exact. A chunks job reads each distinct chunk
// once. The trivial check sees a change in the first MiBs and, by design,
// misses one at the end (which certify catches).
//
// The same in a packed repository (STRATA_PACKS=true): the flipped bit is
// in the victim's range of a pack; the repair is stored on its own, and the
// damaged backups read it from there.
func TestCertifyDamageAndSelfHealing(t *testing.T) {
	for _, packed := range []bool{false, true} {
		t.Run(fmt.Sprint("packed=", packed), func(t *testing.T) { certifyDamageAndSelfHealing(t, packed) })
	}
}

func certifyDamageAndSelfHealing(t *testing.T, packed bool) {
	const cs = 64 << 10
	st := startStack(t, stackOptions{chunkSize: cs, env: []string{fmt.Sprint("STRATA_PACKS=", packed)},
		extraEnv: map[string][]string{"verifier": {"STRATA_VERIFY_TRIVIAL_MIB=4"}}})
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	if err := demodisk.Write(img, 32<<20, 5); err != nil {
		t.Fatal(err)
	}
	src := "file://" + img
	rng := rand.New(rand.NewPCG(9, 9))
	scribble := func(off int64, n int) {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		f, err := os.OpenFile(img, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	snapshot := func(name string) string {
		p := filepath.Join(dir, name)
		data, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	backup := func(verify string) contracts.BackupRecord {
		t.Helper()
		out := st.mustCLI("backup", "--vm", "db-01", "--source", src, "--verify", verify, "--wait")
		rec := st.record("db-01", strings.TrimSpace(strings.Split(out, "\n")[0]))
		if rec.State != contracts.StateVerified || rec.Verify != contracts.VerifyMode(verify) {
			t.Fatalf("backup %s: %s (verify %s) %s", rec.ID, rec.State, rec.Verify, rec.Error)
		}
		return rec
	}

	point0 := snapshot("point0")
	b1 := backup("certify")
	if b1.Disks[0].Digest == "" || !strings.Contains(st.mustCLI("ls", "--vm", "db-01"), b1.Disks[0].Digest[:16]) {
		t.Fatalf("certified backup has no digest in its record or in strata ls: %q", b1.Disks[0].Digest)
	}
	scribble(16<<20, 1<<20)
	point1 := snapshot("point1")
	b2 := backup("certify")

	// One bit flipped in a chunk object both backups reference.
	ids0, _ := chunkCensus(t, point0, cs)
	ids1, _ := chunkCensus(t, point1, cs)
	var shared []string
	for id := range ids0 {
		if ids1[id] {
			shared = append(shared, id)
		}
	}
	slices.Sort(shared)
	victim := shared[rng.IntN(len(shared))]
	bucket := filepath.Join(st.s3.Dir, st.bucket)
	if packed {
		if loose := countFiles(t, filepath.Join(bucket, "chunks")); loose != 0 {
			t.Fatalf("a packed repository holds %d chunk objects of their own", loose)
		}
		if packs, chunks := countFiles(t, filepath.Join(bucket, "packs")), len(ids0)+len(ids1)-len(shared); packs == 0 || packs*8 > chunks {
			t.Fatalf("%d packs for %d chunks", packs, chunks)
		}
	}
	c, ok := st.storedChunks()[victim]
	if !ok || packed != strings.HasPrefix(c.Key, "packs/") {
		t.Fatalf("chunk %s stored as %+v (found %v), packed %v", victim, c, ok, packed)
	}
	c.flip(t, rng.Int64N(c.Len), 1<<rng.IntN(8))

	var reply contracts.VerifyReply
	out, _, code := st.cli("verify", "--vm", "db-01", "--backup", b1.ID, "--mode", "certify", "--json")
	if err := json.Unmarshal([]byte(out), &reply); err != nil || code != 1 || reply.OK {
		t.Fatalf("certify after a bit flip: exit %d, %s", code, out)
	}
	if len(reply.BadChunks) != 1 || reply.BadChunks[0].ID != victim {
		t.Fatalf("certify names bad chunks %+v, want %s", reply.BadChunks, victim)
	}
	if !sameBackups(reply.Damaged, b1.ID, b2.ID) {
		t.Fatalf("damaged backups %+v, want %s and %s", reply.Damaged, b1.ID, b2.ID)
	}
	var health contracts.CheckReply
	out, _, code = st.cli("check", "--json")
	if err := json.Unmarshal([]byte(out), &health); err != nil || code != 1 || health.Healthy || !sameBackups(health.Damaged, b1.ID, b2.ID) {
		t.Fatalf("check after a bit flip: exit %d, %s", code, out)
	}
	if !strings.Contains(st.mustCLI("ls", "--vm", "db-01"), "DAMAGED") {
		t.Fatal("strata ls does not show the damage")
	}
	if _, errOut, code := st.cli("restore", "--vm", "db-01", "--backup", b1.ID, "--to", filepath.Join(dir, "bad.img")); code == 0 || !strings.Contains(errOut, victim) {
		t.Fatalf("restore through a corrupt chunk: exit %d, %s", code, errOut)
	}

	// Self-healing: the next backup re-reads and re-uploads the chunk.
	b3 := backup("stored")
	if b3.Kind != contracts.KindFull || !strings.Contains(b3.FullReason, "damaged") || b3.Disks[0].UploadedChunks != 1 {
		t.Fatalf("backup after damage: kind %s (%s), uploaded %d chunks, want a full re-read uploading 1", b3.Kind, b3.FullReason, b3.Disks[0].UploadedChunks)
	}
	if packed {
		if _, err := os.Stat(filepath.Join(bucket, "chunks", victim[:2], victim)); err != nil {
			t.Fatalf("the repair of a packed chunk is not stored on its own: %v", err)
		}
	}
	health = contracts.CheckReply{}
	if err := json.Unmarshal([]byte(st.mustCLI("check", "--json")), &health); err != nil || !health.Healthy || !slices.Contains(health.Repaired, victim) {
		t.Fatalf("check after the repair: %+v %v", health, err)
	}
	for _, p := range []struct{ id, want string }{{b1.ID, point0}, {b2.ID, point1}, {b3.ID, point1}} {
		st.checkRestore("db-01", p.id, []string{p.want})
	}

	// A chunks job: every distinct chunk of every backup, read once.
	reply = contracts.VerifyReply{}
	if err := json.Unmarshal([]byte(st.mustCLI("verify", "--all", "--mode", "chunks", "--json")), &reply); err != nil || !reply.OK {
		t.Fatalf("chunks job: %+v %v", reply, err)
	}
	union := len(ids0)
	for id := range ids1 {
		if !ids0[id] {
			union++
		}
	}
	if reply.ChunksChecked != union {
		t.Fatalf("chunks job read %d chunks; the backups hold %d distinct", reply.ChunksChecked, union)
	}

	// Trivial: compares the first 4 MiB (STRATA_VERIFY_TRIVIAL_MIB) only.
	st.mustCLI("verify", "--vm", "db-01", "--backup", b3.ID, "--mode", "trivial")
	// The record (and ls) shows the last verification that passed, not
	// only the one on commit.
	if rec := st.record("db-01", b3.ID); rec.Verify != contracts.VerifyTrivial {
		t.Fatalf("after verify --mode trivial passed, the record says %q", rec.Verify)
	}
	scribble(100<<10, 4096)
	if out, _, code := st.cli("verify", "--vm", "db-01", "--backup", b3.ID, "--mode", "trivial"); code != 1 {
		t.Fatalf("trivial check missed a change in the first MiB: exit %d %s", code, out)
	}
	restoreBytes(t, img, point1, 100<<10, 4096)
	scribble(30<<20, 4096)
	st.mustCLI("verify", "--vm", "db-01", "--backup", b3.ID, "--mode", "trivial") // misses it, by design
	if _, _, code := st.cli("verify", "--vm", "db-01", "--backup", b3.ID, "--mode", "certify"); code != 1 {
		t.Fatal("certify missed a change at the end of the disk")
	}
}

// countFiles counts the regular files under dir (none: 0).
func countFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			n++
		}
		return nil
	})
	return n
}

func sameBackups(refs []contracts.BackupRef, ids ...string) bool {
	var got []string
	for _, r := range refs {
		got = append(got, r.BackupID)
	}
	slices.Sort(got)
	slices.Sort(ids)
	return slices.Equal(got, ids)
}

// restoreBytes copies n bytes at off from a copy back into the image.
func restoreBytes(t *testing.T, img, from string, off int64, n int) {
	t.Helper()
	src, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(src[off:off+int64(n)], off); err != nil {
		t.Fatal(err)
	}
}

// Restore test: a GPT disk with real ext4 and FAT filesystems (made by
// sfdisk, mkfs.ext4 and mkfs.vfat) restores plausible; the same disk with
// its ext4 superblock zeroed fails its backup with a reason naming the
// partition.
func TestRestoreTestMode(t *testing.T) {
	st := startStack(t, stackOptions{chunkSize: 64 << 10})
	img := filepath.Join(t.TempDir(), "disk.img")
	testserver.PartitionedImage(t, img)
	out := st.mustCLI("backup", "--vm", "web", "--source", "file://"+img, "--verify", "restore-test", "--wait")
	good := st.record("web", strings.TrimSpace(strings.Split(out, "\n")[0]))
	if good.State != contracts.StateVerified || good.Verify != contracts.VerifyRestoreTest {
		t.Fatalf("restore-test backup of a sane disk: %s %s %s", good.State, good.Verify, good.Error)
	}

	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(make([]byte, 1024), testserver.Ext4Offset+1024)
	f.Close()
	out, errOut, code := st.cli("backup", "--vm", "web", "--source", "file://"+img, "--verify", "restore-test", "--wait")
	bad := st.record("web", strings.TrimSpace(strings.Split(out, "\n")[0]))
	if code != 1 || bad.State != contracts.StateFailed || !strings.Contains(bad.Error, "partition 1") || !strings.Contains(bad.Error, "superblock") {
		t.Fatalf("restore-test of a disk with a zeroed superblock: exit %d, %s: %s %s", code, errOut, bad.State, bad.Error)
	}
	t.Logf("refused: %s", bad.Error)
	// The good backup still passes on demand (its restore has the superblock).
	st.mustCLI("verify", "--vm", "web", "--backup", good.ID, "--mode", "restore-test")
}

// The scheduled chunks job (STRATA_VERIFY_JOB_SCHEDULE) reads every
// distinct chunk of every backup once, as batches on a work queue that
// the transfer workers consume; a bit flipped in one chunk object is found
// by the next scheduled run without anyone asking, and `strata check`
// then names the damaged backup.
func TestScheduledChunkVerifyJobOverTransferWorkers(t *testing.T) {
	const cs = 64 << 10
	st := startStack(t, stackOptions{chunkSize: cs, transfers: 2,
		extraEnv: map[string][]string{"scheduler": {"STRATA_VERIFY_JOB_SCHEDULE=*/2 * * * * *"}}})
	dir := t.TempDir()
	var distinct = map[string]bool{}
	var ids []string
	for i, vm := range []string{"a", "b"} {
		img := filepath.Join(dir, vm+".img")
		if err := demodisk.Write(img, 24<<20, uint64(30+i)); err != nil {
			t.Fatal(err)
		}
		st.mustCLI("backup", "--vm", vm, "--source", "file://"+img, "--wait")
		d, _ := chunkCensus(t, img, cs)
		for id := range d {
			if !distinct[id] {
				distinct[id] = true
				ids = append(ids, id)
			}
		}
	}
	var reply contracts.VerifyReply
	if err := json.Unmarshal([]byte(st.mustCLI("verify", "--all", "--mode", "chunks", "--json")), &reply); err != nil || !reply.OK {
		t.Fatalf("chunks job: %+v %v", reply, err)
	}
	if reply.ChunksChecked != len(distinct) {
		t.Fatalf("chunks job read %d chunks; the backups hold %d distinct", reply.ChunksChecked, len(distinct))
	}
	info, err := st.jetstream().Consumer(ctxT(t, 10*time.Second), contracts.StreamSegments, contracts.ConsumerTransferVerify)
	if err != nil {
		t.Fatal(err)
	}
	ci, err := info.Info(ctxT(t, 10*time.Second))
	if err != nil || ci.Delivered.Consumer < uint64((len(distinct)+63)/64) {
		t.Fatalf("transfer workers took %d batches for %d chunks: %v", ci.Delivered.Consumer, len(distinct), err)
	}
	var perWorker []int
	for _, p := range st.procs["transfer"] {
		perWorker = append(perWorker, strings.Count(p.Output(), `"msg":"chunks checked"`))
	}
	t.Logf("%d chunks in %d batches; batches per transfer worker: %v", reply.ChunksChecked, ci.Delivered.Consumer, perWorker)

	// Corrupt one chunk; the scheduled job must find it on its own.
	slices.Sort(ids)
	victim := ids[len(ids)/2]
	c, ok := st.storedChunks()[victim]
	if !ok {
		t.Fatalf("chunk %s is not stored", victim)
	}
	c.flip(t, c.Len/2, 0x10)
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(time.Second) {
		var bad []contracts.BadChunk
		if e, err := st.jetstream().KeyValue(ctxT(t, 5*time.Second), contracts.BucketBadChunks); err == nil {
			if v, err := e.Get(ctxT(t, 5*time.Second), victim); err == nil {
				var b contracts.BadChunk
				json.Unmarshal(v.Value(), &b)
				bad = append(bad, b)
			}
		}
		if len(bad) == 1 {
			t.Logf("scheduled job found %s: %s", victim, bad[0].Reason)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the scheduled chunks job did not find the flipped bit within 60 s")
		}
	}
	var health contracts.CheckReply
	out, _, code := st.cli("check", "--json")
	if err := json.Unmarshal([]byte(out), &health); err != nil || code != 1 || len(health.Damaged) == 0 {
		t.Fatalf("check after the scheduled job: exit %d %s", code, out)
	}
}
