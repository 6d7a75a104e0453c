package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-backup/strata/pkg/demodisk"
)

// BenchmarkScale (`make bench-scale`): backup throughput with 1, 2 and 4
// transfer workers, each throttled by STRATA_TRANSFER_RATE_LIMIT, so the
// figure shows how the work queue spreads segments over workers rather
// than how fast this machine's disk is.
func BenchmarkScale(b *testing.B) {
	const size = 512 << 20
	const limit = 16_000_000
	img := filepath.Join(b.TempDir(), "disk.img")
	if err := demodisk.Write(img, size, 77); err != nil {
		b.Fatal(err)
	}
	var one float64
	for _, workers := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			env := []string{fmt.Sprintf("STRATA_TRANSFER_RATE_LIMIT=%d", limit), "STRATA_TRANSFER_CONCURRENCY=1"}
			st := startStack(b, stackOptions{transfers: workers, extraEnv: map[string][]string{"transfer": env}})
			for i := 0; i < b.N; i++ {
				start := time.Now()
				out := st.mustCLI("backup", "--vm", fmt.Sprintf("scale-%d", i), "--source", "file://"+img, "--wait")
				mbps := float64(size) / 1e6 / time.Since(start).Seconds()
				if strings.TrimSpace(out) == "" {
					b.Fatal("no backup id")
				}
				if workers == 1 {
					one = mbps
				}
				b.ReportMetric(mbps, "MB/s")
				if one > 0 {
					b.ReportMetric(mbps/one, "x_one_worker")
				}
			}
		})
	}
}
