package e2e

import (
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/source"
	"github.com/strata-backup/strata/pkg/testdisk"
	"github.com/strata-backup/strata/pkg/testserver"
)

// A full backup from a real qemu-nbd export reads only what
// base:allocation says holds data, and restores bit-exact.
func TestNBDFullBackupReadsOnlyAllocated(t *testing.T) {
	st := startStack(t, stackOptions{})
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	if err := testdisk.Write(raw, 256<<20, 11); err != nil {
		t.Fatal(err)
	}
	qcow := filepath.Join(dir, "disk.qcow2")
	// qemu-img convert leaves zero runs unallocated, like a thin disk.
	testserver.Qemu(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow)
	addr := testserver.QemuNBD(t, qcow, "qcow2", "")
	src := "nbd://" + addr + "/disk"

	u, _ := url.Parse(src)
	d, err := source.OpenNBD(u)
	if err != nil {
		t.Fatal(err)
	}
	ext, _, err := d.ChangedExtents(ctxT(t, 30e9), "")
	d.Close()
	if err != nil {
		t.Fatal(err)
	}
	var allocated int64
	for _, r := range source.ChunkRuns(ext, chunkSize) {
		allocated += (r[1] - r[0]) * chunkSize
	}
	allocated = min(allocated, 256<<20)
	if allocated >= 256<<20 {
		t.Fatalf("the test disk is fully allocated (%d bytes): the test would prove nothing", allocated)
	}

	id := strings.TrimSpace(strings.Split(st.mustCLI("backup", "--vm", "kvm-01", "--source", src, "--wait"), "\n")[0])
	rec := st.record("kvm-01", id)
	if rec.State != contracts.StateVerified {
		t.Fatalf("nbd backup %s: %s", rec.State, rec.Error)
	}
	if read := rec.Disks[0].ReadBytes; read > allocated || read == 0 {
		t.Fatalf("read %d bytes from the export; allocated (in whole chunks) %d of %d", read, allocated, 256<<20)
	}
	t.Logf("read %d of %d bytes (allocated in whole chunks: %d)", rec.Disks[0].ReadBytes, 256<<20, allocated)
	out := filepath.Join(dir, "restored.img")
	st.mustCLI("restore", "--vm", "kvm-01", "--backup", id, "--to", out)
	if sha256File(t, out) != sha256File(t, raw) {
		t.Fatal("restore of the NBD backup differs from the disk")
	}
}
