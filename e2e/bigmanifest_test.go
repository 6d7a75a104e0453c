package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/testserver"
)

// The path of a disk holding tens of TiB of data, scaled down: manifests
// spill above 4,096 data chunks and are read through a temporary file
// above 64 KiB (STRATA_MANIFEST_SPILL_ABOVE, STRATA_MANIFEST_WHOLE_MAX).
// Merge builds a spilled map and stores it from its file; the verifier,
// an incremental's merge (inheriting from the spilled parent through the
// qcow2's dirty bitmap), a certify verification and restore read them
// back through a file; both restores are bit-exact. In an encrypted
// repository the same, the manifests sealed and opened as streams.
func TestSpilledManifestsEndToEnd(t *testing.T) {
	for _, encrypted := range []bool{false, true} {
		t.Run(fmt.Sprint("encrypted=", encrypted), func(t *testing.T) { spilledManifests(t, encrypted) })
	}
}

func spilledManifests(t *testing.T, encrypted bool) {
	dir := t.TempDir()
	env := []string{"STRATA_MANIFEST_SPILL_ABOVE=4096", "STRATA_MANIFEST_WHOLE_MAX=65536"}
	if encrypted {
		key := filepath.Join(dir, "strata.key")
		os.WriteFile(key, []byte(strings.Repeat("5a", 32)+"\n"), 0o600)
		env = append(env, "STRATA_ENCRYPTION_KEY_FILE="+key)
	}
	st := startStack(t, stackOptions{chunkSize: 64 << 10, env: env})
	raw0, qcow := qcowWithBitmap(t, dir, "point0", 768<<20, 11) // 12,288 chunks, ~7,400 of data
	backup := func(addr string) contracts.BackupRecord {
		out := st.mustCLI("backup", "--vm", "spill", "--source", "nbd://"+addr+"/disk?bitmap=b1", "--wait")
		rec := st.record("spill", strings.TrimSpace(strings.Split(out, "\n")[0]))
		if rec.State != contracts.StateVerified {
			t.Fatalf("backup: %s %s", rec.State, rec.Error)
		}
		return rec
	}
	addr, nbd := testserver.QemuNBD(t, qcow, "qcow2", "b1")
	full := backup(addr)
	if data := full.Disks[0].Chunks - full.Disks[0].ZeroChunks; data <= 4096 {
		t.Fatalf("only %d data chunks: nothing spilled", data)
	}
	if !strings.Contains(st.procs["merge"][0].Output(), "manifest spilled") {
		t.Fatal("merge did not spill the manifest")
	}
	nbd.Stop()
	var cmds []string
	for i, off := range []int64{1 << 20, 400 << 20, 767 << 20} {
		cmds = append(cmds, "-c", fmt.Sprintf("write -P %d %d %d", i+1, off, 64<<10))
	}
	testserver.Qemu(t, "qemu-io", append([]string{"-f", "qcow2"}, append(cmds, qcow)...)...)
	raw1 := filepath.Join(dir, "point1.raw")
	testserver.Qemu(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow, raw1)
	addr, _ = testserver.QemuNBD(t, qcow, "qcow2", "b1")
	inc := backup(addr)
	if inc.Kind != contracts.KindIncremental || inc.Parent != full.ID {
		t.Fatalf("second backup: %s of %q (%s), want an incremental of %s", inc.Kind, inc.Parent, inc.FullReason, full.ID)
	}
	st.mustCLI("verify", "--vm", "spill", "--backup", inc.ID, "--mode", "certify")
	for _, p := range []struct{ id, raw string }{{full.ID, raw0}, {inc.ID, raw1}} {
		out := filepath.Join(dir, "restore-"+p.id+".img")
		st.mustCLI("restore", "--vm", "spill", "--backup", p.id, "--to", out)
		if sha256File(t, out) != sha256File(t, p.raw) {
			t.Fatalf("restore of %s (spilled manifest) differs from its point in time", p.id)
		}
	}
}
