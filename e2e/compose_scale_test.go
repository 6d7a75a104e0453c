package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// BenchmarkComposeScale (`make bench-scale`): the compose deployment with
// 1, 2, 4 and 8 transfer workers, each limited to STRATA_BENCH_WORKER_CPUS
// of a core (compose `cpus:`, default 0.25) as a stand-in for workers on
// separate hosts: a 1 GiB full of new data per step, its MB/s, the
// speed-up over one worker, and each worker's share of the backup's
// segments (from the workers' own log lines).
func BenchmarkComposeScale(b *testing.B) {
	cpus := os.Getenv("STRATA_BENCH_WORKER_CPUS")
	if cpus == "" {
		cpus = "0.25"
	}
	c := startCompose(b, "STRATA_TRANSFER_CPUS="+cpus, "STRATA_TRANSFER_RATE_LIMIT=0", "STRATA_TRANSFER_CONCURRENCY=2", "STRATA_TRANSFER_ACK_WAIT=60s")
	var one float64
	for _, n := range []int{1, 2, 4, 8} {
		b.Run(fmt.Sprintf("workers=%d", n), func(b *testing.B) {
			c.run("up", "-d", "--scale", fmt.Sprintf("transfer=%d", n), "--no-recreate")
			time.Sleep(5 * time.Second) // new workers register their pull requests
			for i := 0; i < b.N; i++ {
				vm := fmt.Sprintf("scale-%d-%d", n, i)
				path, src := c.image(vm+".img", 1<<30, uint64(1000+10*n+i))
				start := time.Now()
				out := c.mustCLI("backup", "--vm", vm, "--source", src, "--wait")
				secs := time.Since(start).Seconds()
				os.Remove(path)
				id := strings.TrimSpace(strings.Split(out, "\n")[0])
				rec := c.record(vm, id)
				mbps := float64(1<<30) / 1e6 / secs
				var shares []string
				for _, ctr := range c.containers("transfer") {
					logs := docker(b, "logs", ctr)
					shares = append(shares, fmt.Sprint(strings.Count(logs, `"backup":"`+id+`","disk"`)))
				}
				b.Logf("%d workers at %s CPU each: %.0f MB/s, segments per worker %s of %d", n, cpus, mbps, strings.Join(shares, "/"), rec.Segments())
				b.ReportMetric(mbps, "MB/s")
				if n == 1 {
					one = mbps
				}
				if one > 0 {
					b.ReportMetric(mbps/one, "x_one_worker")
				}
			}
		})
	}
}
