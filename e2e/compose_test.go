package e2e

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/testserver"
	"github.com/strata-backup/strata/pkg/demodisk"
	"github.com/strata-backup/strata/pkg/natsauth"
	"github.com/strata-backup/strata/pkg/s3roles"
)

// composeStack drives the docker-compose.yml deployment from the repository
// root under its own project name.
type composeStack struct {
	*stack
	t       testing.TB
	command []string // "docker-compose" or "docker compose"
	env     []string
	sources string
	jaeger  string
	// vcsimDemo: the demo simulator's change endpoint on the host.
	vcsimDemo  string
	prometheus testserver.Prometheus
}

// composeProject names the deployment's containers, networks and volumes
// (STRATA_COMPOSE_PROJECT: a second checkout's suite beside a running one).
var composeProject = cmp.Or(os.Getenv("STRATA_COMPOSE_PROJECT"), "strata-e2e")

// composeFiles: the deployment plus the vSphere demo (a CBT-capable
// vCenter simulator), so the fault tests and the vSphere backup share one
// stack.
var composeFiles = []string{"-f", "docker-compose.yml", "-f", "deploy/docker/vsphere-demo.yml"}

// compose is a docker-compose command on the project.
func (c *composeStack) compose(args ...string) *exec.Cmd {
	full := append(append([]string{}, c.command[1:]...), append(append([]string{"-p", composeProject}, composeFiles...), args...)...)
	cmd := exec.Command(c.command[0], full...)
	cmd.Dir = ".."
	cmd.Env = c.env
	return cmd
}

func (c *composeStack) run(args ...string) string {
	c.t.Helper()
	out, err := c.compose(args...).CombinedOutput()
	if err != nil {
		c.t.Fatalf("%s %v: %v\n%s", c.command, args, err, out)
	}
	return string(out)
}

// restoreScale brings every service back after a fault. A container that
// was paused or stopped is unhealthy until its next health check passes,
// and compose refuses to start what depends on it until then: retry for a
// while rather than fail on that window.
func (c *composeStack) restoreScale(t testing.TB) {
	t.Helper()
	var out []byte
	var err error
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(2 * time.Second) {
		if out, err = c.compose("up", "-d", "--scale", "transfer=3", "--no-recreate").CombinedOutput(); err == nil || !strings.Contains(string(out), "unhealthy") {
			break
		}
	}
	if err != nil {
		t.Fatalf("%s up after the fault: %v\n%s", c.command, err, out)
	}
}

func (c *composeStack) containers(service string) []string {
	return strings.Fields(c.run("ps", "-q", service))
}

