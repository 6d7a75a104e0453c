package e2e

import (
	"bytes"
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

// Three transfer workers share one backup's segments: each takes a
// segment only into a free slot, so every worker gets some and none most;
// each segment's log line names the worker instance that did it.
func TestSegmentsSpreadOverWorkers(t *testing.T) {
	env := []string{"STRATA_TRANSFER_RATE_LIMIT=40000000", "STRATA_TRANSFER_CONCURRENCY=1"}
	st := startStack(t, stackOptions{transfers: 3, extraEnv: map[string][]string{"transfer": env}})
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := demodisk.Write(img, 384<<20, 11); err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(strings.Split(st.mustCLI("backup", "--vm", "spread", "--source", "file://"+img, "--wait"), "\n")[0])
	rec := st.record("spread", id)
	segments := publishedSegments(rec)
	instances := map[string]bool{}
	var shares []int
	for _, p := range st.procs["transfer"] {
		n := 0
		for _, line := range strings.Split(p.Output(), "\n") {
			if !strings.Contains(line, `"msg":"segment done"`) || !strings.Contains(line, `"backup":"`+id+`"`) {
				continue
			}
			n++
			var l struct{ Instance, Host string }
			if err := json.Unmarshal([]byte(line), &l); err != nil || l.Instance == "" || l.Host == "" {
				t.Fatalf("a segment's log line without its instance: %s", line)
			}
			instances[l.Instance] = true
		}
		shares = append(shares, n)
	}
	t.Logf("%d segments over 3 workers: %v", segments, shares)
	total := 0
	for _, n := range shares {
		total += n
		if n == 0 || n > segments*2/3 {
			t.Fatalf("segments per worker %v of %d", shares, segments)
		}
	}
	if total < segments || len(instances) != 3 {
		t.Fatalf("%d segment lines for %d segments, from %d instances", total, segments, len(instances))
	}
}

// A reduced fleet: 100 VMs installed from one template (disks sharing a
// base image, each with a little of its own), every one on the same
// schedule, so one slot fires 100 backups at once into 2 transfer
// workers. Every VM gets exactly one backup for that slot (none doubled,
// none lost), verified; each stores about its own data only.
func TestFleetOfAHundred(t *testing.T) {
	const vms, size = 100, 2 << 20
	st := startStack(t, stackOptions{chunkSize: 64 << 10, transfers: 2})
	dir := t.TempDir()
	if err := demodisk.Write(filepath.Join(dir, "base.img"), size, 3); err != nil {
		t.Fatal(err)
	}
	base, err := os.ReadFile(filepath.Join(dir, "base.img"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < vms; i++ {
		img := append([]byte(nil), base...)
		copy(img[size/2:], bytes.Repeat([]byte(fmt.Sprintf("vm %03d's own data ", i)), 64<<10/20))
		name := fmt.Sprintf("fleet-%03d", i)
		os.WriteFile(filepath.Join(dir, name+".img"), img, 0o644)
		st.mustCLI("policy", "set", "--vm", name, "--source", "file://"+filepath.Join(dir, name+".img"), "--schedule", "*/20 * * * * *", "--keep-last", "2")
	}
	// The first slot after the last policy was set: every policy fires it.
	slot := time.Now().UTC().Truncate(20 * time.Second).Add(20 * time.Second)
	var stored int64
	start := time.Now()
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(time.Second) {
		verified, seen := 0, 0
		stored = 0
		for i := 0; i < vms; i++ {
			for _, r := range st.records(fmt.Sprintf("fleet-%03d", i)) {
				if r.Slot == nil || !r.Slot.Equal(slot) {
					continue
				}
				seen++
				if r.State == contracts.StateVerified {
					verified++
					stored += r.StoredBytes()
				} else if r.State.Final() {
					t.Fatalf("%s's backup of slot %s: %s %s", r.VM, slot, r.State, r.Error)
				}
			}
		}
		if seen > vms {
			t.Fatalf("%d backups for slot %s of %d VMs: doubled", seen, slot, vms)
		}
		if verified == vms {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d VMs verified for slot %s after 5 min", verified, vms, slot)
		}
	}
	t.Logf("slot %s: all %d VMs verified %v after the policies were set; %d bytes stored for %d bytes of disks", slot.Format(time.TimeOnly), vms, time.Since(start).Round(time.Second), stored, vms*size)
	if stored > vms*size/10 {
		t.Fatalf("the fleet stored %d bytes for %d of disks sharing one template", stored, vms*size)
	}
	for i := 0; i < vms; i++ {
		st.mustCLI("policy", "rm", "--vm", fmt.Sprintf("fleet-%03d", i))
	}
}
