package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/testserver"
)

// The initial seed (Xen Orchestra's name for it): the first full goes to a
// local directory (STRATA_STORE_DIR), its files are carried into an empty
// bucket by a plain upload loop — any tool would do — the services are
// pointed at the bucket, and the next backup through the dirty bitmap is
// an incremental against the seeded full that uploads only the changed
// chunks. Both points restore bit-exact from the bucket.
func TestInitialSeed(t *testing.T) {
	const cs = 64 << 10
	seed := t.TempDir()
	st := startStack(t, stackOptions{chunkSize: cs, env: []string{"STRATA_PACKS=true", "STRATA_STORE_DIR=" + seed}})
	dir := t.TempDir()
	raw0, qcow := qcowWithBitmap(t, dir, "point0", 64<<20, 33)
	addr, nbdProc := testserver.QemuNBD(t, qcow, "qcow2", "b1")
	src := func() string { return "nbd://" + addr + "/disk?bitmap=b1" }
	backup := func() contracts.BackupRecord {
		t.Helper()
		id := strings.TrimSpace(strings.Split(st.mustCLI("backup", "--vm", "far", "--source", src(), "--wait"), "\n")[0])
		return st.record("far", id)
	}
	full := backup()
	if full.Kind != contracts.KindFull || full.State != contracts.StateVerified {
		t.Fatalf("seed full: %s %s %s", full.Kind, full.State, full.Error)
	}

	// Carry the seed: every file of the directory becomes the object of
	// the same name in the (empty) bucket.
	for _, name := range services {
		for _, p := range st.procs[name] {
			p.Stop()
		}
	}
	ctx := context.Background()
	raw := rawS3(st.s3)
	if _, err := raw.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(st.bucket)}); err != nil {
		t.Fatal(err)
	}
	uploaded := 0
	err := filepath.Walk(seed, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(seed, p)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		_, err = raw.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(st.bucket), Key: aws.String(filepath.ToSlash(rel)), Body: strings.NewReader(string(b))})
		uploaded++
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("seed: %d files uploaded", uploaded)

	// Point the services (and the CLI) at the bucket.
	st.env = append(st.env, "STRATA_STORE_DIR=")
	for _, name := range services {
		st.startService(name)
	}
	st.waitMicro()
	os.RemoveAll(seed) // nothing may still read the seed

	var cmds []string
	for i := 0; i < 20; i++ {
		cmds = append(cmds, "-c", fmt.Sprintf("write -P %d %d %d", i+1, int64(i)*(3<<20)+int64(i%5)*cs, cs))
	}
	nbdProc.Stop()
	testserver.Qemu(t, "qemu-io", append([]string{"-f", "qcow2"}, append(cmds, qcow)...)...)
	raw1 := filepath.Join(dir, "point1.raw")
	testserver.Qemu(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow, raw1)
	addr, _ = testserver.QemuNBD(t, qcow, "qcow2", "b1")
	inc := backup()
	if inc.Kind != contracts.KindIncremental || inc.Parent != full.ID || inc.State != contracts.StateVerified {
		t.Fatalf("first backup to the bucket: kind %s parent %s (want %s) state %s %s %s", inc.Kind, inc.Parent, full.ID, inc.State, inc.Error, inc.FullReason)
	}
	if d := inc.Disks[0]; d.UploadedChunks != 20 {
		t.Fatalf("the incremental after the seed uploaded %d chunks, 20 changed", d.UploadedChunks)
	}
	st.checkRestore("far", full.ID, []string{raw0})
	st.checkRestore("far", inc.ID, []string{raw1})
}
