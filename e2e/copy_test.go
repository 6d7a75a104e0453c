package e2e

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/strata-backup/strata/internal/testserver"
	"github.com/strata-backup/strata/pkg/demodisk"
)

// copyReply mirrors strata copy --json.
type copyReply struct {
	Backups        int      `json:"backups"`
	Copied         []string `json:"copied"`
	AlreadyThere   int      `json:"already_there"`
	Objects        int64    `json:"objects"`
	Bytes          int64    `json:"bytes"`
	ObjectsPresent int64    `json:"objects_present"`
	ChunksChecked  int64    `json:"chunks_checked"`
	MBPerSec       float64  `json:"mb_per_sec"`
}

// strata copy to a second S3 server process: three backups of two VMs,
// the copy killed once mid-way and resumed (it copies only what the
// target lacks), a second copy moves nothing, and with NATS stopped the
// copy alone restores every point bit-exact and lists a file.
func TestCopyToSecondSite(t *testing.T) {
	const cs = 64 << 10
	st := startStack(t, stackOptions{chunkSize: cs, env: []string{"STRATA_PACKS=true"}})
	site2 := testserver.Versity(t)
	dir := t.TempDir()
	web := filepath.Join(dir, "web.img")
	testserver.PartitionedImage(t, web)
	db := filepath.Join(dir, "db.img")
	if err := demodisk.Write(db, 24<<20, 91); err != nil {
		t.Fatal(err)
	}
	points := map[string]string{} // backup id → the disk as it was
	backup := func(vm, img string) string {
		t.Helper()
		id := strings.TrimSpace(strings.Split(st.mustCLI("backup", "--vm", vm, "--source", "file://"+img, "--wait"), "\n")[0])
		keep := filepath.Join(dir, id)
		b, err := os.ReadFile(img)
		if err == nil {
			err = os.WriteFile(keep, b, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
		points[id] = keep
		return id
	}
	backup("web", web)
	backup("db", db)
	f, _ := os.OpenFile(db, os.O_WRONLY, 0)
	junk := make([]byte, 3<<20)
	rand.Read(junk)
	f.WriteAt(junk, 5<<20)
	f.Close()
	backup("db", db)

	to := "s3://site2/copy?endpoint=" + site2.Endpoint
	env := append(append([]string{}, st.env...), "STRATA_COPY_S3_ACCESS_KEY="+site2.AccessKey, "STRATA_COPY_S3_SECRET_KEY="+site2.SecretKey)

	// Killed mid-copy: one object at a time, slowly, and a kill once the
	// first pack is at the second site.
	cmd := exec.Command(filepath.Join(binDir, "strata"), "copy", "--all", "--to", to, "--parallel", "1", "--rate-limit", "4M")
	cmd.Env = env
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	packs := func() int {
		n := 0
		filepath.Walk(filepath.Join(site2.Dir, "site2", "copy", "packs"), func(p string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() {
				n++
			}
			return nil
		})
		return n
	}
	deadline := time.Now().Add(60 * time.Second)
	for packs() == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if packs() == 0 {
		t.Fatal("the copy stored no pack in a minute")
	}

	var first, second copyReply
	if err := json.Unmarshal([]byte(st.cliEnv(env, "copy", "--all", "--to", to, "--json")), &first); err != nil {
		t.Fatal(err)
	}
	if first.Backups != 3 || len(first.Copied)+first.AlreadyThere != 3 || len(first.Copied) == 0 || first.ObjectsPresent == 0 || first.ChunksChecked == 0 {
		t.Fatalf("resumed copy: %+v (it must copy what the killed one left, and find what it stored)", first)
	}
	if err := json.Unmarshal([]byte(st.cliEnv(env, "copy", "--all", "--to", to, "--json")), &second); err != nil {
		t.Fatal(err)
	}
	if second.Objects != 0 || second.Bytes != 0 || len(second.Copied) != 0 || second.AlreadyThere != 3 {
		t.Fatalf("a second copy moved something: %+v", second)
	}
	t.Logf("resumed copy: %d objects, %d bytes (%.1f MB/s), %d already at the target; second copy: nothing", first.Objects, first.Bytes, first.MBPerSec, first.ObjectsPresent)

	// The second site alone: no NATS, the first site's S3 unreachable.
	st.natsSrv.Stop()
	alone := append(append([]string{}, st.env...), "STRATA_NATS_URL=nats://127.0.0.1:1", "STRATA_S3_ENDPOINT=http://127.0.0.1:1",
		"STRATA_S3_ACCESS_KEY="+site2.AccessKey, "STRATA_S3_SECRET_KEY="+site2.SecretKey)
	var listed []struct {
		ID string `json:"id"`
		VM string `json:"vm"`
	}
	if err := json.Unmarshal([]byte(st.cliEnv(alone, "ls", "--repo", to, "--json")), &listed); err != nil || len(listed) != 3 {
		t.Fatalf("ls --repo of the copy: %+v %v", listed, err)
	}
	for _, r := range listed {
		out := filepath.Join(t.TempDir(), "r.img")
		st.cliEnv(alone, "restore", "--repo", to, "--vm", r.VM, "--backup", r.ID, "--to", out)
		if sha256File(t, out) != sha256File(t, points[r.ID]) {
			t.Fatalf("restore of %s/%s from the copy differs", r.VM, r.ID)
		}
	}
	if out := st.cliEnv(alone, "files", "ls", "--repo", to, "--vm", "web", "/p1"); !strings.Contains(out, "file07.txt") {
		t.Fatalf("files ls --repo of the copy: %q", out)
	}

	// The disaster-recovery drill: a new deployment (its own NATS and
	// services) on the copy, the catalog rebuilt from it, restores through
	// the services, and backups go on deduplicated against what was copied.
	dr := startStack(t, stackOptions{chunkSize: cs, s3: &site2, bucket: "site2", env: []string{"STRATA_S3_PREFIX=copy/", "STRATA_PACKS=true"}})
	var rep struct {
		Records, Restored, Present, Failed int
		Refused                            []string
	}
	if err := json.Unmarshal([]byte(dr.mustCLI("catalog", "rebuild", "--json")), &rep); err != nil || rep.Restored != 3 || len(rep.Refused) != 0 {
		t.Fatalf("catalog rebuild from the copy: %+v %v", rep, err)
	}
	for _, r := range listed {
		dr.checkRestore(r.VM, r.ID, []string{points[r.ID]})
	}
	next := strings.TrimSpace(strings.Split(dr.mustCLI("backup", "--vm", "db", "--source", "file://"+db, "--wait"), "\n")[0])
	if rec := dr.record("db", next); rec.State != "verified" || rec.StoredBytes() != 0 {
		t.Fatalf("first backup at the recovered site: %s %s, %d bytes newly stored (want 0: the disk is as last copied)", rec.State, rec.Error, rec.StoredBytes())
	}
}

// A policy's copy target: after every verified backup the merge service
// copies the VM's backups there and applies the copy's own retention —
// the primary keeps 1, the copy 3 — and every point the copy keeps
// restores bit-exact from it alone.
func TestPolicyCopyKeepsMorePoints(t *testing.T) {
	const cs = 64 << 10
	st := startStack(t, stackOptions{chunkSize: cs, env: []string{"STRATA_PACKS=true"}})
	dir := t.TempDir()
	img := filepath.Join(dir, "app.img")
	if err := demodisk.Write(img, 8<<20, 5); err != nil {
		t.Fatal(err)
	}
	copyDir := filepath.Join(dir, "offsite")
	st.mustCLI("policy", "set", "--vm", "app", "--source", "file://"+img, "--schedule", "@every 1000h", "--keep-last", "1",
		"--copy-to", "dir://"+copyDir, "--copy-keep-last", "3")
	var ids []string
	points := map[string]string{}
	for i := 0; i < 4; i++ {
		f, _ := os.OpenFile(img, os.O_WRONLY, 0)
		junk := make([]byte, 256<<10)
		rand.Read(junk)
		f.WriteAt(junk, int64(i)<<20)
		f.Close()
		id := strings.TrimSpace(strings.Split(st.mustCLI("backup", "--vm", "app", "--source", "file://"+img, "--wait"), "\n")[0])
		keep := filepath.Join(dir, id)
		b, _ := os.ReadFile(img)
		os.WriteFile(keep, b, 0o644)
		ids, points[id] = append(ids, id), keep
	}
	noNATS := append(append([]string{}, st.env...), "STRATA_NATS_URL=nats://127.0.0.1:1")
	var inCopy []struct {
		ID string `json:"id"`
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, _, code := st.cli("ls", "--repo", "dir://"+copyDir, "--vm", "app", "--json")
		inCopy = nil
		if code == 0 {
			json.Unmarshal([]byte(out), &inCopy)
		}
		if len(inCopy) == 3 && inCopy[2].ID == ids[3] && len(st.records("app")) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("copy holds %+v, the primary %d backups; want the last 3 of %v and 1", inCopy, len(st.records("app")), ids)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for i, r := range inCopy {
		if r.ID != ids[i+1] {
			t.Fatalf("copy holds %+v, want %v", inCopy, ids[1:])
		}
		out := filepath.Join(t.TempDir(), "r.img")
		st.cliEnv(noNATS, "restore", "--repo", "dir://"+copyDir, "--vm", "app", "--backup", r.ID, "--to", out)
		if sha256File(t, out) != sha256File(t, points[r.ID]) {
			t.Fatalf("restore of %s from the policy's copy differs", r.ID)
		}
	}
}

// A copy into an Object-Locked bucket (STRATA_COPY_S3_OBJECT_LOCK): every
// object of the copy is retained, permanently deleting one with the
// target's own keys fails, and the copy restores bit-exact.
func TestCopyToLockedTarget(t *testing.T) {
	st := startStack(t, stackOptions{chunkSize: 64 << 10, env: []string{"STRATA_PACKS=true"}})
	site2 := testserver.VersityVersioned(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := demodisk.Write(img, 8<<20, 12); err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(strings.Split(st.mustCLI("backup", "--vm", "vault", "--source", "file://"+img, "--wait"), "\n")[0])
	to := "s3://vault?endpoint=" + site2.Endpoint
	env := append(append([]string{}, st.env...), "STRATA_COPY_S3_ACCESS_KEY="+site2.AccessKey, "STRATA_COPY_S3_SECRET_KEY="+site2.SecretKey,
		"STRATA_COPY_S3_OBJECT_LOCK=compliance", "STRATA_COPY_LOCK_DAYS=1h")
	var reply copyReply
	if err := json.Unmarshal([]byte(st.cliEnv(env, "copy", "--vm", "vault", "--to", to, "--json")), &reply); err != nil || len(reply.Copied) != 1 {
		t.Fatalf("copy to a locked bucket: %+v %v", reply, err)
	}
	ctx := context.Background()
	raw := rawS3(site2)
	out, err := raw.ListObjectVersions(ctx, &s3.ListObjectVersionsInput{Bucket: aws.String("vault")})
	if err != nil || len(out.Versions) < 4 {
		t.Fatalf("versions in the locked copy: %+v %v", out, err)
	}
	for _, v := range out.Versions {
		ret, err := raw.GetObjectRetention(ctx, &s3.GetObjectRetentionInput{Bucket: aws.String("vault"), Key: v.Key, VersionId: v.VersionId})
		if err != nil || ret.Retention == nil || ret.Retention.RetainUntilDate == nil || ret.Retention.RetainUntilDate.Before(time.Now().Add(50*time.Minute)) {
			t.Fatalf("%s in the locked copy: retention %+v %v", aws.ToString(v.Key), ret, err)
		}
		if _, err := raw.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String("vault"), Key: v.Key, VersionId: v.VersionId}); err == nil {
			t.Fatalf("permanently deleting %s from the locked copy succeeded", aws.ToString(v.Key))
		}
	}
	alone := append(append([]string{}, st.env...), "STRATA_NATS_URL=nats://127.0.0.1:1", "STRATA_S3_ACCESS_KEY="+site2.AccessKey, "STRATA_S3_SECRET_KEY="+site2.SecretKey)
	restored := filepath.Join(t.TempDir(), "r.img")
	st.cliEnv(alone, "restore", "--repo", to, "--vm", "vault", "--backup", id, "--to", restored)
	if sha256File(t, restored) != sha256File(t, img) {
		t.Fatal("restore from the locked copy differs")
	}
}
