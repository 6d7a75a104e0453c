package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strata-backup/strata/internal/testserver"
	"github.com/strata-backup/strata/pkg/demodisk"
)

// guestWrite is a write made through an export, applied to want as well.
type guestWrite struct {
	off, n  int64
	pattern byte // 0 with zero set: write-zeroes
	zero    bool
}

func (w guestWrite) qemuIO() string {
	if w.zero {
		return fmt.Sprintf("write -z %d %d", w.off, w.n)
	}
	return fmt.Sprintf("write -P %#x %d %d", w.pattern, w.off, w.n)
}

// writeThrough makes writes through an NBD export with real qemu-io,
// then flushes, and applies them to want.
func writeThrough(t *testing.T, url string, want []byte, writes ...guestWrite) {
	t.Helper()
	args := []string{"-f", "raw"}
	for _, w := range writes {
		args = append(args, "-c", w.qemuIO())
		if w.zero {
			clear(want[w.off : w.off+w.n])
		} else {
			copy(want[w.off:], bytes.Repeat([]byte{w.pattern}, int(w.n)))
		}
	}
	args = append(args, "-c", "flush", url)
	testserver.Qemu(t, "qemu-io", args...)
}

// convert reads a whole export with qemu-img convert.
func convert(t *testing.T, url string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out.raw")
	testserver.Qemu(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", url, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Writable instant recovery: writes through the export (unaligned,
// zeroing, across chunks) land in the overlay; served again from the same
// overlay they are all there; the backup itself is untouched (served
// read-only it is the original, certify passes); an overlay made over one
// backup is refused for another; and a backup of the export (an NBD
// source like any other) restores to the written disk.
func TestServeWritableOverlay(t *testing.T) {
	const cs = 64 << 10
	st := startStack(t, stackOptions{chunkSize: cs})
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := demodisk.Write(img, 24<<20+4096, 21); err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	st.mustCLI("backup", "--vm", "app", "--source", "file://"+img, "--wait")
	id := st.records("app")[0].ID
	dir := filepath.Join(t.TempDir(), "overlay")

	want := bytes.Clone(orig)
	addr, stop := st.serveBackup("app", "--writable", "--overlay", dir)
	url := "nbd://" + addr + "/disk0"
	writeThrough(t, url, want,
		guestWrite{off: 1000, n: 5000, pattern: 0x11},
		guestWrite{off: 3*cs - 7, n: 2*cs + 30, pattern: 0x22},
		guestWrite{off: 8 << 20, n: 4 * cs, zero: true},
		guestWrite{off: int64(len(want)) - 100, n: 100, pattern: 0x33})
	if !bytes.Equal(convert(t, url), want) {
		t.Fatal("the writable export does not read back its writes")
	}
	stop()

	// A restarted server continues from the overlay.
	addr, stop = st.serveBackup("app", "--writable", "--overlay", dir)
	url = "nbd://" + addr + "/disk0"
	if !bytes.Equal(convert(t, url), want) {
		t.Fatal("served again from the same overlay, the writes are gone")
	}
	writeThrough(t, url, want, guestWrite{off: 12<<20 + 1, n: 3 * cs, pattern: 0x44})
	stop()
	addr, stop = st.serveBackup("app", "--writable", "--overlay", dir)
	if !bytes.Equal(convert(t, "nbd://"+addr+"/disk0"), want) {
		t.Fatal("the second round of writes is gone")
	}
	// The running export backs up like any NBD source: a backup of its own
	// VM name that restores to the writes.
	st.mustCLI("backup", "--vm", "app-recovered", "--source", "nbd://"+addr+"/disk0", "--wait")
	stop()
	restored := filepath.Join(t.TempDir(), "recovered.img")
	st.mustCLI("restore", "--vm", "app-recovered", "--backup", "latest", "--to", restored)
	if got, _ := os.ReadFile(restored); !bytes.Equal(got, want) {
		t.Fatal("a backup of the writable export does not restore to its writes")
	}

	// The repository was not touched.
	addr, stop = st.serveBackup("app")
	if !bytes.Equal(convert(t, "nbd://"+addr+"/disk0"), orig) {
		t.Fatal("the backup served read-only is not the original any more")
	}
	stop()
	st.mustCLI("verify", "--vm", "app", "--backup", id, "--mode", "certify")

	// The overlay belongs to that backup: serving another with it is refused.
	os.WriteFile(img, want, 0o644)
	st.mustCLI("backup", "--vm", "app", "--source", "file://"+img, "--wait")
	_, errOut, code := st.cli("serve", "--vm", "app", "--listen", fmt.Sprintf("127.0.0.1:%d", testserver.FreePort(t)), "--writable", "--overlay", dir)
	if code == 0 || !strings.Contains(errOut, id) {
		t.Fatalf("an overlay of backup %s served over another backup: exit %d: %s", id, code, errOut)
	}
}

// liveRestore runs `strata restore --serve` and reads its JSON events.
type liveRestore struct {
	cmd    *exec.Cmd
	events chan map[string]any
	stderr *bytes.Buffer
}

func (st *stack) startLiveRestore(args ...string) *liveRestore {
	st.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "strata"), append([]string{"restore", "--json"}, args...)...)
	cmd.Env = append(append([]string{}, st.env...), "STRATA_LIVE_RESTORE_MIB_PER_SEC=4")
	out, err := cmd.StdoutPipe()
	if err != nil {
		st.t.Fatal(err)
	}
	lr := &liveRestore{cmd: cmd, events: make(chan map[string]any, 8), stderr: &bytes.Buffer{}}
	cmd.Stderr = lr.stderr
	if err := cmd.Start(); err != nil {
		st.t.Fatal(err)
	}
	st.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	go func() {
		defer close(lr.events)
		dec := json.NewDecoder(bufio.NewReader(out))
		for {
			var ev map[string]any
			if dec.Decode(&ev) != nil {
				return
			}
			lr.events <- ev
		}
	}()
	return lr
}

