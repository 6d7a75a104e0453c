package e2e

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/e2e/vcsimcbt"
	"github.com/strata-backup/strata/internal/testserver"
	"github.com/strata-backup/strata/pkg/chunk"
)

// vSphere on the simulator: a VM with two disks, a full backup reading
// only what CBT says is allocated, 2 % of blocks rewritten at scattered
// offsets, an incremental that reads (about) only the changed extents and
// uploads exactly the chunks overlapping them; both points restore
// bit-exact; the backup's snapshot is gone from the VM afterwards. Then a
// CBT reset: the next backup falls back to a full read, says why, stores
// nothing new, and restores bit-exact.
func TestVSphereIncrementalFromCBT(t *testing.T) {
	const cs = 64 << 10
	sim := vcsimcbt.Start(t, "127.0.0.1:0")
	st := startStack(t, stackOptions{chunkSize: cs, extraEnv: map[string][]string{"snapshotter": sim.Env(), "transfer": sim.Env()}})
	sizes := []int64{96 << 20, 64 << 20}
	vm := sim.CreateVM("web-01", sizes...)
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(7, 7))
	block := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	// The guest's initial data: 1 MiB blocks over about 40 % of each disk.
	for i, size := range sizes {
		for off := int64(0); off+(3<<20) <= size; off += 5 << 20 {
			sim.Write(vm, i, off, block(1<<20))
			sim.Write(vm, i, off+(2<<20), block(1<<20))
		}
	}
	src := "vsphere://" + sim.Host + "/web-01"

	full := st.vsphereBackup(sim, vm, "web-01", src)
	if full.Kind != contracts.KindFull || len(full.Disks) != 2 || !strings.Contains(full.Note, "enabled") {
		t.Fatalf("first backup: kind %s, %d disks, note %q (CBT was off: Strata enables it and says so)", full.Kind, len(full.Disks), full.Note)
	}
	for i, d := range full.Disks {
		allocated := int64(0)
		for off := int64(0); off+(3<<20) <= sizes[i]; off += 5 << 20 {
			allocated += 2 << 20
		}
		if d.ReadBytes != allocated || d.ChangeID == "" {
			t.Fatalf("full backup of %s read %d bytes (allocated %d), change id %q", d.Name, d.ReadBytes, allocated, d.ChangeID)
		}
	}
	point0 := copyDisks(t, sim, vm, dir, "point0")

	// 2 % of each disk's blocks rewritten, scattered, chunk-aligned.
	changed := map[[2]int64]bool{} // disk, chunk
	for i, size := range sizes {
		blocks := size / cs
		for n := 0; n < int(blocks)/50; n++ {
			c := rng.Int64N(blocks)
			sim.Write(vm, i, c*cs, block(cs))
			changed[[2]int64{int64(i), c}] = true
		}
	}
	point1 := copyDisks(t, sim, vm, dir, "point1")

	inc := st.vsphereBackup(sim, vm, "web-01", src)
	if inc.Kind != contracts.KindIncremental || inc.Parent != full.ID {
		t.Fatalf("second backup: kind %s parent %s (want %s): %s", inc.Kind, inc.Parent, full.ID, inc.FullReason)
	}
	var uploaded int64
	for _, d := range inc.Disks {
		if d.ChangedBytes == 0 || float64(d.ReadBytes) > 1.5*float64(d.ChangedBytes) {
			t.Fatalf("incremental of %s read %d bytes for %d changed", d.Name, d.ReadBytes, d.ChangedBytes)
		}
		uploaded += d.UploadedChunks
		t.Logf("%s: read %d bytes, changed %d, uploaded %d chunks", d.Name, d.ReadBytes, d.ChangedBytes, d.UploadedChunks)
	}
	if uploaded != int64(len(changed)) {
		t.Fatalf("incremental uploaded %d chunks; %d chunks overlap the changes", uploaded, len(changed))
	}

	for _, p := range []struct {
		id    string
		disks []string
	}{{full.ID, point0}, {inc.ID, point1}} {
		st.checkRestore("web-01", p.id, p.disks)
	}
	// Served over NBD, both disks of a point read back bit for bit, one
	// export each (disk0, disk1 in the record's order).
	addr, stop := st.serveBackup("web-01", "--backup", inc.ID)
	for i, path := range point1 {
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := convert(t, fmt.Sprintf("nbd://%s/disk%d", addr, i)); !bytes.Equal(got, want) {
			t.Fatalf("export disk%d of backup %s differs from the disk backed up", i, inc.ID)
		}
	}
	stop()

	// CBT reset (vSphere does this when a VM moves or a disk is resized):
	// the parent's change id is refused, so the backup re-reads the disks.
	sim.ResetCBT(vm)
	after := st.vsphereBackup(sim, vm, "web-01", src)
	if after.Kind != contracts.KindFull || !strings.Contains(after.FullReason, "change tracking refused") {
		t.Fatalf("backup after a CBT reset: kind %s, reason %q", after.Kind, after.FullReason)
	}
	for _, d := range after.Disks {
		if d.UploadedChunks != 0 {
			t.Fatalf("full re-read after a CBT reset of an unchanged disk uploaded %d chunks", d.UploadedChunks)
		}
	}
	st.checkRestore("web-01", after.ID, point1)

	// An unknown VM fails with a clear reason and nothing stored.
	out, _, code := st.cli("backup", "--vm", "ghost", "--source", "vsphere://"+sim.Host+"/ghost", "--wait")
	recs := st.records("ghost")
	if code == 0 || len(recs) != 1 || recs[0].State != contracts.StateFailed || !strings.Contains(recs[0].Error, "not found") {
		t.Fatalf("backup of an unknown VM: exit %d, %s, records %+v", code, out, recs)
	}
}

