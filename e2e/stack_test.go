package e2e

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/testserver"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/natsauth"
	"github.com/strata-backup/strata/pkg/s3roles"
)

var binDir string

// TestMain builds the CLI and the six service binaries once.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "strata-e2e-bin")
	if err != nil {
		panic(err)
	}
	binDir = dir
	// Every process a test starts serves its metrics on a port of its own
	// (several replicas of a service run on this host); a test that
	// scrapes them sets its own.
	os.Setenv("STRATA_METRICS_ADDR", "127.0.0.1:0")
	os.Setenv("STRATA_API_ADDR", "127.0.0.1:0") // strata dev's; a stack gives its api its own
	pkgs := []string{"github.com/strata-backup/strata/cmd/strata", "github.com/strata-backup/strata/e2e/cmd/strata-merge-crashing", "github.com/strata-backup/strata/e2e/cmd/strata-dedup-crashing"}
	for _, s := range append(services, "api") {
		pkgs = append(pkgs, fmt.Sprintf("github.com/strata-backup/strata/services/%s/cmd/strata-%s", s, s))
	}
	build := exec.Command("go", append([]string{"build", "-o", dir + "/"}, pkgs...)...)
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var services = []string{"scheduler", "snapshotter", "transfer", "dedup", "merge", "verifier"}

// stack is a running Strata: real nats-server, versitygw, optionally Jaeger,
// and each service as its own OS process.
type stack struct {
	t      testing.TB
	env    []string
	s3     testserver.S3
	jaeger *testserver.Jaeger
	procs  map[string][]*testserver.Process
	bucket string
	nats   string
	// natsSrv can be stopped and started again (an outage)
	natsSrv *testserver.NATSServer
	http    string // the api service's base URL
	authDir string // secured: natsauth.Generate's directory
	// metrics: service → its instances' metrics addresses (metrics option)
	metrics map[string][]string
}

type stackOptions struct {
	jaeger     bool
	chunkSize  int // repository chunk size; default 1 MiB
	transfers  int
	schedulers int
	extraEnv   map[string][]string // per service, extra env (transfer: per instance in order)
	env        []string            // extra env for every service and the CLI
	versioned  bool                // the S3 server keeps versions (Object Lock needs it)
	s3         *testserver.S3      // an S3 server already running (another site's), instead of a new one
	bucket     string              // default strata-e2e
	// secured: NATS with TLS and one nkey per service (natsauth); the
	// scheduler creates the streams, the CLI is admin.
	secured bool
	// metrics: each service instance serves metrics on a port of its own,
	// listed in stack.metrics.
	metrics bool
}

