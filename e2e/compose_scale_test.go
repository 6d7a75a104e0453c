package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkComposeScale (`make bench-scale`): the compose deployment with
// 1, 2, 3, 4 and 8 transfer workers, each limited to STRATA_BENCH_WORKER_CPUS
// of a core (compose `cpus:`, default 0.1) as a stand-in for workers on
// separate hosts (a tenth of a core each, so that four of them use less
// than half of this 2-core machine and the workers, not the S3 server,
// NATS, merge and the verifier sharing it, are what limits): 1 GiB fulls
// of new data per step, the best MB/s, the speed-up over one worker, and
// each worker's share of the backup's segments (from the workers' own
// log lines) and of the transfer CPU.
func BenchmarkComposeScale(b *testing.B) {
	cpus := os.Getenv("STRATA_BENCH_WORKER_CPUS")
	if cpus == "" {
		cpus = "0.1"
	}
	c := startCompose(b, "STRATA_TRANSFER_CPUS="+cpus, "STRATA_TRANSFER_RATE_LIMIT=0", "STRATA_TRANSFER_CONCURRENCY=2", "STRATA_TRANSFER_ACK_WAIT=60s")
	// Best of STRATA_BENCH_ROUNDS fulls per step (default 3): the workers'
	// cgroups charge them 1.4–2.4 s of CPU for the same GiB from one run
	// to the next on this shared host, which a single round reports as
	// a change of speed.
	rounds, _ := strconv.Atoi(os.Getenv("STRATA_BENCH_ROUNDS"))
	rounds = max(rounds, 1)
	if os.Getenv("STRATA_BENCH_ROUNDS") == "" {
		rounds = 3
	}
	var one float64
	seq := 0
	for _, n := range []int{1, 2, 3, 4, 8} {
		b.Run(fmt.Sprintf("workers=%d", n), func(b *testing.B) {
			c.run("up", "-d", "--scale", fmt.Sprintf("transfer=%d", n), "--no-recreate")
			time.Sleep(5 * time.Second) // new workers register their pull requests
			best := 0.0
			for r := 0; r < rounds*b.N; r++ {
				seq++ // a new VM and new data every round: always a full
				vm := fmt.Sprintf("scale-%d-%d", n, seq)
				path, src := c.image(vm+".img", 1<<30, uint64(1000+seq))
				workers := c.containers("transfer")
				cpu0 := containerCPU(workers)
				start := time.Now()
				out := c.mustCLI("backup", "--vm", vm, "--source", src, "--wait")
				secs := time.Since(start).Seconds()
				os.Remove(path)
				id := strings.TrimSpace(strings.Split(out, "\n")[0])
				rec := c.record(vm, id)
				mbps := float64(1<<30) / 1e6 / secs
				cpu1 := containerCPU(workers)
				var shares, cpuShares []string
				var total time.Duration
				for i := range workers {
					total += cpu1[i] - cpu0[i]
				}
				for i, ctr := range workers {
					logs := docker(b, "logs", ctr)
					shares = append(shares, fmt.Sprint(strings.Count(logs, `"backup":"`+id+`","disk"`)))
					if total > 0 {
						cpuShares = append(cpuShares, fmt.Sprintf("%.0f%%", 100*float64(cpu1[i]-cpu0[i])/float64(total)))
					}
				}
				b.Logf("%d workers at %s CPU each, round %d: %.0f MB/s, segments per worker %s of %d, share of the transfer CPU %s (%v in all)",
					n, cpus, r+1, mbps, strings.Join(shares, "/"), rec.Segments(), strings.Join(cpuShares, "/"), total.Round(time.Millisecond))
				best = max(best, mbps)
			}
			b.ReportMetric(best, "MB/s")
			if n == 1 {
				one = best
			}
			if one > 0 {
				b.ReportMetric(best/one, "x_one_worker")
				b.Logf("%d workers: best %.0f MB/s, %.2f × one worker's best", n, best, best/one)
			}
		})
	}
}

// containerCPU is each container's CPU time so far, from its cgroup (v1
// cgroupfs or v2 systemd layout; 0 where neither is readable).
func containerCPU(ids []string) []time.Duration {
	out := make([]time.Duration, len(ids))
	for i, id := range ids {
		if b, err := os.ReadFile("/sys/fs/cgroup/cpuacct/docker/" + id + "/cpuacct.usage"); err == nil {
			ns, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			out[i] = time.Duration(ns)
			continue
		}
		for _, p := range []string{"/sys/fs/cgroup/system.slice/docker-" + id + ".scope/cpu.stat", "/sys/fs/cgroup/docker/" + id + "/cpu.stat"} {
			b, err := os.ReadFile(p)
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
					us, _ := strconv.ParseInt(v, 10, 64)
					out[i] = time.Duration(us) * time.Microsecond
				}
			}
			break
		}
	}
	return out
}
