package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-backup/strata/internal/testserver"
)

// BenchmarkFiles (`make bench`): a 4 GiB GPT disk whose ext4 holds a
// 1 GiB tree (256 files of 4 MiB) and one small file, backed up through
// the stack into versitygw S3. Reports `files cat` of the small file —
// the whole command's time to its output, and the bytes of disk it
// fetched (the point: not the whole disk) — and `files get` of the tree
// in MB/s. Every file got back is compared.
func BenchmarkFiles(b *testing.B) {
	work := b.TempDir()
	tree := filepath.Join(work, "tree")
	os.MkdirAll(filepath.Join(tree, "data"), 0o755)
	rng := rand.NewChaCha8([32]byte{7})
	const files, fileSize = 256, 4 << 20
	buf := make([]byte, fileSize)
	for i := 0; i < files; i++ {
		rng.Read(buf)
		os.WriteFile(filepath.Join(tree, "data", fmt.Sprintf("f%03d.bin", i)), buf, 0o644)
	}
	os.WriteFile(filepath.Join(tree, "small.txt"), []byte("the file someone deleted yesterday\n"), 0o644)
	img := filepath.Join(work, "disk.img")
	os.WriteFile(img, nil, 0o644)
	os.Truncate(img, 4<<30)
	testserver.Tool(b, "label: gpt\nstart=2048, type=linux\n", "sfdisk", "--quiet", img)
	testserver.Tool(b, "", "mkfs.ext4", "-q", "-F", "-d", tree, "-E", "offset=1048576", img, fmt.Sprintf("%dk", (4<<30-2<<20)>>10))

	st := startStack(b, stackOptions{})
	st.mustCLI("backup", "--vm", "fb", "--source", "file://"+img, "--wait")
	b.ResetTimer()

	cmd := exec.Command(filepath.Join(binDir, "strata"), "files", "cat", "--vm", "fb", "--stats", "/p1/small.txt")
	cmd.Env = st.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	if err := cmd.Run(); err != nil {
		b.Fatalf("files cat: %v\n%s", err, errb.String())
	}
	ttfb := time.Since(start)
	if out.String() != "the file someone deleted yesterday\n" {
		b.Fatalf("files cat: %q", out.String())
	}
	var chunks int
	var fetched, disk int64
	if _, err := fmt.Sscanf(errb.String()[strings.Index(errb.String(), "fetched"):], "fetched %d chunks, %d bytes of the %d-byte disk", &chunks, &fetched, &disk); err != nil {
		b.Fatalf("files cat --stats: %q: %v", errb.String(), err)
	}
	b.ReportMetric(ttfb.Seconds()*1000, "cat_small_ms")
	b.ReportMetric(float64(fetched)/(1<<20), "cat_small_fetched_MiB")

	dst := filepath.Join(work, "got")
	os.MkdirAll(dst, 0o755)
	start = time.Now()
	st.mustCLI("files", "get", "--vm", "fb", "/p1/data", "--to", dst)
	get := time.Since(start)
	b.ReportMetric(float64(files*fileSize)/1e6/get.Seconds(), "get_tree_MB/s")
	b.StopTimer()
	for i := 0; i < files; i++ {
		want, _ := os.ReadFile(filepath.Join(tree, "data", fmt.Sprintf("f%03d.bin", i)))
		got, _ := os.ReadFile(filepath.Join(dst, "data", fmt.Sprintf("f%03d.bin", i)))
		if !bytes.Equal(got, want) {
			b.Fatalf("f%03d.bin differs", i)
		}
	}
}