func startStack(t testing.TB, o stackOptions) *stack {
	t.Helper()
	var natsSrv *testserver.NATSServer
	var authDir string
	if o.secured {
		authDir = t.TempDir()
		if err := natsauth.Generate(authDir, []string{"127.0.0.1", "localhost"}, authDir); err != nil {
			t.Fatal(err)
		}
		natsSrv = testserver.StartNATSConf(t, filepath.Join(authDir, natsauth.ConfFile))
		o.env = append(o.env, "STRATA_NATS_CA_FILE="+filepath.Join(authDir, natsauth.CAFile), "STRATA_NATS_NKEY_FILE="+filepath.Join(authDir, natsauth.SeedFile("admin")))
	} else {
		natsSrv = testserver.StartNATS(t)
	}
	natsURL := natsSrv.URL
	start := testserver.Versity
	if o.versioned {
		start = testserver.VersityVersioned
	}
	var s3 testserver.S3
	if o.s3 != nil {
		s3 = *o.s3
	} else if o.secured && !o.versioned {
		s3 = testserver.VersityAccounts(t)
	} else {
		s3 = start(t)
	}
	st := &stack{t: t, s3: s3, authDir: authDir, procs: map[string][]*testserver.Process{}, bucket: cmp.Or(o.bucket, "strata-e2e"), nats: natsURL, natsSrv: natsSrv}
	st.env = append(os.Environ(),
		"STRATA_NATS_URL="+natsURL,
		"STRATA_S3_ENDPOINT="+s3.Endpoint,
		"STRATA_S3_BUCKET="+st.bucket,
		"STRATA_S3_ACCESS_KEY="+s3.AccessKey,
		"STRATA_S3_SECRET_KEY="+s3.SecretKey,
		fmt.Sprintf("STRATA_CHUNK_SIZE=%d", cmp.Or(o.chunkSize, chunkSize)),
		"STRATA_LOG_LEVEL=debug",
		"STRATA_STORE_DIR=",
		// Each stack its own index: two stacks on one repository (a copy
		// and its source) must not share a file.
		"STRATA_DEDUP_INDEX_DIR="+t.TempDir(),
	)
	st.env = append(st.env, o.env...)
	httpAddr := fmt.Sprintf("127.0.0.1:%d", testserver.FreePort(t))
	st.http = "http://" + httpAddr
	st.env = append(st.env, "STRATA_SCHEDULER_TICK=200ms")
	if o.jaeger {
		j := testserver.StartJaeger(t)
		st.jaeger = &j
		st.env = append(st.env, "OTEL_EXPORTER_OTLP_ENDPOINT="+j.OTLPHTTP, "OTEL_BSP_SCHEDULE_DELAY=200")
	} else {
		st.env = append(st.env, "OTEL_EXPORTER_OTLP_ENDPOINT=", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=")
	}
	if o.transfers == 0 {
		o.transfers = 1
	}
	var s3Roles string
	if o.secured && o.s3 == nil && !o.versioned {
		// One S3 account per service under a bucket policy (the CLI keeps
		// the root credential); the services get a wrong root key so that
		// only their own file can work.
		s3Roles = filepath.Join(authDir, "s3")
		st.mustCLI("s3-roles", "--dir", s3Roles, "--apply", "--json")
	}
	for _, s := range services {
		n := 1
		if s == "transfer" {
			n = o.transfers
		}
		if s == "scheduler" && o.schedulers > 0 {
			n = o.schedulers
		}
		for i := 0; i < n; i++ {
			env := o.extraEnv[s]
			if o.secured {
				env = append(env, "STRATA_NATS_NKEY_FILE="+filepath.Join(authDir, natsauth.SeedFile(s)), fmt.Sprintf("STRATA_NATS_SETUP=%v", s == "scheduler"))
			}
			if s3Roles != "" {
				env = append(env, "STRATA_S3_ACCESS_KEY=not-root", "STRATA_S3_SECRET_KEY=not-root", "STRATA_S3_CREDENTIALS_FILE="+filepath.Join(s3Roles, s3roles.File(s)))
			}
			if o.metrics {
				addr := fmt.Sprintf("127.0.0.1:%d", testserver.FreePort(t))
				env = append(env, "STRATA_METRICS_ADDR="+addr)
				if st.metrics == nil {
					st.metrics = map[string][]string{}
				}
				st.metrics[s] = append(st.metrics[s], addr)
			}
			st.startService(s, env...)
		}
	}
	// The operator API (the HTTP trigger among its operations).
	apiEnv := append([]string{"STRATA_API_ADDR=" + httpAddr}, o.extraEnv["api"]...)
	if st.jaeger != nil {
		apiEnv = append(apiEnv, "STRATA_JAEGER_QUERY_URL="+st.jaeger.Query)
	}
	if o.secured {
		apiEnv = append(apiEnv, "STRATA_NATS_NKEY_FILE="+filepath.Join(authDir, natsauth.SeedFile("api")), "STRATA_NATS_SETUP=false")
	}
	if s3Roles != "" {
		apiEnv = append(apiEnv, "STRATA_S3_ACCESS_KEY=not-root", "STRATA_S3_SECRET_KEY=not-root", "STRATA_S3_CREDENTIALS_FILE="+filepath.Join(s3Roles, s3roles.File("api")))
	}
	st.startService("api", apiEnv...)
	// Ready when every service answers as a micro service.
	st.waitMicro()
	testserver.WaitTCP(t, httpAddr, 30*time.Second)
	return st
}

func (st *stack) startService(name string, extra ...string) *testserver.Process {
	return st.startBinary(name, "strata-"+name, nil, extra...)
}

// startBinary runs binary (from binDir) with args as one instance of
// service name.
func (st *stack) startBinary(name, binary string, args []string, extra ...string) *testserver.Process {
	cmd := exec.Command(filepath.Join(binDir, binary), args...)
	cmd.Env = append(append([]string{}, st.env...), extra...)
	p := testserver.Start(st.t, fmt.Sprintf("strata-%s#%d", name, len(st.procs[name])), cmd)
	st.procs[name] = append(st.procs[name], p)
	return p
}

func (st *stack) waitMicro() {
	st.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		out, _, _ := st.cli("ls", "--json")
		if strings.HasPrefix(strings.TrimSpace(out), "[") && st.allRegistered() {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	st.t.Fatal("services did not come up")
}

func (st *stack) allRegistered() bool {
	for _, ps := range st.procs {
		for _, p := range ps {
			if p.Cmd.ProcessState == nil && !strings.Contains(p.Output(), `"msg":"ready"`) {
				return false
			}
		}
	}
	return true
}

// cli runs the strata command; returns stdout, stderr and the exit code.
func (st *stack) cli(args ...string) (string, string, int) {
	cmd := exec.Command(filepath.Join(binDir, "strata"), args...)
	cmd.Env = st.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		st.t.Fatalf("run strata %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// cliEnv is mustCLI with another environment.
func (st *stack) cliEnv(env []string, args ...string) string {
	st.t.Helper()
	saved := st.env
	defer func() { st.env = saved }()
	st.env = env
	return st.mustCLI(args...)
}

// mustCLI runs the strata command and fails the test on a non-zero exit.
func (st *stack) mustCLI(args ...string) string {
	st.t.Helper()
	out, errOut, code := st.cli(args...)
	if code != 0 {
		st.t.Fatalf("strata %v: exit %d\nstdout: %s\nstderr: %s", args, code, out, errOut)
	}
	return out
}

func (st *stack) records(vm string) []contracts.BackupRecord {
	st.t.Helper()
	var recs []contracts.BackupRecord
	if err := json.Unmarshal([]byte(st.mustCLI("ls", "--vm", vm, "--json")), &recs); err != nil {
		st.t.Fatal(err)
	}
	return recs
}

func (st *stack) record(vm, id string) contracts.BackupRecord {
	st.t.Helper()
	if r, ok := st.findRecord(vm, id); ok {
		return r
	}
	st.t.Fatalf("backup %s of %s not listed", id, vm)
	return contracts.BackupRecord{}
}

// findRecord looks a backup up; a backup just requested is not listed
// until the snapshotter has recorded it.
func (st *stack) findRecord(vm, id string) (contracts.BackupRecord, bool) {
	st.t.Helper()
	for _, r := range st.records(vm) {
		if r.ID == id {
			return r, true
		}
	}
	return contracts.BackupRecord{}, false
}

// objectFiles lists the files versitygw stores under a key prefix.
func (st *stack) objectFiles(prefix string) []string {
	st.t.Helper()
	var files []string
	root := filepath.Join(st.s3.Dir, st.bucket)
	filepath.Walk(filepath.Join(root, prefix), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	return files
}

func sha256File(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// chunkCensus reads an image the way Strata cuts it: the distinct non-zero
// chunk ids (hex, as object names) and the number of all-zero chunks.
func chunkCensus(t testing.TB, path string, chunkSize int) (distinct map[string]bool, zero int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	distinct = map[string]bool{}
	buf := make([]byte, chunkSize)
	for {
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			if chunk.AllZero(buf[:n]) {
				zero++
			} else {
				distinct[chunk.Hash(buf[:n]).String()] = true
			}
		}
		if err != nil {
			return distinct, zero
		}
	}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// jetstream connects the test itself to the stack's NATS.
func (st *stack) jetstream() jetstream.JetStream {
	st.t.Helper()
	nc, err := nats.Connect(st.nats)
	if err != nil {
		st.t.Fatal(err)
	}
	st.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		st.t.Fatal(err)
	}
	return js
}

// waitReady waits until a service process logs that it is ready.
func (st *stack) waitReady(p *testserver.Process) {
	st.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if strings.Contains(p.Output(), `"msg":"ready"`) {
			return
		}
	}
	st.t.Fatal("service did not become ready")
}
