package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
	var base []string // the environment without any STRATA_ setting
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "STRATA_") {
			base = append(base, kv)
		}
	}
	base = append(base, "XDG_STATE_HOME="+filepath.Join(dir, "state"), "OTEL_EXPORTER_OTLP_ENDPOINT=")
	env := append(slices.Clone(base), fmt.Sprintf("STRATA_NATS_URL=nats://127.0.0.1:%d", port), "STRATA_STORE_DIR="+filepath.Join(dir, "data", "objects"),
		"STRATA_CHUNK_SIZE=262144")
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
	// In another shell with nothing set, the CLI finds the dev stack by
	// itself (before, restore went to AWS S3).
	bare := exec.Command(filepath.Join(binDir, "strata"), "restore", "--vm", "laptop", "--backup", id, "--to", restored+".bare")
	bare.Env = base
	var stderr strings.Builder
	bare.Stderr = &stderr
	if out, err := bare.Output(); err != nil || !strings.Contains(stderr.String(), "using the repository of strata dev") {
		t.Fatalf("restore with nothing set: %v %s %s", err, out, stderr.String())
	}
	if sha256File(t, restored+".bare") != sha256File(t, img) {
		t.Fatal("restore with nothing set differs")
	}
	ls := exec.Command(filepath.Join(binDir, "strata"), "ls", "--vm", "laptop")
	ls.Env = base
	if out, err := ls.Output(); err != nil || !strings.Contains(string(out), id) {
		t.Fatalf("ls with nothing set: %v %s", err, out)
	}

	// STRATA_COMPRESSION=auto: the first full's chunks are S2, the chunks a
	// later backup adds are zstd; both restore bit for bit.
	objects := filepath.Join(dir, "data", "objects")
	first := chunkCodecs(t, objects, nil)
	if first[2] == 0 || first[1] != 0 {
		t.Fatalf("first full stored chunks by codec %v: want S2 (2) and no zstd (1)", first)
	}
	seen := map[string]bool{}
	chunkCodecs(t, objects, seen)
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	text := []byte(strings.Repeat("the next day's log line, compressible\n", 20000))
	if _, err := f.WriteAt(text, 8<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err = cli("backup", "--vm", "laptop", "--source", "file://"+img, "--wait")
	if err != nil {
		t.Fatalf("second backup in dev mode: %v %s", err, out)
	}
	id = strings.TrimSpace(strings.Split(out, "\n")[0])
	added := chunkCodecs(t, objects, seen)
	if added[1] == 0 || added[2] != 0 {
		t.Fatalf("second backup added chunks by codec %v: want zstd (1) and no S2 (2)", added)
	}
	if out, err := cli("restore", "--vm", "laptop", "--backup", id, "--to", restored, "--force"); err != nil {
		t.Fatalf("restore of the second backup: %v %s", err, out)
	}
	if sha256File(t, restored) != sha256File(t, img) {
		t.Fatal("dev mode restore of the second backup differs")
	}
}

// chunkCodecs counts the chunks stored in the repository under root (loose
// or packed) by the codec byte of their header, skipping (and then adding)
// those named in seen when it is not nil.
func chunkCodecs(t *testing.T, root string, seen map[string]bool) map[byte]int {
	t.Helper()
	n := map[byte]int{}
	for id, c := range storedChunks(t, root, "") {
		if seen[id] {
			continue
		}
		if seen != nil {
			seen[id] = true
		}
		b := c.bytes(t)
		if len(b) < 9 || string(b[:4]) != "STC1" {
			t.Fatalf("chunk %s in %s is not a stored chunk", id, c.Key)
		}
		n[b[4]]++
	}
	return n
}
