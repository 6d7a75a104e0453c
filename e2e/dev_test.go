package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-backup/strata/internal/testserver"
	"github.com/strata-backup/strata/pkg/demodisk"
)

// The laptop mode: `strata dev` (embedded NATS, all six services, a local
// directory repository) backs a disk up with certification and restores it
// bit-exact: every service's configuration loads in one process.
func TestDevMode(t *testing.T) {
	dir := t.TempDir()
	port := testserver.FreePort(t)
	env := append(os.Environ(), fmt.Sprintf("STRATA_NATS_URL=nats://127.0.0.1:%d", port), "STRATA_STORE_DIR="+filepath.Join(dir, "data", "objects"),
		"OTEL_EXPORTER_OTLP_ENDPOINT=", "STRATA_CHUNK_SIZE=262144")
	dev := exec.Command(filepath.Join(binDir, "strata"), "dev", "--data", filepath.Join(dir, "data"), "--port", fmt.Sprint(port))
	dev.Env = env
	testserver.Start(t, "strata-dev", dev)
	cli := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(binDir, "strata"), args...)
		cmd.Env = env
		out, err := cmd.Output()
		return string(out), err
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if _, err := cli("ls"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("strata dev did not come up")
		}
	}
	img := filepath.Join(dir, "disk.img")
	if err := demodisk.Write(img, 64<<20, 8); err != nil {
		t.Fatal(err)
	}
	out, err := cli("backup", "--vm", "laptop", "--source", "file://"+img, "--verify", "certify", "--wait")
	if err != nil {
		t.Fatalf("backup in dev mode: %v %s", err, out)
	}
	id := strings.TrimSpace(strings.Split(out, "\n")[0])
	restored := filepath.Join(dir, "restored.img")
	if out, err := cli("restore", "--vm", "laptop", "--backup", id, "--to", restored); err != nil {
		t.Fatalf("restore in dev mode: %v %s", err, out)
	}
	if sha256File(t, restored) != sha256File(t, img) {
		t.Fatal("dev mode restore differs")
	}
}
