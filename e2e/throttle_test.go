package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/testserver"
	"github.com/strata-backup/strata/pkg/demodisk"
)

// A busy S3: every service reaches versitygw through a proxy that
// allows 50 requests a second (503 SlowDown above) and drops one
// connection in 97, before or after the server did the request. One
// object per chunk makes a backup hundreds of requests. The backup and
// its verification complete and the restore is bit-exact; the proxy saw
// throttling, the services cut their concurrency (and say so), and the
// accepted rate came back up near the limit afterwards.
func TestS3Throttling(t *testing.T) {
	s3 := testserver.Versity(t)
	proxy := testserver.StartThrottleProxy(t, s3.Endpoint, 50, 97)
	st := startStack(t, stackOptions{chunkSize: 64 << 10, env: []string{"STRATA_PACKS=false"},
		s3: &testserver.S3{Endpoint: proxy.URL, AccessKey: s3.AccessKey, SecretKey: s3.SecretKey}})
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := demodisk.Write(img, 24<<20, 5); err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(strings.Split(st.mustCLI("backup", "--vm", "busy", "--source", "file://"+img, "--verify", "certify", "--wait"), "\n")[0])
	if rec := st.record("busy", id); rec.State != contracts.StateVerified {
		t.Fatalf("backup through a throttling S3: %s %s", rec.State, rec.Error)
	}
	out := filepath.Join(t.TempDir(), "restored.img")
	st.mustCLI("restore", "--vm", "busy", "--backup", id, "--to", out)
	want, _ := os.ReadFile(img)
	if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
		t.Fatal("the restore through a throttling S3 is not bit-exact")
	}
	log := proxy.Log()
	var lines []string
	throttled, dropped, firstThrottle, recovered := 0, 0, -1, false
	for _, s := range log {
		lines = append(lines, s.String())
		throttled += s.Throttled
		dropped += s.Dropped
		if s.Throttled > 0 && firstThrottle < 0 {
			firstThrottle = s.Second
		}
		if firstThrottle >= 0 && s.Second > firstThrottle && s.Accepted >= 30 {
			recovered = true
		}
	}
	t.Logf("the proxy, per second:\n%s", strings.Join(lines, "\n"))
	if throttled == 0 || dropped == 0 || !recovered {
		t.Fatalf("throttled %d, dropped %d, back near the limit after the first throttling: %v", throttled, dropped, recovered)
	}
	cut := false
	for _, p := range st.procs["transfer"] {
		cut = cut || strings.Contains(p.Output(), "object store throttling: fewer requests at once")
	}
	if !cut {
		t.Fatal("the transfer worker never cut its S3 concurrency")
	}
}
