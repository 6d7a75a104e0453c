package e2e

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/strata-backup/strata/pkg/demodisk"
)

// resticVersion is the restic the restore benchmark compares against.
const resticVersion = "v0.18.1"

// restic returns a restic binary, built once per machine into the same
// cache as the servers (go install; the bench only, never the tests).
func restic(b *testing.B) string {
	b.Helper()
	home, _ := os.UserHomeDir()
	cache := filepath.Join(home, ".cache", "strata", "bin")
	bin := filepath.Join(cache, "restic-"+resticVersion)
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	tmp := b.TempDir()
	cmd := exec.Command("go", "install", "github.com/restic/restic/cmd/restic@"+resticVersion)
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOBIN="+tmp)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go install restic %s: %v\n%s", resticVersion, err, out)
	}
	os.MkdirAll(cache, 0o755)
	if err := os.Rename(filepath.Join(tmp, "restic"), bin); err != nil {
		b.Fatal(err)
	}
	return bin
}

// BenchmarkRestoreVsRestic (`make bench`): the 1 GiB bench image backed up
// by Strata and by restic into the same kind of repository — a local
// directory, then the same versitygw S3 server — and restored by each:
// `strata restore` with 1, 4 and 8 fetches at once, `restic dump` of the
// image (restic's fastest way to one file). Also the NBD sequential read
// of `strata serve` (qemu-img convert of the export to a file). Every
// restore is checked against the image's hash. Reports MB/s of disk bytes
// and Strata's best over restic's.
func BenchmarkRestoreVsRestic(b *testing.B) {
	rbin := restic(b)
	dir := b.TempDir()
	img := filepath.Join(dir, "disk.img")
	const size = 1 << 30
	if err := demodisk.Write(img, size, 42); err != nil {
		b.Fatal(err)
	}
	want := sha256File(b, img)
	mbps := func(d time.Duration) float64 { return float64(size) / 1e6 / d.Seconds() }
	check := func(path, who string) {
		if got := sha256File(b, path); got != want {
			b.Fatalf("%s restored an image that differs from the backed-up one", who)
		}
		os.Remove(path)
	}
	b.ResetTimer()
	for _, kind := range []string{"dir", "s3"} {
		var env []string
		if kind == "dir" {
			env = []string{"STRATA_STORE_DIR=" + filepath.Join(dir, "strata-repo")}
		}
		st := startStack(b, stackOptions{env: env})
		st.mustCLI("backup", "--vm", "bench", "--source", "file://"+img, "--wait")
		out := filepath.Join(dir, "restored.img")
		best := 0.0
		for _, p := range []int{1, 4, 8} {
			start := time.Now()
			st.mustCLI("restore", "--vm", "bench", "--backup", "latest", "--to", out, "--parallel", fmt.Sprint(p))
			r := mbps(time.Since(start))
			check(out, fmt.Sprintf("strata restore --parallel %d", p))
			b.ReportMetric(r, fmt.Sprintf("%s_strata_p%d_MB/s", kind, p))
			best = max(best, r)
		}
		addr, stop := st.serveBackup("bench")
		start := time.Now()
		if o, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "raw", "nbd://"+addr+"/disk0", out).CombinedOutput(); err != nil {
			b.Fatalf("qemu-img convert of the export: %v\n%s", err, o)
		}
		b.ReportMetric(mbps(time.Since(start)), kind+"_nbd_convert_MB/s")
		stop()
		check(out, "qemu-img convert of the export")

		// restic into the same kind of repository.
		renv := append(os.Environ(), "RESTIC_PASSWORD=bench", "RESTIC_CACHE_DIR="+filepath.Join(dir, "restic-cache-"+kind))
		if kind == "dir" {
			renv = append(renv, "RESTIC_REPOSITORY="+filepath.Join(dir, "restic-repo"))
		} else {
			renv = append(renv, "RESTIC_REPOSITORY=s3:"+st.s3.Endpoint+"/restic-bench",
				"AWS_ACCESS_KEY_ID="+st.s3.AccessKey, "AWS_SECRET_ACCESS_KEY="+st.s3.SecretKey, "AWS_DEFAULT_REGION=us-east-1")
		}
		runRestic := func(stdout io.Writer, args ...string) {
			cmd := exec.Command(rbin, args...)
			cmd.Env = renv
			var stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = stdout, &stderr
			if err := cmd.Run(); err != nil {
				b.Fatalf("restic %v: %v\n%s", args, err, stderr.String())
			}
		}
		runRestic(io.Discard, "init")
		runRestic(io.Discard, "backup", "--no-scan", img)
		f, err := os.Create(out)
		if err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		runRestic(f, "dump", "latest", img)
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
		r := mbps(time.Since(start))
		check(out, "restic dump")
		b.ReportMetric(r, kind+"_restic_dump_MB/s")
		b.ReportMetric(best/r, kind+"_strata_over_restic")
	}
}
