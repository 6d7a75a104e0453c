package e2e

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/google/uuid"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/demodisk"
	"github.com/strata-backup/strata/pkg/manifest"
)

// Object Lock on a real lock-capable S3 server (versitygw, versioned),
// attacked through the S3 API with the deployment's own keys:
//   - permanently deleting any version of any object a backup needs, and
//     shortening its retention, fail;
//   - after a delete marker on every object and garbage PUT over every
//     key, restore (through the services, and --repo with no NATS) is
//     bit-exact and ls --repo lists the backups;
//   - prune refuses a backup under lock, with its date; once the lock has
//     passed it prunes, and the packs a newer backup still references have
//     had their retention extended (by the newer backup's commit);
//   - gc --grace 0s deletes nothing under retention and reports what it
//     skipped; after the lock time it frees exactly the unreferenced packs;
//     compaction leaves locked packs alone.
func TestObjectLock(t *testing.T) {
	const cs = 64 << 10
	// Backups stay immutable 12 s, dates set in generations of 3 s: every
	// object is retained 15-18 s past its write.
	const period, step = 12 * time.Second, 3 * time.Second
	st := startStack(t, stackOptions{chunkSize: cs, versioned: true, env: []string{
		"STRATA_PACKS=true", "STRATA_S3_OBJECT_LOCK=compliance", "STRATA_LOCK_DAYS=12s", "STRATA_LOCK_STEP=3s"}})
	ctx := context.Background()
	raw := rawS3(st.s3)
	bucket := aws.String(st.bucket)
	type version struct{ key, id string }
	versions := func(prefix string) (vs []version) {
		t.Helper()
		p := s3.NewListObjectVersionsPaginator(raw, &s3.ListObjectVersionsInput{Bucket: bucket, Prefix: aws.String(prefix)})
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range page.Versions {
				vs = append(vs, version{aws.ToString(v.Key), aws.ToString(v.VersionId)})
			}
		}
		return vs
	}
	retainedUntil := func(v version) time.Time {
		t.Helper()
		out, err := raw.GetObjectRetention(ctx, &s3.GetObjectRetentionInput{Bucket: bucket, Key: aws.String(v.key), VersionId: aws.String(v.id)})
		if err != nil || out.Retention == nil || out.Retention.RetainUntilDate == nil {
			t.Fatalf("retention of %s: %+v %v", v.key, out, err)
		}
		return *out.Retention.RetainUntilDate
	}
	packSet := func() map[string]bool {
		set := map[string]bool{}
		for _, v := range versions("packs/") {
			set[filepath.Base(v.key)] = true
		}
		return set
	}

	dir := t.TempDir()
	img := filepath.Join(dir, "web.img")
	if err := demodisk.Write(img, 16<<20, 81); err != nil {
		t.Fatal(err)
	}
	point := func(name string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		b, err := os.ReadFile(img)
		if err == nil {
			err = os.WriteFile(p, b, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	change := func(off int64) {
		t.Helper()
		f, err := os.OpenFile(img, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2<<20)
		rand.Read(buf)
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	backup := func() contracts.BackupRecord {
		t.Helper()
		out := st.mustCLI("backup", "--vm", "web", "--source", "file://"+img, "--wait")
		rec := st.record("web", strings.TrimSpace(strings.Split(out, "\n")[0]))
		if rec.State != contracts.StateVerified {
			t.Fatalf("backup: %s %s", rec.State, rec.Error)
		}
		return rec
	}

	b1 := backup()
	change(3 << 20)
	b2 := backup()

	// Prune under lock: refused, with the date; nothing deleted.
	var pr contracts.PruneReply
	json.Unmarshal([]byte(st.mustCLI("prune", "--vm", "web", "--keep-last", "1", "--yes", "--json")), &pr)
	if len(pr.Pruned) != 0 || len(pr.Locked) != 1 || pr.Locked[0].ID != b1.ID || !pr.Locked[0].Until.After(time.Now()) || len(pr.Kept) != 1 || pr.Kept[0] != b2.ID {
		t.Fatalf("prune of a locked backup: %+v", pr)
	}
	if _, errOut, code := st.cli("rm", "--vm", "web", "--backup", b1.ID); code == 0 {
		t.Fatalf("rm of a locked, verified backup succeeded: %s", errOut)
	}

	// Two orphan packs (what a worker killed after its upload leaves): one
	// new, one whose id says an hour ago but whose retention was extended.
	orphan := func(made time.Time, until time.Time) string {
		t.Helper()
		id := uuid.Must(uuid.NewV7FromReader(rand.Reader))
		ms := made.UnixMilli()
		for i := 0; i < 6; i++ {
			id[i] = byte(ms >> (40 - 8*i))
		}
		name := strings.ReplaceAll(id.String(), "-", "")
		key := "packs/" + name[:2] + "/" + name
		body := make([]byte, 100<<10)
		rand.Read(body)
		if _, err := raw.PutObject(ctx, &s3.PutObjectInput{Bucket: bucket, Key: aws.String(key), Body: strings.NewReader(string(body)),
			ObjectLockMode: types.ObjectLockModeCompliance, ObjectLockRetainUntilDate: aws.Time(until), ChecksumAlgorithm: types.ChecksumAlgorithmCrc32c}); err != nil {
			t.Fatalf("orphan pack: %v", err)
		}
		return name
	}
	orphanNew := orphan(time.Now(), time.Now().Add(period+2*step))
	orphanOld := orphan(time.Now().Add(-time.Hour), time.Now().Add(period))
	var gc contracts.GCReply
	json.Unmarshal([]byte(st.mustCLI("gc", "--grace", "0s", "--json")), &gc)
	if gc.PacksDeleted != 0 || gc.Deleted != 0 || gc.Locked != 2 || !packSet()[orphanNew] || !packSet()[orphanOld] {
		t.Fatalf("gc under lock: %+v", gc)
	}

	// After b1's and b2's locks (b2's ends at most a generation or two
	// after b1's): a third backup references their packs and extends what
	// it needs; prune then removes b1 and b2.
	time.Sleep(time.Until(pr.Locked[0].Until.Add(2*step)) + time.Second)
	change(9 << 20)
	b3 := backup()
	p3 := point("p3")
	pr = contracts.PruneReply{}
	json.Unmarshal([]byte(st.mustCLI("prune", "--vm", "web", "--keep-last", "1", "--yes", "--json")), &pr)
	if len(pr.Pruned) != 2 || len(pr.Locked) != 0 {
		t.Fatalf("prune after the locks passed: %+v", pr)
	}
	var named = map[string]bool{}
	var b3Manifest []byte
	{
		o, err := raw.GetObject(ctx, &s3.GetObjectInput{Bucket: bucket, Key: aws.String(b3.Disks[0].Manifest)})
		if err != nil {
			t.Fatal(err)
		}
		b3Manifest, _ = io.ReadAll(o.Body)
		o.Body.Close()
	}
	m, err := manifest.Decode(b3Manifest)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range m.Data() {
		if l := r.Loc; l.InPack() {
			named[l.Pack.String()] = true
		}
	}
	extended := 0
	for _, v := range versions("packs/") {
		if !named[filepath.Base(v.key)] {
			continue
		}
		if until := retainedUntil(v); until.Before(b3.CreatedAt.Add(period)) {
			t.Fatalf("pack %s that backup %s needs is retained only until %v", v.key, b3.ID, until)
		}
		if _, err := raw.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: bucket, Key: aws.String(v.key), VersionId: aws.String(v.id)}); err == nil {
			t.Fatalf("deleting %s, which backup %s needs, succeeded", v.key, b3.ID)
		}
		if id, err := uuid.Parse(filepath.Base(v.key)); err == nil && time.Unix(id.Time().UnixTime()).Before(b3.CreatedAt) {
			extended++ // an older backup's pack, kept locked for b3
		}
	}
	if extended == 0 {
		t.Fatalf("backup %s references no pack of the backups before it", b3.ID)
	}
	t.Logf("backup %s needs %d packs, %d of them older backups' with extended retention", b3.ID, len(named), extended)

	// Compaction leaves locked packs alone: every pack b1/b2 wrote that b3
	// still uses is sparse now, and locked.
	gc = contracts.GCReply{}
	json.Unmarshal([]byte(st.mustCLI("gc", "--grace", "0s", "--repack-below", "1", "--json")), &gc)
	if gc.PacksRepacked != 0 || gc.Locked == 0 {
		t.Fatalf("compaction under lock: %+v", gc)
	}
	// What nobody references is freed once its lock has passed: exactly
	// the packs b3 does not name (the orphans included).
	left := packSet()
	for p := range named {
		if !left[p] {
			t.Fatalf("gc deleted pack %s that backup %s references", p, b3.ID)
		}
	}
	if len(left) != len(named) {
		var extra []string
		for p := range left {
			if !named[p] {
				extra = append(extra, p)
			}
		}
		t.Fatalf("gc after the locks passed left %d packs nobody references: %v (%+v)", len(extra), extra, gc)
	}
	st.checkRestore("web", b3.ID, []string{p3})

	change(12 << 20)
	b4 := backup()
	p4 := point("p4")
	points := map[string]string{b3.ID: p3, b4.ID: p4}

	// The attack, with the deployment's keys.
	all := versions("")
	if len(all) < 10 {
		t.Fatalf("only %d object versions", len(all))
	}
	for _, v := range all {
		if strings.HasPrefix(v.key, "gc/") || strings.HasPrefix(v.key, "moved/") {
			continue
		}
		if _, err := raw.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: bucket, Key: aws.String(v.key), VersionId: aws.String(v.id)}); err == nil {
			t.Fatalf("permanently deleting %s version %s succeeded", v.key, v.id)
		}
		if _, err := raw.PutObjectRetention(ctx, &s3.PutObjectRetentionInput{Bucket: bucket, Key: aws.String(v.key), VersionId: aws.String(v.id),
			Retention: &types.ObjectLockRetention{Mode: types.ObjectLockRetentionModeCompliance, RetainUntilDate: aws.Time(time.Now().Add(time.Second))}}); err == nil {
			t.Fatalf("shortening the retention of %s succeeded", v.key)
		}
	}
	for _, v := range all {
		if _, err := raw.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: bucket, Key: aws.String(v.key)}); err != nil {
			t.Fatalf("delete marker on %s: %v", v.key, err)
		}
		if _, err := raw.PutObject(ctx, &s3.PutObjectInput{Bucket: bucket, Key: aws.String(v.key), Body: strings.NewReader("ransom note: pay up")}); err != nil {
			t.Fatalf("garbage over %s: %v", v.key, err)
		}
	}
	t.Logf("attacked %d object versions: a delete marker and garbage over each", len(all))
	for id, want := range points {
		st.checkRestore("web", id, []string{want})
	}
	repoURL := "s3://" + st.bucket + "?endpoint=" + st.s3.Endpoint
	noNATS := append(append([]string{}, st.env...), "STRATA_NATS_URL=nats://127.0.0.1:1")
	var listed []contracts.BackupRecord
	if err := json.Unmarshal([]byte(st.cliEnv(noNATS, "ls", "--repo", repoURL, "--vm", "web", "--json")), &listed); err != nil || len(listed) != 2 {
		t.Fatalf("ls --repo after the attack: %+v %v", listed, err)
	}
	for id, want := range points {
		out := filepath.Join(t.TempDir(), "r.img")
		st.cliEnv(noNATS, "restore", "--repo", repoURL, "--vm", "web", "--backup", id, "--to", out)
		if sha256File(t, out) != sha256File(t, want) {
			t.Fatalf("restore --repo of %s after the attack differs", id)
		}
	}

}
