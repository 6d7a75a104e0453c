package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/testserver"
	"github.com/strata-backup/strata/pkg/demodisk"
)

// A real Prometheus scrapes every service instance (two transfer
// workers) with the metrics token and loads deploy/'s alert rules: after
// one backup it has the stored-bytes counter of each worker and the VM's
// last-success time, and with a 10 s RPO the "no verified backup within
// the RPO" alert fires once the backup is older than that.
func TestPrometheusScrapesEveryReplica(t *testing.T) {
	dir := t.TempDir()
	token := filepath.Join(dir, "metrics-token")
	if err := os.WriteFile(token, []byte("metrics-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	st := startStack(t, stackOptions{transfers: 2, metrics: true, env: []string{"STRATA_METRICS_TOKEN_FILE=" + token}})

	var targets strings.Builder
	for svc, addrs := range st.metrics {
		for _, a := range addrs {
			fmt.Fprintf(&targets, "      - targets: [%q]\n        labels: {service: %s}\n", a, svc)
		}
	}
	rules, err := filepath.Abs("../deploy/prometheus/rules/strata.yml")
	if err != nil {
		t.Fatal(err)
	}
	prom := testserver.StartPrometheus(t, fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: strata
    authorization:
      type: Bearer
      credentials_file: %q
    static_configs:
%s`, rules, token, targets.String()))

	// Unauthenticated scrapes are refused.
	resp, err := http.Get("http://" + st.metrics["transfer"][0] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("scrape without the token: %d", resp.StatusCode)
	}

	img := filepath.Join(dir, "disk.img")
	if err := demodisk.Write(img, 64<<20, 7); err != nil {
		t.Fatal(err)
	}
	st.mustCLI("policy", "set", "--vm", "prom-vm", "--source", "file://"+img, "--schedule", "@every 24h", "--rpo", "10s")
	out := st.mustCLI("backup", "--vm", "prom-vm", "--source", "file://"+img, "--wait")
	id := strings.TrimSpace(strings.Split(out, "\n")[0])
	rec := st.record("prom-vm", id)
	if rec.State != contracts.StateVerified {
		t.Fatalf("backup %s is %s", id, rec.State)
	}

	// Each transfer worker's counter, from Prometheus; together they
	// stored what the record says.
	var stored map[string]float64
	waitUntil(t, 30*time.Second, "stored bytes of both workers", func() bool {
		stored = promVector(t, prom, `strata_transfer_stored_bytes_total{service="transfer"}`, "instance")
		sum := 0.0
		for _, v := range stored {
			sum += v
		}
		return len(stored) == 2 && sum >= float64(rec.Disks[0].UploadedBytes)
	})
	for _, a := range st.metrics["transfer"] {
		if _, ok := stored[a]; !ok {
			t.Fatalf("no stored-bytes series from worker %s: %v", a, stored)
		}
	}
	var last map[string]float64
	waitUntil(t, 30*time.Second, "the VM's last success", func() bool {
		last = promVector(t, prom, `strata_backup_last_success_timestamp_seconds`, "vm")
		return last["prom-vm"] > 0
	})
	if got, want := last["prom-vm"], float64(rec.FinishedAt.UnixMilli())/1000; got < want-1 || got > want+1 {
		t.Fatalf("last success %v, record finished at %v", got, want)
	}
	// Counted once, by the verifier that verified it.
	var success map[string]float64
	waitUntil(t, 30*time.Second, "the success counter", func() bool {
		success = promVector(t, prom, `sum by (service) (strata_backup_success_total) > 0`, "service")
		return len(success) > 0
	})
	if len(success) != 1 || success["verifier"] != 1 {
		t.Fatalf("success counter by service: %v, want verifier 1", success)
	}

	// The RPO alert: not firing while the backup is fresh, firing once it
	// is older than 10 s.
	if a := alertState(t, prom, "StrataNoVerifiedBackupWithinRPO", "prom-vm"); a == "firing" && time.Since(*rec.FinishedAt) < 8*time.Second {
		t.Fatal("RPO alert firing for a fresh backup")
	}
	waitUntil(t, 60*time.Second, "the RPO alert", func() bool {
		return alertState(t, prom, "StrataNoVerifiedBackupWithinRPO", "prom-vm") == "firing"
	})
	if age := time.Since(*rec.FinishedAt); age < 10*time.Second {
		t.Fatalf("RPO alert fired %v after the backup, before its 10 s RPO", age)
	}
}

// promVector runs an instant query and returns value by the label.
func promVector(t *testing.T, p testserver.Prometheus, query, label string) map[string]float64 {
	t.Helper()
	var r struct {
		Status string
		Data   struct {
			Result []struct {
				Metric map[string]string
				Value  [2]any
			}
		}
	}
	promGet(t, p, "/api/v1/query?query="+url.QueryEscape(query), &r)
	out := map[string]float64{}
	for _, s := range r.Data.Result {
		var v float64
		fmt.Sscan(fmt.Sprint(s.Value[1]), &v)
		out[s.Metric[label]] = v
	}
	return out
}

// alertState is an alert's state for a VM ("" when it is not active).
func alertState(t *testing.T, p testserver.Prometheus, name, vm string) string {
	t.Helper()
	var r struct {
		Data struct {
			Alerts []struct {
				Labels map[string]string
				State  string
			}
		}
	}
	promGet(t, p, "/api/v1/alerts", &r)
	for _, a := range r.Data.Alerts {
		if a.Labels["alertname"] == name && a.Labels["vm"] == vm {
			return a.State
		}
	}
	return ""
}

func promGet(t *testing.T, p testserver.Prometheus, path string, v any) {
	t.Helper()
	resp, err := http.Get(p.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("prometheus %s: %s", path, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

// waitUntil polls cond until it holds or the time is up.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}
