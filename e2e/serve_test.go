package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-backup/strata/internal/testserver"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/nbd"
)

// serveBackup starts `strata serve` for a VM's latest backup (extra
// flags after) and returns its address once it listens; the server stops
// with the test.
func (st *stack) serveBackup(vm string, extra ...string) (addr string, stop func()) {
	st.t.Helper()
	addr = fmt.Sprintf("127.0.0.1:%d", testserver.FreePort(st.t))
	cmd := exec.Command(filepath.Join(binDir, "strata"), append([]string{"serve", "--vm", vm, "--listen", addr, "--json"}, extra...)...)
	cmd.Env = st.env
	out, err := cmd.StdoutPipe()
	if err != nil {
		st.t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		st.t.Fatal(err)
	}
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cmd.Process.Signal(os.Interrupt)
			if err := cmd.Wait(); err != nil {
				st.t.Errorf("strata serve did not stop cleanly on SIGINT: %v\n%s", err, stderr.String())
			}
		}
	}
	st.t.Cleanup(stop)
	// The JSON comes once the listener is open.
	var info struct {
		Exports []struct{ Name, URL string }
	}
	if err := json.NewDecoder(out).Decode(&info); err != nil || len(info.Exports) == 0 || info.Exports[0].Name != "disk0" {
		st.t.Fatalf("strata serve: %+v %v\n%s", info, err, stderr.String())
	}
	return addr, stop
}

// A backup point served over NBD reads back bit for bit through qemu's
// own tools: qemu-img convert of the export equals the backed-up GPT disk
// (ext4 + FAT), qemu-img map reports exactly its zero chunks as holes,
// reads at unaligned offsets (qemu-io and the Go client) return the right
// bytes, and writes are refused. Then one stored chunk gets a flipped
// bit: reads of its range fail with EIO (qemu-img convert fails) while
// every other range still reads.
func TestServeBackupOverNBD(t *testing.T) {
	const cs = 64 << 10
	st := startStack(t, stackOptions{chunkSize: cs})
	img := filepath.Join(t.TempDir(), "disk.img")
	testserver.PartitionedImage(t, img)
	// A run of one pattern across chunk boundaries in the FAT partition's
	// free space, for qemu-io's pattern check; random bytes after it.
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	patOff, patLen := int64(testserver.FATOffset+(8<<20)+123), int64(300<<10)
	f.WriteAt(bytes.Repeat([]byte{0xa5}, int(patLen)), patOff)
	noise := make([]byte, 1<<20)
	for i := range noise {
		noise[i] = byte(rand.Uint32())
	}
	f.WriteAt(noise, testserver.FATOffset+(12<<20))
	f.Close()
	want, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	st.mustCLI("backup", "--vm", "web", "--source", "file://"+img, "--wait")

	// Without NATS (STRATA_NATS_URL empty): the record comes from its copy
	// in the repository, and the restore is the same.
	noNATS := exec.Command(filepath.Join(binDir, "strata"), "restore", "--vm", "web", "--backup", "latest", "--to", filepath.Join(t.TempDir(), "r.img"))
	noNATS.Env = append(append([]string{}, st.env...), "STRATA_NATS_URL=")
	if o, err := noNATS.CombinedOutput(); err != nil {
		t.Fatalf("restore without NATS: %v\n%s", err, o)
	}
	if got, _ := os.ReadFile(noNATS.Args[len(noNATS.Args)-1]); !bytes.Equal(got, want) {
		t.Fatal("restore without NATS differs from the backed-up disk")
	}

	addr, stop := st.serveBackup("web")
	url := "nbd://" + addr + "/disk0"
	out := filepath.Join(t.TempDir(), "out.raw")
	testserver.Qemu(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", url, out)
	if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
		t.Fatal("qemu-img convert of the served backup differs from the backed-up disk")
	}

	// qemu-img map: data exactly where the disk has a non-zero chunk.
	var ranges []struct {
		Start, Length int64
		Data          bool
	}
	if err := json.Unmarshal([]byte(testserver.Qemu(t, "qemu-img", "map", "--output=json", "-f", "raw", url)), &ranges); err != nil {
		t.Fatal(err)
	}
	holes := int64(0)
	for _, r := range ranges {
		for off := r.Start; off < r.Start+r.Length; off += cs {
			zero := chunk.AllZero(want[off:min(off+cs, int64(len(want)))])
			if zero == r.Data {
				t.Fatalf("qemu-img map: chunk at %d reported data=%v; all-zero: %v", off, r.Data, zero)
			}
			if zero {
				holes++
			}
		}
	}
	if _, zero := chunkCensus(t, img, cs); holes != int64(zero) || zero == 0 {
		t.Fatalf("qemu-img map reports %d zero chunks as holes; the disk has %d", holes, zero)
	}

	testserver.Qemu(t, "qemu-io", "-r", "-f", "raw", "-c", fmt.Sprintf("read -P 0xa5 %d %d", patOff+7, patLen-20), url)
	c, err := nbd.Dial(addr, "disk0", "base:allocation")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		off := rand.Int64N(int64(len(want)) - 1)
		n := 1 + rand.Int64N(min(int64(len(want))-off, 3*cs))
		got := make([]byte, n)
		if _, err := c.ReadAt(got, off); err != nil || !bytes.Equal(got, want[off:off+n]) {
			t.Fatalf("read [%d, +%d): %v (equal: %v)", off, n, err, bytes.Equal(got, want[off:off+n]))
		}
	}
	c.Close()
	if o, err := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 1 0 4096", url).CombinedOutput(); err == nil && !strings.Contains(string(o), "ermission") && !strings.Contains(string(o), "read-only") && !strings.Contains(string(o), "Read-only") {
		t.Fatalf("a write to the read-only export was not refused: %s", o)
	}
	stop()

	// One flipped bit in the chunk holding the noise.
	at := int64(testserver.FATOffset + (12 << 20))
	victim := chunk.Hash(want[at : at+cs]).String()
	sc, ok := st.storedChunks()[victim]
	if !ok {
		t.Fatalf("chunk %s at %d not stored", victim, at)
	}
	sc.flip(t, sc.Len/2, 0x10)
	addr, _ = st.serveBackup("web")
	url = "nbd://" + addr + "/disk0"
	if o, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "raw", url, out+".2").CombinedOutput(); err == nil {
		t.Fatal("qemu-img convert of a backup with a damaged chunk succeeded")
	} else {
		t.Logf("qemu-img convert refused: %s", bytes.TrimSpace(o))
	}
	c, err = nbd.Dial(addr, "disk0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.ReadAt(make([]byte, 4096), at+100); err == nil || !strings.Contains(err.Error(), "server error 5") {
		t.Fatalf("read of the damaged chunk: %v, want EIO", err)
	}
	c.Close()
	c, err = nbd.Dial(addr, "disk0") // an error reply leaves the connection usable, but start clean
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, testserver.Ext4Offset + 5000, at - cs, at + cs} {
		got := make([]byte, cs)
		if _, err := c.ReadAt(got, off); err != nil || !bytes.Equal(got, want[off:off+cs]) {
			t.Fatalf("read of an undamaged range at %d beside the damaged chunk: %v", off, err)
		}
	}
}