func docker(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// startCompose brings the deployment up with 3 transfer workers; extra
// environment (KEY=VALUE) overrides the defaults below.
func startCompose(t testing.TB, extra ...string) *composeStack {
	command := os.Getenv("STRATA_COMPOSE")
	if command == "" {
		if os.Getenv("STRATA_REQUIRE_SERVERS") == "1" && os.Getenv("STRATA_COMPOSE_REQUIRED") == "1" {
			t.Fatal("STRATA_COMPOSE not set")
		}
		t.Skip("compose tests run with `make e2e-compose` (STRATA_COMPOSE=docker-compose)")
	}
	sources := t.TempDir()
	os.Chmod(sources, 0o755) // the services run as an unprivileged user
	ports := map[string]int{}
	for _, p := range []string{"STRATA_NATS1_PORT", "STRATA_NATS2_PORT", "STRATA_NATS3_PORT", "STRATA_S3_PORT", "JAEGER_UI_PORT", "STRATA_HTTP_PORT", "STRATA_VCSIM_DEMO_PORT", "STRATA_PROMETHEUS_PORT"} {
		ports[p] = testserver.FreePort(t)
	}
	token := filepath.Join(t.TempDir(), "api-token")
	if err := os.WriteFile(token, []byte("compose-e2e-token-0123456789\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	metricsToken := filepath.Join(t.TempDir(), "metrics-token")
	if err := os.WriteFile(metricsToken, []byte("compose-e2e-metrics-0123456789\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// NATS as `make up` runs it: TLS, an nkey per service.
	auth := t.TempDir()
	os.Chmod(auth, 0o755)
	if err := natsauth.Generate(auth, []string{"nats1", "nats2", "nats3", "localhost", "127.0.0.1"}, "/etc/nats/auth"); err != nil {
		t.Fatal(err)
	}
	// An S3 account per service, as `make up` makes them (s3-setup
	// creates them in versitygw with the bucket policy).
	s3Auth := filepath.Join(auth, "s3")
	if _, err := s3roles.Generate(s3Auth); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "STRATA_SOURCES="+sources, "STRATA_API_TOKEN_PATH="+token, "STRATA_METRICS_TOKEN_PATH="+metricsToken, "STRATA_NATS_AUTH="+auth, "STRATA_S3_AUTH="+s3Auth,
		"STRATA_TRANSFER_RATE_LIMIT=20000000", "STRATA_TRANSFER_CONCURRENCY=1", "STRATA_TRANSFER_ACK_WAIT=10s")
	env = append(env, extra...)
	for k, v := range ports {
		env = append(env, fmt.Sprintf("%s=%d", k, v))
	}
	c := &composeStack{t: t, command: strings.Fields(command), env: env, sources: sources,
		jaeger:     fmt.Sprintf("http://127.0.0.1:%d", ports["JAEGER_UI_PORT"]),
		vcsimDemo:  fmt.Sprintf("http://127.0.0.1:%d", ports["STRATA_VCSIM_DEMO_PORT"]),
		prometheus: testserver.Prometheus{URL: fmt.Sprintf("http://127.0.0.1:%d", ports["STRATA_PROMETHEUS_PORT"])}}
	c.run("down", "-v", "--remove-orphans")
	t.Cleanup(func() {
		if t.Failed() {
			for _, s := range services {
				cmd := exec.Command(c.command[0], append(append(append(c.command[1:], "-p", composeProject), composeFiles...), "logs", "--tail", "40", s)...)
				cmd.Dir, cmd.Env = "..", c.env
				out, _ := cmd.CombinedOutput()
				t.Logf("--- %s ---\n%s", s, out)
			}
		}
		c.run("down", "-v", "--remove-orphans")
		if left := strings.TrimSpace(docker(t, "ps", "-aq", "--filter", "label=com.docker.compose.project="+composeProject)); left != "" {
			t.Errorf("containers left after down: %s", left)
		}
	})
	c.run("up", "-d", "--scale", "transfer=3")
	wait := exec.Command("deploy/docker/wait-healthy.sh", append(append(c.command, "-p", composeProject), composeFiles...)...)
	wait.Dir, wait.Env = "..", env
	if out, err := wait.CombinedOutput(); err != nil {
		t.Fatalf("stack not healthy: %v\n%s", err, out)
	}
	natsURL := fmt.Sprintf("tls://127.0.0.1:%d,tls://127.0.0.1:%d,tls://127.0.0.1:%d", ports["STRATA_NATS1_PORT"], ports["STRATA_NATS2_PORT"], ports["STRATA_NATS3_PORT"])
	c.stack = &stack{t: t, nats: natsURL, http: fmt.Sprintf("http://127.0.0.1:%d", ports["STRATA_HTTP_PORT"]),
		authDir: auth, bucket: "strata",
		s3: testserver.S3{Endpoint: fmt.Sprintf("http://127.0.0.1:%d", ports["STRATA_S3_PORT"])},
		env: append(os.Environ(), "STRATA_NATS_URL="+natsURL, "STRATA_STORE_DIR=",
			"STRATA_NATS_CA_FILE="+filepath.Join(auth, natsauth.CAFile), "STRATA_NATS_NKEY_FILE="+filepath.Join(auth, natsauth.SeedFile("admin")),
			fmt.Sprintf("STRATA_S3_ENDPOINT=http://127.0.0.1:%d", ports["STRATA_S3_PORT"]),
			"STRATA_S3_ACCESS_KEY=strata", "STRATA_S3_SECRET_KEY=strata-secret-key", "STRATA_S3_BUCKET=strata",
			"OTEL_EXPORTER_OTLP_ENDPOINT=")}
	return c
}

// image writes a distinct source disk (new data, so a backup of it has
// real work to do) into the sources volume.
func (c *composeStack) image(name string, size int64, seed uint64) (hostPath, source string) {
	c.t.Helper()
	p := filepath.Join(c.sources, name)
	if err := demodisk.Write(p, size, seed); err != nil {
		c.t.Fatal(err)
	}
	os.Chmod(p, 0o644)
	return p, "file:///sources/" + name
}

func (c *composeStack) restoreMatches(vm, id, hostPath string) {
	c.t.Helper()
	out := filepath.Join(c.t.TempDir(), "restored.img")
	c.mustCLI("restore", "--vm", vm, "--backup", id, "--to", out)
	if sha256File(c.t, out) != sha256File(c.t, hostPath) {
		c.t.Fatalf("restore of %s %s is not bit-exact", vm, id)
	}
	os.Remove(out)
}

func (c *composeStack) waitFinal(vm, id string, timeout time.Duration) contracts.BackupRecord {
	c.t.Helper()
	var rec contracts.BackupRecord
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		if rec, _ = c.findRecord(vm, id); rec.State.Final() {
			return rec
		}
	}
	c.t.Fatalf("backup %s of %s still %s after %v (%d/%d segments)", id, vm, rec.State, timeout, rec.SegmentsDone(), rec.Segments())
	return rec
}

func TestCompose(t *testing.T) {
	c := startCompose(t)

	t.Run("BackupRestoreOneTrace", func(t *testing.T) {
		c.t = t
		c.stack.t = t
		img, src := c.image("base.img", 256<<20, 100)
		id := strings.TrimSpace(strings.Split(c.mustCLI("backup", "--vm", "base", "--source", src, "--wait"), "\n")[0])
		c.restoreMatches("base", id, img)
		rec := c.record("base", id)
		var got map[string]bool
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
			if got = jaegerServices(t, c.jaeger, rec.TraceID); len(got) >= len(services) {
				break
			}
		}
		for _, s := range services {
			if !got["strata-"+s] {
				t.Errorf("trace %s lacks spans from strata-%s (has %v)", rec.TraceID, s, got)
			}
		}
	})

	// The compose Prometheus finds every transfer replica through Docker's
	// DNS and scrapes it with the token: each reports its stored bytes,
	// and the scheduler the VM's last verified backup.
	t.Run("PrometheusScrapesEveryReplica", func(t *testing.T) {
		workers := len(c.containers("transfer"))
		var stored map[string]float64
		waitUntil(t, 60*time.Second, "every transfer replica scraped", func() bool {
			stored = promVector(t, c.prometheus, `strata_transfer_stored_bytes_total{service="transfer"}`, "instance")
			return len(stored) == workers
		})
		sum := 0.0
		for _, v := range stored {
			sum += v
		}
		if sum == 0 {
			t.Fatalf("no bytes stored by any of the %d workers after a backup: %v", workers, stored)
		}
		waitUntil(t, 60*time.Second, "the last success of base", func() bool {
			return promVector(t, c.prometheus, `strata_backup_last_success_timestamp_seconds`, "vm")["base"] > 0
		})
	})

	// NATS with TLS and an nkey per service: the transfer workers'
	// credential reads the catalog, and is refused a backup request, a
	// catalog write, the GC lock and a stream purge; the record stays.
	t.Run("TransferCredentialRefused", func(t *testing.T) {
		c.t = t
		c.stack.t = t
		var recs []contracts.BackupRecord
		if err := json.Unmarshal([]byte(c.mustCLI("ls", "--vm", "base", "--json")), &recs); err != nil || len(recs) == 0 {
			t.Fatalf("no backup of base to read: %v", err)
		}
		transferRefused(t, c.stack.nats, c.authDir, "base", recs[0].ID)
		s3TransferCannotDelete(t, c.stack)
		if rec := c.record("base", recs[0].ID); rec.State != recs[0].State {
			t.Fatalf("the record changed: %s → %s", recs[0].State, rec.State)
		}
	})

	// A certify verification whose source is gone fails the backup with
	// the reason; --wait exits non-zero; check and ls report it.
	t.Run("VerifierLosesSource", func(t *testing.T) {
		c.t = t
		c.stack.t = t
		img, src := c.image("gone.img", 64<<20, 150)
		sourceGoneBeforeCertify(t, c.stack, "gone", img, src,
			func() { c.run("stop", "verifier") },
			func() { c.run("start", "verifier") })
	})

	// The HTTP trigger listens beyond loopback inside its container: no
	// token, no backup; a source outside STRATA_SOURCE_ALLOW is refused.
	t.Run("HTTPTriggerNeedsToken", func(t *testing.T) {
		post := func(auth, source string) int {
			req, _ := http.NewRequest("POST", c.http+"/v1/backups", strings.NewReader(`{"schema":1,"vm":"intruder","source":"`+source+`"}`))
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			return res.StatusCode
		}
		if code := post("", "file:///sources/base.img"); code != http.StatusUnauthorized {
			t.Errorf("no token: %d", code)
		}
		if code := post("Bearer compose-e2e-token-0123456789", "file:///etc/passwd"); code != http.StatusForbidden {
			t.Errorf("source outside the allow list: %d", code)
		}
		// The console and the API on the one published port.
		res, err := http.Get(c.http + "/login")
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || !strings.Contains(string(page), "API token") {
			t.Errorf("console login page: %d", res.StatusCode)
		}
		req, _ := http.NewRequest("GET", c.http+"/v1/vms", nil)
		req.Header.Set("Authorization", "Bearer compose-e2e-token-0123456789")
		res, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var vms []struct{ Name string }
		json.NewDecoder(res.Body).Decode(&vms)
		res.Body.Close()
		if res.StatusCode != 200 || len(vms) == 0 {
			t.Errorf("GET /v1/vms: %d %+v", res.StatusCode, vms)
		}
	})

	// vSphere through the stack: the demo simulator's VM (two disks), a
	// full backup, 2 % of blocks rewritten, an incremental reading only
	// the changed extents.
	t.Run("VSphereIncremental", func(t *testing.T) {
		c.t = t
		c.stack.t = t
		src := "vsphere://vcsim:8989/demo-vm"
		backup := func() contracts.BackupRecord {
			id := strings.TrimSpace(strings.Split(c.mustCLI("backup", "--vm", "demo-vm", "--source", src, "--wait"), "\n")[0])
			return c.record("demo-vm", id)
		}
		full := backup()
		if full.State != contracts.StateVerified || full.Kind != contracts.KindFull || len(full.Disks) != 2 {
			t.Fatalf("full vSphere backup: %s %s, %d disks", full.State, full.Kind, len(full.Disks))
		}
		res, err := http.Post(c.vcsimDemo+"/demo/change?percent=2", "", nil)
		if err != nil || res.StatusCode != http.StatusOK {
			t.Fatalf("demo change: %v %v", res, err)
		}
		res.Body.Close()
		inc := backup()
		if inc.Kind != contracts.KindIncremental || inc.Parent != full.ID {
			t.Fatalf("second vSphere backup: %s (%s)", inc.Kind, inc.FullReason)
		}
		for _, d := range inc.Disks {
			if d.ChangedBytes == 0 || float64(d.ReadBytes) > 1.5*float64(d.ChangedBytes) {
				t.Fatalf("%s: read %d bytes for %d changed", d.Name, d.ReadBytes, d.ChangedBytes)
			}
		}
	})

	faults := []struct {
		name   string
		inject func(t *testing.T)
	}{
		{"KillTransferWorker", func(t *testing.T) {
			docker(t, "kill", c.containers("transfer")[0])
		}},
		{"StopNATSNode", func(t *testing.T) {
			c.run("stop", "nats2")
			time.Sleep(5 * time.Second)
			c.run("start", "nats2")
		}},
		{"PauseS3For30s", func(t *testing.T) {
			id := c.containers("s3")[0]
			docker(t, "pause", id)
			time.Sleep(30 * time.Second)
			docker(t, "unpause", id)
		}},
		{"RestartMerge", func(t *testing.T) { c.run("restart", "merge") }},
		{"RestartDedup", func(t *testing.T) { c.run("restart", "dedup") }},
		{"RestartSnapshotter", func(t *testing.T) { c.run("restart", "snapshotter") }},
	}
	for i, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			c.t = t
			c.stack.t = t
			vm := strings.ToLower(f.name)
			img, src := c.image(vm+".img", 320<<20, uint64(200+i))
			id := strings.TrimSpace(c.mustCLI("backup", "--vm", vm, "--source", src))
			for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
				rec, _ := c.findRecord(vm, id)
				if rec.State.Final() {
					t.Fatalf("backup finished (%s) before the fault could be injected", rec.State)
				}
				if rec.SegmentsDone() >= 1 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("backup made no progress")
				}
			}
			f.inject(t)
			t.Logf("%s injected mid-backup", f.name)
			rec := c.waitFinal(vm, id, 5*time.Minute)
			if rec.State == contracts.StateVerified {
				c.restoreMatches(vm, id, img)
			} else {
				// A clean failure is allowed; the next backup must succeed.
				t.Logf("backup failed cleanly: %s", rec.Error)
				next := strings.TrimSpace(strings.Split(c.mustCLI("backup", "--vm", vm, "--source", src, "--wait"), "\n")[0])
				c.restoreMatches(vm, next, img)
			}
			c.restoreScale(t)
		})
	}
}