// vsphereBackup backs the VM up, waits until it is verified and its
// snapshot has been removed from the VM.
func (st *stack) vsphereBackup(sim *vcsimcbt.Sim, vm *object.VirtualMachine, name, src string) contracts.BackupRecord {
	st.t.Helper()
	id := strings.TrimSpace(strings.Split(st.mustCLI("backup", "--vm", name, "--source", src, "--wait"), "\n")[0])
	rec := st.record(name, id)
	if rec.State != contracts.StateVerified {
		st.t.Fatalf("backup %s: %s %s", id, rec.State, rec.Error)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(sim.Snapshots(vm)) > 0 {
		if time.Now().After(deadline) {
			st.t.Fatalf("snapshots still on the VM after backup %s: %v", id, sim.Snapshots(vm))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return rec
}

// checkRestore restores every disk of a backup and compares each with its
// copy taken at the backup's point in time.
func (st *stack) checkRestore(vm, id string, want []string) {
	st.t.Helper()
	out := filepath.Join(st.t.TempDir(), "restore.img")
	st.mustCLI("restore", "--vm", vm, "--backup", id, "--to", out)
	for i, w := range want {
		got := out
		if i > 0 {
			got = out + "." + string(rune('0'+i))
		}
		if sha256File(st.t, got) != sha256File(st.t, w) {
			st.t.Fatalf("restore of disk %d of backup %s differs from its point in time", i, id)
		}
	}
}

// copyDisks copies the VM's disks as they are now.
func copyDisks(t *testing.T, sim *vcsimcbt.Sim, vm *object.VirtualMachine, dir, name string) []string {
	t.Helper()
	var out []string
	for i := range sim.DiskCount(vm) {
		dst := filepath.Join(dir, name+"-disk"+string(rune('0'+i)))
		src, err := os.Open(sim.DiskPath(vm, i))
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(dst)
		if err == nil {
			_, err = io.Copy(f, src)
		}
		src.Close()
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		out = append(out, dst)
	}
	return out
}

// Restore test of a vSphere backup (a GPT disk with ext4 and FAT made by
// the real tools, written into the VM's disk): the restored disk is
// inspected, then a throwaway VM made from it is powered on and destroyed
// (Xen Orchestra's health check). Then a restore back to the hypervisor:
// a new VM beside the original whose disk holds exactly the backed-up
// bytes; restoring onto an existing VM name is refused; and, once the
// original VM is destroyed, a restore that places the new VM in the
// datacenter's defaults.
func TestVSphereRestoreTestAndRestoreToHypervisor(t *testing.T) {
	sim := vcsimcbt.Start(t, "127.0.0.1:0")
	st := startStack(t, stackOptions{chunkSize: 64 << 10, env: sim.Env(),
		extraEnv: map[string][]string{"api": {"STRATA_API_RESTORE_TARGETS=vsphere://" + sim.Host + "/"}}})
	vm := sim.CreateVM("app-01", 64<<20)
	img := filepath.Join(t.TempDir(), "disk.img")
	testserver.PartitionedImage(t, img)
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(data); off += 1 << 20 {
		if !chunk.AllZero(data[off : off+1<<20]) {
			sim.Write(vm, 0, int64(off), data[off:off+1<<20])
		}
	}
	src := "vsphere://" + sim.Host + "/app-01"
	out := st.mustCLI("backup", "--vm", "app-01", "--source", src, "--verify", "restore-test", "--wait")
	rec := st.record("app-01", strings.TrimSpace(strings.Split(out, "\n")[0]))
	if rec.State != contracts.StateVerified || rec.Verify != contracts.VerifyRestoreTest {
		t.Fatalf("restore-test backup: %s %s %s", rec.State, rec.Verify, rec.Error)
	}
	check := "strata-check-" + rec.ID
	if !slices.Contains(sim.PoweredOn(), check) {
		t.Fatalf("no health-check VM was powered on (powered on: %v)", sim.PoweredOn())
	}
	if sim.VMExists(check) {
		t.Fatalf("health-check VM %s left behind", check)
	}

	if hw := rec.VMConfig; hw == nil || hw.CPUs != vcsimcbt.VMCPUs || hw.MemoryMB != vcsimcbt.VMMemoryMB || hw.GuestID != "ubuntu64Guest" || hw.Firmware != "efi" {
		t.Fatalf("backup record's VM hardware: %+v", rec.VMConfig)
	}
	sameHardware := func(name string) {
		t.Helper()
		guest, cpus, mem, fw := sim.Hardware(name)
		if guest != "ubuntu64Guest" || cpus != vcsimcbt.VMCPUs || mem != vcsimcbt.VMMemoryMB || fw != "efi" {
			t.Fatalf("restored VM %s: guest %s, %d CPUs, %d MB, firmware %s; want the backed-up VM's", name, guest, cpus, mem, fw)
		}
	}
	st.mustCLI("restore", "--vm", "app-01", "--backup", rec.ID, "--to", "vsphere://"+sim.Host+"/app-01-restored")
	if !sim.VMExists("app-01-restored") {
		t.Fatal("restored VM not in the inventory")
	}
	sameHardware("app-01-restored")
	if sha256File(t, sim.FlatFile("app-01-restored", 0)) != sha256File(t, img) {
		t.Fatal("restored VM's disk differs from the backed-up disk")
	}
	if _, errOut, code := st.cli("restore", "--vm", "app-01", "--backup", rec.ID, "--to", "vsphere://"+sim.Host+"/app-01"); code == 0 || !strings.Contains(errOut, "exists already") {
		t.Fatalf("restore onto an existing VM: exit %d, %s", code, errOut)
	}

	// The same through the operator API: a target outside
	// STRATA_API_RESTORE_TARGETS is refused, one inside is a new VM.
	apiRestore := func(target string) (int, string) {
		resp, err := http.Post(st.http+"/v1/vms/app-01/backups/"+rec.ID+"/restore", "application/json", strings.NewReader(`{"target":"`+target+`"}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := apiRestore("vsphere://vc.elsewhere.example/app-01-x"); code != http.StatusForbidden {
		t.Fatalf("API restore to a host outside the allowed targets: %d %s", code, body)
	}
	if code, body := apiRestore("vsphere://" + sim.Host + "/app-01-api"); code != http.StatusOK {
		t.Fatalf("API restore into vSphere: %d %s", code, body)
	}
	if !sim.VMExists("app-01-api") || sha256File(t, sim.FlatFile("app-01-api", 0)) != sha256File(t, img) {
		t.Fatal("API restore: no VM, or its disk differs from the backed-up disk")
	}
	sameHardware("app-01-api")

	// Disaster recovery: the backed-up VM is gone; the restore places the
	// new VM in its datacenter's defaults.
	sim.DestroyVM("app-01")
	if _, errOut, code := st.cli("restore", "--vm", "app-01", "--backup", rec.ID, "--to", "vsphere://"+sim.Host+"/app-01-dr?datastore=nope"); code == 0 || !strings.Contains(errOut, "datastore nope") {
		t.Fatalf("restore to a datastore that does not exist: exit %d, %s", code, errOut)
	}
	st.mustCLI("restore", "--vm", "app-01", "--backup", rec.ID, "--to", "vsphere://"+sim.Host+"/app-01-dr?datastore=LocalDS_0&folder=/DC0/vm")
	if !sim.VMExists("app-01-dr") || sha256File(t, sim.FlatFile("app-01-dr", 0)) != sha256File(t, img) {
		t.Fatal("restore of a lost VM: no VM, or its disk differs from the backed-up disk")
	}
	sameHardware("app-01-dr")
}

// Consistency on vSphere: the snapshot is quiesced through VMware Tools
// (vcsim accepts the flag: the API path), host hooks run around it; a VM
// whose Tools cannot quiesce (the simulator answers ToolsUnavailable, as
// vSphere does without Tools running) falls back to a crash-consistent
// snapshot with the reason, or fails a required backup with it, and
// leaves no snapshot either way.
func TestVSphereQuiesce(t *testing.T) {
	sim := vcsimcbt.Start(t, "127.0.0.1:0")
	hooksDir := t.TempDir()
	stamps := filepath.Join(t.TempDir(), "stamps")
	os.WriteFile(filepath.Join(hooksDir, "stamp"), []byte("#!/bin/sh\necho \"$1 $STRATA_VM\" >> "+stamps+"\n"), 0o755)
	st := startStack(t, stackOptions{chunkSize: 64 << 10, extraEnv: map[string][]string{
		"snapshotter": append(sim.Env(), "STRATA_HOOKS_DIR="+hooksDir), "transfer": sim.Env()}})
	vm := sim.CreateVM("db-01", 8<<20)
	src := "vsphere://" + sim.Host + "/db-01"
	id := strings.TrimSpace(strings.Split(st.mustCLI("backup", "--vm", "db-01", "--source", src, "--wait", "--consistency", "application",
		"--pre-freeze-host", "stamp pre", "--post-thaw-host", "stamp post"), "\n")[0])
	rec := st.record("db-01", id)
	if rec.State != contracts.StateVerified || rec.Consistency != "application" || len(rec.Hooks) != 2 || rec.Hooks[0].Exit != 0 || rec.Hooks[1].Phase != "post-thaw" {
		t.Fatalf("quiesced backup: %s %q (%s), hooks %+v", rec.State, rec.Consistency, rec.ConsistencyWhy, rec.Hooks)
	}
	if b, _ := os.ReadFile(stamps); string(b) != "pre db-01\npost db-01\n" {
		t.Fatalf("host hooks: %q", b)
	}
	sim.NoTools("db-01", true)
	fell := st.vsphereBackup(sim, vm, "db-01", src)
	if fell.Consistency != "crash" || !strings.Contains(fell.ConsistencyWhy, "VMware Tools could not quiesce") {
		t.Fatalf("no Tools, preferred: %q (%s)", fell.Consistency, fell.ConsistencyWhy)
	}
	out, errOut, code := st.cli("backup", "--vm", "db-01", "--source", src, "--wait", "--require-consistency")
	if code != 1 || !strings.Contains(out+errOut, "VMware Tools could not quiesce") {
		t.Fatalf("no Tools, required: exit %d\n%s%s", code, out, errOut)
	}
	if snaps := sim.Snapshots(vm); len(snaps) != 0 {
		t.Fatalf("snapshots left on the VM: %v", snaps)
	}
}
