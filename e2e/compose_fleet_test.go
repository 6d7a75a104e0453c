package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/demodisk"
	"github.com/strata-backup/strata/pkg/natsauth"
	"github.com/strata-backup/strata/pkg/policy"
)

// BenchmarkComposeFleet (`make bench-fleet`): a backup window on the
// compose deployment. STRATA_FLEET_VMS VMs (default 1,000), each a small
// disk installed from one template (STRATA_FLEET_MIB, default 2 MiB, the
// same base with 64 KiB of its own), get a policy whose one slot is a
// minute ahead; the benchmark waits until every VM's backup of that slot
// is verified and reports backups per minute, the latency from the slot to
// verified (p50, p95, p99, max), JetStream messages stored per backup
// (every stream's and bucket's sequence), S3 requests per backup (the S3
// server's access log), and each service's CPU per backup (its
// containers' cgroups). STRATA_FLEET_WORKERS (default 3) transfer
// workers. It fails if a backup fails, is doubled or is missing.
func BenchmarkComposeFleet(b *testing.B) {
	vms := envInt("STRATA_FLEET_VMS", 1000)
	workers := envInt("STRATA_FLEET_WORKERS", 3)
	size := int64(envInt("STRATA_FLEET_MIB", 2)) << 20
	c := startCompose(b, "STRATA_S3_ACCESS_LOG=/tmp/access.log", "STRATA_TRANSFER_RATE_LIMIT=0", "STRATA_TRANSFER_CONCURRENCY=4", "STRATA_TRANSFER_ACK_WAIT=60s")
	c.run("up", "-d", "--scale", fmt.Sprintf("transfer=%d", workers), "--no-recreate")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Hour)
	defer cancel()
	nc, err := nats.Connect(c.stack.nats, nats.RootCAs(filepath.Join(c.authDir, natsauth.CAFile)), seedOpt(b, c.authDir, "admin"))
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	pols, err := policy.Open(ctx, js)
	if err != nil {
		b.Fatal(err)
	}
	base := filepath.Join(b.TempDir(), "base.img")
	if err := demodisk.Write(base, size, 5); err != nil {
		b.Fatal(err)
	}
	tmpl, _ := os.ReadFile(base)
	for b.Loop() {
		// The slot: a minute after the last policy is in, as a daily cron.
		slot := time.Now().UTC().Add(time.Duration(vms)*2*time.Millisecond + time.Minute).Truncate(time.Second)
		schedule := fmt.Sprintf("%d %d %d * * *", slot.Second(), slot.Minute(), slot.Hour())
		for i := range vms {
			vm := fmt.Sprintf("fleet-%04d", i)
			img := append([]byte(nil), tmpl...)
			copy(img[size/2:], bytes.Repeat([]byte(fmt.Sprintf("%s's own data ", vm)), 64<<10/20))
			_ = os.WriteFile(filepath.Join(c.sources, vm+".img"), img, 0o644)
			p := &contracts.Policy{Schema: contracts.SchemaVersion, VM: vm, Source: "file:///sources/" + vm + ".img", Schedule: schedule, KeepLast: 2, UpdatedAt: time.Now().UTC()}
			if err := pols.Put(ctx, p); err != nil {
				b.Fatalf("policy %s: %v", vm, err)
			}
		}
		if time.Now().After(slot.Add(-5 * time.Second)) {
			b.Fatalf("setting %d policies took past the slot %s", vms, slot)
		}
		msgs0, cpu0 := streamSeqs(b, ctx, js), serviceCPU(b, c)
		s3r0 := s3Requests(b, c)
		var recs []contracts.BackupRecord
		for deadline := slot.Add(90 * time.Minute); ; time.Sleep(5 * time.Second) {
			var all []contracts.BackupRecord
			if err := json.Unmarshal([]byte(c.mustCLI("ls", "--json")), &all); err != nil {
				b.Fatal(err)
			}
			recs = recs[:0]
			per := map[string]int{}
			done := 0
			for _, r := range all {
				if r.Slot == nil || !r.Slot.Equal(slot) {
					continue
				}
				per[r.VM]++
				recs = append(recs, r)
				if r.State == contracts.StateVerified {
					done++
				} else if r.State.Final() {
					b.Fatalf("%s's backup of slot %s: %s %s", r.VM, slot, r.State, r.Error)
				}
			}
			for vm, n := range per {
				if n > 1 {
					b.Fatalf("%s has %d backups of slot %s", vm, n, slot)
				}
			}
			if done == vms {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%d of %d VMs verified 90 min after slot %s", done, vms, slot)
			}
		}
		msgs1, cpu1 := streamSeqs(b, ctx, js), serviceCPU(b, c)
		s3r := s3Requests(b, c) - s3r0
		var lat []time.Duration
		last := slot
		for _, r := range recs {
			lat = append(lat, r.FinishedAt.Sub(slot))
			if r.FinishedAt.After(last) {
				last = *r.FinishedAt
			}
		}
		slices.Sort(lat)
		q := func(p float64) time.Duration {
			return lat[min(len(lat)-1, int(p*float64(len(lat))))].Round(10 * time.Millisecond)
		}
		perMin := float64(vms) / last.Sub(slot).Minutes()
		var msgs uint64
		var streams []string
		for name, seq := range msgs1 {
			if d := seq - msgs0[name]; d > 0 {
				msgs += d
				streams = append(streams, fmt.Sprintf("%s %.1f", name, float64(d)/float64(vms)))
			}
		}
		slices.Sort(streams)
		var cpus []string
		for svc, t := range cpu1 {
			cpus = append(cpus, fmt.Sprintf("%s %.0f ms", svc, float64((t-cpu0[svc]).Milliseconds())/float64(vms)))
		}
		slices.Sort(cpus)
		var peaks []string
		for _, svc := range services {
			var peak int64
			for _, id := range c.containers(svc) {
				if b, err := os.ReadFile("/sys/fs/cgroup/memory/docker/" + id + "/memory.max_usage_in_bytes"); err == nil {
					v, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
					peak = max(peak, v)
				} else if b, err := os.ReadFile("/sys/fs/cgroup/system.slice/docker-" + id + ".scope/memory.peak"); err == nil {
					v, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
					peak = max(peak, v)
				}
			}
			peaks = append(peaks, fmt.Sprintf("%s %d MiB", svc, peak>>20))
		}
		b.Logf("peak memory per container (cgroup, page cache included): %s", strings.Join(peaks, ", "))
		b.Logf("%d VMs, %d workers, %d MiB disks from one template: all verified %v after the slot; %.0f backups/min; slot → verified p50 %v p95 %v p99 %v max %v",
			vms, workers, size>>20, last.Sub(slot).Round(time.Second), perMin, q(0.50), q(0.95), q(0.99), lat[len(lat)-1].Round(10*time.Millisecond))
		b.Logf("per backup: %.1f JetStream messages stored (%s); %.1f S3 requests; CPU %s", float64(msgs)/float64(vms), strings.Join(streams, ", "), float64(s3r)/float64(vms), strings.Join(cpus, ", "))
		b.ReportMetric(perMin, "backups/min")
		b.ReportMetric(q(0.50).Seconds(), "p50_s")
		b.ReportMetric(q(0.95).Seconds(), "p95_s")
		b.ReportMetric(q(0.99).Seconds(), "p99_s")
		b.ReportMetric(float64(msgs)/float64(vms), "js_msgs/backup")
		b.ReportMetric(float64(s3r)/float64(vms), "s3_req/backup")
		for i := range vms {
			pols.Delete(ctx, fmt.Sprintf("fleet-%04d", i))
		}
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func seedOpt(t testing.TB, dir, role string) nats.Option {
	t.Helper()
	opt, err := nats.NkeyOptionFromSeed(filepath.Join(dir, natsauth.SeedFile(role)))
	if err != nil {
		t.Fatal(err)
	}
	return opt
}

// streamSeqs is every stream's last sequence: the messages it ever stored.
func streamSeqs(t testing.TB, ctx context.Context, js jetstream.JetStream) map[string]uint64 {
	out := map[string]uint64{}
	for info := range js.ListStreams(ctx).Info() {
		out[info.Config.Name] = info.State.LastSeq
	}
	return out
}

// serviceCPU is the CPU each service's containers used so far.
func serviceCPU(t testing.TB, c *composeStack) map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, svc := range append(append([]string{}, services...), "nats1", "nats2", "nats3", "s3") {
		for _, d := range containerCPU(c.containers(svc)) {
			out[svc] += d
		}
	}
	return out
}

// s3Requests is the number of requests in the S3 server's access log.
func s3Requests(t testing.TB, c *composeStack) int {
	ids := c.containers("s3")
	if len(ids) == 0 {
		return 0
	}
	tr := tar.NewReader(strings.NewReader(docker(t, "cp", ids[0]+":/tmp/access.log", "-")))
	if _, err := tr.Next(); err != nil {
		return 0
	}
	data, _ := io.ReadAll(tr)
	return bytes.Count(data, []byte("\n"))
}
