// Package testserver starts the real servers Strata's tests run against —
// nats-server with JetStream, versitygw (S3), Jaeger — as child processes
// on loopback ports, and stops them when the test ends.
//
// Binaries are found on PATH or in the cache that `make servers` fills
// (${XDG_CACHE_HOME:-~/.cache}/strata/bin/<name>-<version>). When one is
// missing the test is skipped, unless STRATA_REQUIRE_SERVERS=1 (set by CI),
// which turns the skip into a failure: CI must never pass by skipping.
package testserver

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Pinned versions; keep in step with the Makefile.
const (
	NATSVersion    = "v2.15.2"
	VersityVersion = "v1.8.0"
	JaegerVersion  = "v1.76.0"
	// PrometheusVersion is the module version (v0.316.0 is Prometheus 3.x's
	// tag in Go module form).
	PrometheusVersion = "v0.316.0"
)

// Binary locates a server binary or skips/fails the test.
func Binary(t testing.TB, name, version string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache")
	}
	p := filepath.Join(cache, "strata", "bin", name+"-"+version)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	msg := fmt.Sprintf("%s %s not found on PATH or at %s (run `make servers`)", name, version, p)
	if os.Getenv("STRATA_REQUIRE_SERVERS") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// FreePort returns a loopback port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	// Ports the kernel hands out for outgoing connections (the ephemeral
	// range, where a :0 listener also lands) can be taken between this
	// check and the server's bind by any client socket on the machine; a
	// port below that range is only ever taken by someone binding it.
	portMu.Lock()
	defer portMu.Unlock()
	low := ephemeralLow()
	for try := 0; try < 200; try++ {
		port := 10000 + rand.IntN(low-10000)
		if handedOut[port] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		l.Close()
		handedOut[port] = true
		return port
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

var (
	portMu    sync.Mutex
	handedOut = map[int]bool{}
)

// ephemeralLow is the first port of the kernel's ephemeral range.
func ephemeralLow() int {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		fmt.Sscan(string(b), &low)
	}
	return max(low, 12000)
}

// Process is a started server.
type Process struct {
	Cmd *exec.Cmd
	out *syncBuffer
}

// Output returns what the process printed so far.
func (p *Process) Output() string { return p.out.String() }