// next waits for the next event, which must be of the kind given.
func (lr *liveRestore) next(t *testing.T, kind string, within time.Duration) map[string]any {
	t.Helper()
	select {
	case ev, ok := <-lr.events:
		if !ok || ev["event"] != kind {
			t.Fatalf("live restore: want a %q event, got %v\nstderr: %s", kind, ev, lr.stderr)
		}
		return ev
	case <-time.After(within):
		t.Fatalf("live restore: no %q event within %v\nstderr: %s", kind, within, lr.stderr)
	}
	return nil
}

// Live restore: the backup is served at once while it is copied into the
// target (throttled); guest writes land mid-copy; the server is killed
// (SIGKILL) mid-copy and the same command resumes from its persisted
// progress; at the end the target is the backup with exactly the guest's
// writes applied, before, across and after the kill and the completion.
func TestLiveRestoreSurvivesAKill(t *testing.T) {
	const cs = 64 << 10
	st := startStack(t, stackOptions{chunkSize: cs})
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := demodisk.Write(img, 32<<20, 22); err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	st.mustCLI("backup", "--vm", "db", "--source", "file://"+img, "--wait")
	target := filepath.Join(t.TempDir(), "db.img")
	addr := fmt.Sprintf("127.0.0.1:%d", testserver.FreePort(t))
	args := []string{"--vm", "db", "--backup", "latest", "--to", target, "--serve", addr}
	url := "nbd://" + addr + "/disk0"

	lr := st.startLiveRestore(args...)
	ev := lr.next(t, "serving", 30*time.Second)
	if ev["chunks_present"].(float64) != 0 {
		t.Fatalf("a fresh live restore starts with %v chunks", ev["chunks_present"])
	}
	// Writes at the start (copied already or soon), the middle and the end
	// (not copied yet), one partial chunk, one zeroing.
	writeThrough(t, url, want,
		guestWrite{off: 100, n: 3000, pattern: 0x5a},
		guestWrite{off: 16<<20 - 5, n: cs + 10, pattern: 0x6b},
		guestWrite{off: 20 << 20, n: 2 * cs, zero: true},
		guestWrite{off: 32<<20 - 4096, n: 4096, pattern: 0x7c})
	time.Sleep(2500 * time.Millisecond) // ~10 MiB copied at 4 MiB/s, progress flushed each second
	lr.cmd.Process.Signal(syscall.SIGKILL)
	lr.cmd.Wait()
	if _, err := os.Stat(target); err == nil {
		t.Fatal("the target is in place before the copy finished")
	}

	lr = st.startLiveRestore(args...)
	ev = lr.next(t, "serving", 30*time.Second)
	present, total := ev["chunks_present"].(float64), ev["chunks"].(float64)
	if present < 8 || present >= total {
		t.Fatalf("resumed with %v of %v chunks: the progress before the kill was not kept", present, total)
	}
	if !bytes.Equal(convert(t, url), want) {
		t.Fatal("after the restart the export is not the backup with the guest's writes")
	}
	writeThrough(t, url, want, guestWrite{off: 30<<20 + 17, n: 5 * cs, pattern: 0x8d})
	lr.next(t, "restored", 60*time.Second)
	// Complete: plain pass-through to the target.
	writeThrough(t, url, want, guestWrite{off: 2<<20 + 3, n: 70000, pattern: 0x9e})
	lr.cmd.Process.Signal(os.Interrupt)
	if err := lr.cmd.Wait(); err != nil {
		t.Fatalf("live restore did not stop cleanly: %v\n%s", err, lr.stderr)
	}
	got, err := os.ReadFile(target)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the restored target is not the backup with exactly the guest's writes applied")
	}
	for _, leftover := range []string{target + ".partial", target + ".partial.map"} {
		if _, err := os.Stat(leftover); err == nil {
			t.Fatalf("%s left behind by a complete restore", leftover)
		}
	}
}
