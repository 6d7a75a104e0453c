package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/demodisk"
)

// BenchmarkBackupRestore: a 1 GiB image through the six processes on real
// nats-server and versitygw (`make bench`). Reports backup and restore
// MB/s (of logical disk bytes), chunk objects stored and the transfer
// worker's peak RSS.
func BenchmarkBackupRestore(b *testing.B) {
	st := startStack(b, stackOptions{})
	dir := b.TempDir()
	img := filepath.Join(dir, "disk.img")
	const size = 1 << 30
	if err := demodisk.Write(img, size, 42); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		vm := fmt.Sprintf("bench-%d", i)
		start := time.Now()
		out := st.mustCLI("backup", "--vm", vm, "--source", "file://"+img, "--wait")
		backup := time.Since(start)
		id := strings.TrimSpace(strings.Split(out, "\n")[0])
		to := filepath.Join(dir, "restored.img")
		start = time.Now()
		st.mustCLI("restore", "--vm", vm, "--backup", id, "--to", to)
		restore := time.Since(start)
		os.Remove(to)
		b.ReportMetric(float64(size)/1e6/backup.Seconds(), "backup_MB/s")
		b.ReportMetric(float64(size)/1e6/restore.Seconds(), "restore_MB/s")
	}
	b.StopTimer()
	b.ReportMetric(float64(len(st.storedChunks())), "chunks_stored")
	b.ReportMetric(float64(peakRSS(b, st.procs["transfer"][0].Cmd.Process.Pid))/(1<<20), "transfer_peak_RSS_MiB")
}

// peakRSS reads a process's high-water resident set size in bytes.
func peakRSS(tb testing.TB, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(line, "VmHWM:")), "%d", &kb)
			return kb << 10
		}
	}
	tb.Fatal("no VmHWM")
	return 0
}

// BenchmarkVerify (`make bench`): a 4 GiB generated image backed up with
// the default 256 KiB chunks, then certified (full source re-read plus
// every chunk downloaded, decoded and re-hashed) and chunk-verified.
// Reports certify seconds and chunk-verify MB/s of chunk bytes read back.
func BenchmarkVerify(b *testing.B) {
	st := startStack(b, stackOptions{chunkSize: 256 << 10})
	dir := b.TempDir()
	img := filepath.Join(dir, "disk.img")
	if err := demodisk.Write(img, 4<<30, 43); err != nil {
		b.Fatal(err)
	}
	out := st.mustCLI("backup", "--vm", "verify-bench", "--source", "file://"+img, "--wait")
	id := strings.TrimSpace(strings.Split(out, "\n")[0])
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		st.mustCLI("verify", "--vm", "verify-bench", "--backup", id, "--mode", "certify")
		b.ReportMetric(time.Since(start).Seconds(), "certify_s")
		var reply contracts.VerifyReply
		if err := json.Unmarshal([]byte(st.mustCLI("verify", "--vm", "verify-bench", "--backup", id, "--mode", "chunks", "--json")), &reply); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(reply.BytesChecked)/1e6/reply.Seconds, "chunk_verify_MB/s")
		b.ReportMetric(float64(reply.ChunksChecked), "chunks")
	}
}