// Start runs a command until the test ends; its output is logged on failure.
func Start(t testing.TB, name string, cmd *exec.Cmd) *Process {
	t.Helper()
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &Process{Cmd: cmd, out: out}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		// STRATA_TEST_LOG_DIR keeps every process's output (benchmarks,
		// investigations).
		if dir := os.Getenv("STRATA_TEST_LOG_DIR"); dir != "" {
			os.WriteFile(filepath.Join(dir, strings.NewReplacer("/", "_", "#", "_").Replace(name)+".log"), []byte(out.String()), 0o644)
		}
		if t.Failed() {
			t.Logf("--- output of %s ---\n%s", name, tail(out.String(), 8000))
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// WaitTCP waits until addr accepts connections.
func WaitTCP(t testing.TB, addr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s did not accept connections within %v", addr, timeout)
}

// NATS starts nats-server with JetStream; returns its client URL.
func NATS(t testing.TB) string { return StartNATS(t).URL }

// NATSServer is a started nats-server that a test can stop and start again
// on the same port and store (an outage).
type NATSServer struct {
	URL   string
	t     testing.TB
	args  []string
	proc  *Process
	count int
}

// StartNATS starts nats-server with JetStream.
func StartNATS(t testing.TB) *NATSServer { return StartNATSConf(t, "") }

// StartNATSConf starts nats-server with JetStream and a configuration file
// (none: ""); a file that turns TLS on makes the URL tls://.
func StartNATSConf(t testing.TB, conf string) *NATSServer {
	bin := Binary(t, "nats-server", NATSVersion)
	port := FreePort(t)
	n := &NATSServer{URL: fmt.Sprintf("nats://127.0.0.1:%d", port), t: t,
		args: []string{bin, "-js", "-a", "127.0.0.1", "-p", fmt.Sprint(port), "-sd", t.TempDir()}}
	if conf != "" {
		n.args = append(n.args, "-c", conf)
		if b, err := os.ReadFile(conf); err == nil && strings.Contains(string(b), "tls {") {
			n.URL = fmt.Sprintf("tls://127.0.0.1:%d", port)
		}
	}
	n.Start()
	return n
}

// Stop kills the server.
func (n *NATSServer) Stop() { n.proc.Stop() }

// Start starts it (again), with what it stored before.
func (n *NATSServer) Start() {
	name := "nats-server"
	if n.count++; n.count > 1 {
		name = fmt.Sprintf("nats-server#%d", n.count)
	}
	n.proc = Start(n.t, name, exec.Command(n.args[0], n.args[1:]...))
	WaitTCP(n.t, n.URL[strings.Index(n.URL, "://")+3:], 15*time.Second)
}

// S3 describes a started S3 server.
type S3 struct {
	Endpoint, AccessKey, SecretKey string
	Dir                            string // posix backend root: <Dir>/<bucket>/<key>
	Proc                           *Process
}

// Versity starts versitygw with the posix backend.
func Versity(t testing.TB) S3 { return versity(t, false, false) }

// VersityAccounts starts versitygw with its internal IAM (--iam-dir):
// accounts besides root can be created through its admin API, and bucket
// policies name them.
func VersityAccounts(t testing.TB) S3 { return versity(t, false, true) }

// VersityVersioned starts versitygw with bucket versioning available
// (--versioning-dir), which S3 Object Lock needs: a bucket created with
// Object Lock enabled keeps every version, as on AWS.
func VersityVersioned(t testing.TB) S3 { return versity(t, true, false) }

func versity(t testing.TB, versioned, accounts bool) S3 {
	bin := Binary(t, "versitygw", VersityVersion)
	port := FreePort(t)
	dir := t.TempDir()
	s := S3{Endpoint: fmt.Sprintf("http://127.0.0.1:%d", port), AccessKey: "strata-test", SecretKey: "strata-test-secret", Dir: dir}
	posix := []string{"posix"}
	if versioned {
		posix = append(posix, "--versioning-dir", t.TempDir())
	}
	args := []string{"--access", s.AccessKey, "--secret", s.SecretKey, "--keep-alive", "--port", fmt.Sprintf("127.0.0.1:%d", port)}
	if accounts {
		args = append(args, "--iam-dir", t.TempDir())
	}
	args = append(args, posix...)
	cmd := exec.Command(bin, append(args, dir)...)
	s.Proc = Start(t, "versitygw", cmd)
	WaitTCP(t, fmt.Sprintf("127.0.0.1:%d", port), 30*time.Second)
	return s
}

// Jaeger describes a started all-in-one Jaeger.
type Jaeger struct {
	OTLPHTTP string // http://127.0.0.1:port, for OTEL_EXPORTER_OTLP_ENDPOINT
	Query    string // http://127.0.0.1:port, the query API
}

// StartJaeger starts Jaeger v1 all-in-one (v2 binary) with an explicit
// loopback-only config.
func StartJaeger(t testing.TB) Jaeger {
	bin := Binary(t, "jaeger", JaegerVersion)
	otlp, query, grpcQ, otlpGRPC, health := FreePort(t), FreePort(t), FreePort(t), FreePort(t), FreePort(t)
	cfg := fmt.Sprintf(jaegerConfig, health, otlpGRPC, otlp, query, grpcQ)
	path := filepath.Join(t.TempDir(), "jaeger.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	Start(t, "jaeger", exec.Command(bin, "--config", path))
	j := Jaeger{OTLPHTTP: fmt.Sprintf("http://127.0.0.1:%d", otlp), Query: fmt.Sprintf("http://127.0.0.1:%d", query)}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(j.Query + "/api/services"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				WaitTCP(t, fmt.Sprintf("127.0.0.1:%d", otlp), 10*time.Second)
				return j
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("jaeger did not come up")
	return j
}

// JaegerConfig is a Jaeger v2 config with every endpoint on loopback.
// Format args: health port, OTLP gRPC, OTLP HTTP, query HTTP, query gRPC.
const jaegerConfig = `service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:%d
  jaeger_query:
    storage:
      traces: mem
    http:
      endpoint: 127.0.0.1:%[4]d
    grpc:
      endpoint: 127.0.0.1:%[5]d
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:%[2]d
      http:
        endpoint: 127.0.0.1:%[3]d
processors:
  batch:
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
`

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b.Len() > 4<<20 { // keep memory bounded for chatty servers
		s.b.Reset()
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// QemuNBD exports a disk image read-only over NBD on a loopback port with
// real qemu-nbd (Debian's qemu-utils), optionally exposing a dirty bitmap.
// Returns "127.0.0.1:port" and the process. Export name: "disk".
func QemuNBD(t testing.TB, image, format, bitmap string) (string, *Process) {
	t.Helper()
	return qemuNBD(t, image, format, bitmap, true)
}

// QemuNBDWritable exports image writable (a mirror's target).
func QemuNBDWritable(t testing.TB, image, format string) (string, *Process) {
	t.Helper()
	return qemuNBD(t, image, format, "", false)
}

// QemuNBDTLS exports image read-only over NBD with TLS required and a
// client certificate checked (tls-creds-x509, verify-peer=on), the
// credentials from dir (X509Dir).
func QemuNBDTLS(t testing.TB, image, format, dir string) (string, *Process) {
	t.Helper()
	return qemuNBD(t, image, format, "", true, "--object", "tls-creds-x509,id=tls0,endpoint=server,verify-peer=on,dir="+dir, "--tls-creds", "tls0")
}

func qemuNBD(t testing.TB, image, format, bitmap string, readOnly bool, extra ...string) (string, *Process) {
	t.Helper()
	bin, err := exec.LookPath("qemu-nbd")
	if err != nil {
		msg := "qemu-nbd not found (apt-get install qemu-utils)"
		if os.Getenv("STRATA_REQUIRE_SERVERS") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	port := FreePort(t)
	args := []string{"-t", "-e", "8", "-x", "disk", "-b", "127.0.0.1", "-p", fmt.Sprint(port), "-f", format}
	if readOnly {
		args = append(args, "-r")
	}
	if bitmap != "" {
		args = append(args, "-B", bitmap)
	}
	args = append(args, extra...)
	p := Start(t, "qemu-nbd", exec.Command(bin, append(args, image)...))
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	WaitTCP(t, addr, 10*time.Second)
	return addr, p
}

// Stop kills the process and waits for it.
func (p *Process) Stop() {
	if p.Cmd.ProcessState == nil {
		p.Cmd.Process.Kill()
		p.Cmd.Wait()
	}
}

// Qemu runs a qemu-utils command (qemu-img, qemu-io) or fails the test.
func Qemu(t testing.TB, name string, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("STRATA_REQUIRE_SERVERS") == "1" {
			t.Fatalf("%s not found (apt-get install qemu-utils)", name)
		}
		t.Skipf("%s not found (apt-get install qemu-utils)", name)
	}
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// Prometheus is a running Prometheus server.
type Prometheus struct {
	URL string // http://127.0.0.1:port
}

// StartPrometheus runs a real Prometheus with this configuration (YAML;
// rule file paths absolute), its data in a temporary directory.
func StartPrometheus(t testing.TB, config string) Prometheus {
	bin := Binary(t, "prometheus", PrometheusVersion)
	dir := t.TempDir()
	path := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	port := FreePort(t)
	Start(t, "prometheus", exec.Command(bin, "--config.file", path, "--storage.tsdb.path", filepath.Join(dir, "data"),
		"--web.listen-address", fmt.Sprintf("127.0.0.1:%d", port)))
	p := Prometheus{URL: fmt.Sprintf("http://127.0.0.1:%d", port)}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(p.URL + "/-/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("prometheus did not come up")
	return p
}

// MailpitVersion is the SMTP server the job reports are tested against.
const MailpitVersion = "v1.33.1"

// Mailpit is a running mailpit: an SMTP server that requires STARTTLS and
// AUTH, its messages read through its HTTP API.
type Mailpit struct {
	SMTP     string // 127.0.0.1:port
	API      string // http://127.0.0.1:port
	CAFile   string // the CA of its certificate
	User     string
	Password string
}

// StartMailpit runs mailpit with a certificate from X509Dir, STARTTLS
// required, one user, and Message-ID de-duplication as mail systems do.
func StartMailpit(t testing.TB) Mailpit {
	bin := Binary(t, "mailpit", MailpitVersion)
	certs := X509Dir(t)
	dir := t.TempDir()
	m := Mailpit{SMTP: fmt.Sprintf("127.0.0.1:%d", FreePort(t)), API: fmt.Sprintf("http://127.0.0.1:%d", FreePort(t)),
		CAFile: filepath.Join(certs, "ca-cert.pem"), User: "strata", Password: "mail-secret-0123"}
	auth := filepath.Join(dir, "smtp-auth")
	if err := os.WriteFile(auth, []byte(m.User+":"+m.Password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	Start(t, "mailpit", exec.Command(bin, "--smtp", m.SMTP, "--listen", strings.TrimPrefix(m.API, "http://"),
		"--database", filepath.Join(dir, "mail.db"), "--smtp-tls-cert", filepath.Join(certs, "server-cert.pem"),
		"--smtp-tls-key", filepath.Join(certs, "server-key.pem"), "--smtp-require-starttls", "--smtp-auth-file", auth,
		"--ignore-duplicate-ids", "--smtp-disable-rdns"))
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(m.API + "/api/v1/info"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				WaitTCP(t, m.SMTP, 10*time.Second)
				return m
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("mailpit did not come up")
	return m
}
