package e2e

import (
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/testserver"
	"github.com/strata-backup/strata/pkg/demodisk"
)

// BenchmarkAmplification (`make bench`): a 4 GiB disk on real qemu-nbd, a
// full backup, then 2 % of the disk changed — clustered runs of 64 KiB to
// 2 MiB plus a few hundred scattered 4 KiB writes, all incompressible —
// then an incremental through the dirty bitmap. Per chunk size it reports
// the incremental's time as a share of the full's and the storage
// amplification: bytes newly stored ÷ bytes changed.
//
// Two disks: "sparse", the generated image (a fifth holes, a fifth written
// zeros, a fifth repeated blocks: the full reads 60 % of the disk and
// uploads under half of it, so 2 % of the disk is 3.3 % of what the full
// reads), and "allocated", the same mix without holes or zeros (every block
// holds data). The change pattern is the same on both: 2 % of the disk.
func BenchmarkAmplification(b *testing.B) {
	for _, disk := range []struct {
		name  string
		write func(path string, size int64, seed uint64) error
	}{{"sparse", demodisk.Write}, {"allocated", demodisk.WriteAllocated}} {
		b.Run("disk="+disk.name, func(b *testing.B) { amplification(b, disk.write) })
	}
}

func amplification(b *testing.B, write func(path string, size int64, seed uint64) error) {
	const size = 4 << 30
	dir := b.TempDir()
	raw := filepath.Join(dir, "base.raw")
	if err := write(raw, size, 99); err != nil {
		b.Fatal(err)
	}
	base := filepath.Join(dir, "base.qcow2")
	testserver.Qemu(b, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, base)
	os.Remove(raw)

	// The change pattern, the same for every chunk size.
	rng := mrand.New(mrand.NewPCG(1, 2))
	var cmds []string
	var changed int64
	for i := 0; changed < size/50-300*4096; i++ {
		n := int64(64<<10) << rng.IntN(6) // 64 KiB … 2 MiB
		off := rng.Int64N(size-n) &^ (4096 - 1)
		src := filepath.Join(dir, fmt.Sprintf("run%d.bin", i))
		writeRandom(b, src, n)
		cmds = append(cmds, "-c", fmt.Sprintf("write -s %s %d %d", src, off, n))
		changed += n
	}
	small := filepath.Join(dir, "small.bin")
	writeRandom(b, small, 4096)
	for i := 0; i < 300; i++ {
		cmds = append(cmds, "-c", fmt.Sprintf("write -s %s %d 4096", small, rng.Int64N(size/4096)*4096))
		changed += 4096
	}

	for _, cs := range []int{64 << 10, 256 << 10, 1 << 20, 4 << 20} {
		b.Run(fmt.Sprintf("chunk=%dKiB", cs>>10), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				st := startStack(b, stackOptions{chunkSize: cs})
				overlay := filepath.Join(dir, fmt.Sprintf("overlay-%d.qcow2", cs))
				testserver.Qemu(b, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay)
				testserver.Qemu(b, "qemu-img", "bitmap", "--add", overlay, "b1")
				addr, p := testserver.QemuNBD(b, overlay, "qcow2", "b1")
				start := time.Now()
				out := st.mustCLI("backup", "--vm", "amp", "--source", "nbd://"+addr+"/disk?bitmap=b1", "--wait")
				full := time.Since(start)
				fullRec := st.record("amp", strings.TrimSpace(strings.Split(out, "\n")[0]))
				p.Stop()
				testserver.Qemu(b, "qemu-io", append([]string{"-f", "qcow2"}, append(cmds, overlay)...)...)
				addr, p = testserver.QemuNBD(b, overlay, "qcow2", "b1")
				start = time.Now()
				out = st.mustCLI("backup", "--vm", "amp", "--source", "nbd://"+addr+"/disk?bitmap=b1", "--wait")
				incr := time.Since(start)
				p.Stop()
				rec := st.record("amp", strings.TrimSpace(strings.Split(out, "\n")[0]))
				// An incremental of the unchanged disk (a fresh bitmap): what
				// every backup pays whatever changed.
				testserver.Qemu(b, "qemu-img", "bitmap", "--add", overlay, "b2")
				addr, p = testserver.QemuNBD(b, overlay, "qcow2", "b2")
				start = time.Now()
				out = st.mustCLI("backup", "--vm", "amp", "--source", "nbd://"+addr+"/disk?bitmap=b2", "--wait")
				noop := time.Since(start)
				p.Stop()
				if r := st.record("amp", strings.TrimSpace(strings.Split(out, "\n")[0])); r.Kind != contracts.KindIncremental || r.Disks[0].ReadBytes != 0 {
					b.Fatalf("backup of the unchanged disk: %s, read %d bytes", r.Kind, r.Disks[0].ReadBytes)
				}
				os.Remove(overlay)
				b.ReportMetric(full.Seconds(), "full_s")
				b.ReportMetric(incr.Seconds(), "incr_s")
				b.ReportMetric(100*incr.Seconds()/full.Seconds(), "incr_%_of_full")
				// The share of the full's chunk uploads the incremental repeats:
				// where incr_%_of_full lands when a chunk costs the same in both
				// and a backup's fixed cost (noop_s) is nothing.
				b.ReportMetric(100*float64(rec.Disks[0].UploadedChunks)/float64(fullRec.Disks[0].UploadedChunks), "chunks_%_of_full")
				b.ReportMetric(noop.Seconds(), "noop_s")
				b.ReportMetric(float64(rec.StoredBytes())/float64(changed), "amplification")
				b.ReportMetric(float64(rec.Disks[0].ReadBytes)/float64(changed), "read_per_changed")
			}
		})
	}
}

func writeRandom(tb testing.TB, path string, n int64) {
	buf := make([]byte, n)
	rand.Read(buf)
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		tb.Fatal(err)
	}
}
