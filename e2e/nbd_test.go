package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/testserver"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/demodisk"
	"github.com/strata-backup/strata/pkg/source"
)

// A full backup from a real qemu-nbd export reads only what
// base:allocation says holds data, and restores bit-exact.
func TestNBDFullBackupReadsOnlyAllocated(t *testing.T) {
	st := startStack(t, stackOptions{})
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	if err := demodisk.Write(raw, 256<<20, 11); err != nil {
		t.Fatal(err)
	}
	qcow := filepath.Join(dir, "disk.qcow2")
	// qemu-img convert leaves zero runs unallocated, like a thin disk.
	testserver.Qemu(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow)
	addr, _ := testserver.QemuNBD(t, qcow, "qcow2", "")
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

// Incremental from a QEMU dirty bitmap: full backup, 2 % scattered writes,
// incremental. The incremental reads only the changed extents and uploads
// exactly the changed chunks; both points restore bit-exact; the key
// interval then forces a full re-read that stores nothing new.
//
// The same in a packed repository: inherited chunks keep their locations
// in the incremental's manifest, and what dedup finds it locates.
func TestNBDIncrementalFromDirtyBitmap(t *testing.T) {
	for _, packed := range []bool{false, true} {
		t.Run(fmt.Sprint("packed=", packed), func(t *testing.T) { nbdIncrementalFromDirtyBitmap(t, packed) })
	}
}

func nbdIncrementalFromDirtyBitmap(t *testing.T, packed bool) {
	const cs = 64 << 10
	st := startStack(t, stackOptions{chunkSize: cs, env: []string{fmt.Sprint("STRATA_PACKS=", packed)},
		extraEnv: map[string][]string{"snapshotter": {"STRATA_KEY_INTERVAL=2"}}})
	dir := t.TempDir()
	raw0, qcow := qcowWithBitmap(t, dir, "point0", 256<<20, 21)

	bitmap := "b1"
	backup := func(vm string, addr string) contracts.BackupRecord {
		src := "nbd://" + addr + "/disk?bitmap=" + bitmap
		id := strings.TrimSpace(strings.Split(st.mustCLI("backup", "--vm", vm, "--source", src, "--wait"), "\n")[0])
		return st.record(vm, id)
	}
	addr, nbdProc := testserver.QemuNBD(t, qcow, "qcow2", "b1")
	full := backup("kvm-inc", addr)
	if full.Kind != contracts.KindFull || full.State != contracts.StateVerified {
		t.Fatalf("first backup: %s %s %s", full.Kind, full.State, full.Error)
	}

	// 2 % of the disk: 80 scattered 64 KiB writes, each its own content.
	var cmds []string
	for i := 0; i < 80; i++ {
		off := int64(i)*(3<<20) + int64(i%7)*cs
		cmds = append(cmds, "-c", fmt.Sprintf("write -P %d %d %d", i+1, off, cs))
	}
	nbdProc.Stop()
	testserver.Qemu(t, "qemu-io", append([]string{"-f", "qcow2"}, append(cmds, qcow)...)...)
	raw1 := filepath.Join(dir, "point1.raw")
	testserver.Qemu(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow, raw1)
	addr, nbdProc = testserver.QemuNBD(t, qcow, "qcow2", "b1")

	inc := backup("kvm-inc", addr)
	if inc.Kind != contracts.KindIncremental || inc.Parent != full.ID || inc.State != contracts.StateVerified {
		t.Fatalf("second backup: kind %s parent %s (want %s) state %s %s %s", inc.Kind, inc.Parent, full.ID, inc.State, inc.Error, inc.FullReason)
	}
	d := inc.Disks[0]
	if d.ChangedBytes != 80*cs {
		t.Fatalf("source reported %d changed bytes, the test wrote %d", d.ChangedBytes, 80*cs)
	}
	if float64(d.ReadBytes) > 1.5*float64(d.ChangedBytes) {
		t.Fatalf("incremental read %d bytes for %d changed", d.ReadBytes, d.ChangedBytes)
	}
	if d.UploadedChunks != 80 {
		t.Fatalf("incremental uploaded %d chunks, 80 changed", d.UploadedChunks)
	}
	t.Logf("incremental: read %d bytes, changed %d, uploaded %d chunks (%d bytes)", d.ReadBytes, d.ChangedBytes, d.UploadedChunks, d.UploadedBytes)

	for _, p := range []struct{ id, raw string }{{full.ID, raw0}, {inc.ID, raw1}} {
		out := filepath.Join(dir, "restore-"+p.id+".img")
		st.mustCLI("restore", "--vm", "kvm-inc", "--backup", p.id, "--to", out)
		if sha256File(t, out) != sha256File(t, p.raw) {
			t.Fatalf("restore of %s differs from its point in time", p.id)
		}
	}

	key := backup("kvm-inc", addr)
	if key.Kind != contracts.KindFull || !strings.Contains(key.FullReason, "key interval") {
		t.Fatalf("third backup with key interval 2: kind %s, reason %q", key.Kind, key.FullReason)
	}
	if key.Disks[0].UploadedChunks != 0 {
		t.Fatalf("key full re-read of an unchanged disk uploaded %d chunks", key.Disks[0].UploadedChunks)
	}
	out := filepath.Join(dir, "restore-key.img")
	st.mustCLI("restore", "--vm", "kvm-inc", "--backup", key.ID, "--to", out)
	if sha256File(t, out) != sha256File(t, raw1) {
		t.Fatal("restore of the key backup differs")
	}

	// Rotate to bitmap b2 and change two 64 KiB blocks in the third of the
	// disk's four 64 MiB windows — one with new bytes, one with the bytes of
	// a chunk the repository holds (the first of the 80 writes above): the
	// incremental publishes one segment, the three untouched windows cost
	// no message and are inherited; the new chunk is stored by its
	// conditional PUT, the other is refused by the store, then found
	// present by dedup, and not uploaded.
	nbdProc.Stop()
	testserver.Qemu(t, "qemu-img", "bitmap", "--add", qcow, "b2")
	testserver.Qemu(t, "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 250 %d %d", 130<<20, cs),
		"-c", fmt.Sprintf("write -P 1 %d %d", 131<<20, cs), qcow)
	raw2 := filepath.Join(dir, "point2.raw")
	testserver.Qemu(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow, raw2)
	addr, nbdProc = testserver.QemuNBD(t, qcow, "qcow2", "b2")
	bitmap = "b2"
	published := segmentsPublished(t, st)
	one := backup("kvm-inc", addr)
	if n := segmentsPublished(t, st) - published; n != 1 {
		t.Fatalf("an incremental changing one window published %d segments, want 1", n)
	}
	if one.Kind != contracts.KindIncremental || one.Parent != key.ID || one.State != contracts.StateVerified {
		t.Fatalf("one-window incremental: kind %s parent %s state %s %s", one.Kind, one.Parent, one.State, one.Error)
	}
	od := one.Disks[0]
	untouched := 0
	for seg := 0; seg < od.Segments; seg++ {
		if od.IsUntouched(seg) {
			untouched++
			if seg == 2 {
				t.Fatal("the changed window was recorded untouched")
			}
		}
	}
	if untouched != 3 || od.ReadBytes != 2*cs || od.UploadedChunks != 1 {
		t.Fatalf("one-window incremental: %d untouched segments, read %d bytes, uploaded %d chunks; want 3, %d, 1", untouched, od.ReadBytes, od.UploadedChunks, 2*cs)
	}
	out = filepath.Join(dir, "restore-one.img")
	st.mustCLI("restore", "--vm", "kvm-inc", "--backup", one.ID, "--to", out)
	if sha256File(t, out) != sha256File(t, raw2) {
		t.Fatal("restore of the one-window incremental differs from its point in time")
	}

	// 40 MiB of new bytes in one window: one segment of three read batches,
	// the worker's only one, so packs are written while the next batch is
	// hashed. Its last MiB repeats its first: those chunks, stored by the
	// first batch, are found in the segment's own packs and not stored
	// again.
	nbdProc.Stop()
	testserver.Qemu(t, "qemu-img", "bitmap", "--add", qcow, "b3")
	addr, nbdProc = testserver.QemuNBD(t, qcow, "qcow2", "b3")
	bitmap = "b3"
	if key2 := backup("kvm-inc", addr); key2.Kind != contracts.KindFull { // the key interval's next full
		t.Fatalf("fifth backup with key interval 2: kind %s", key2.Kind)
	}
	nbdProc.Stop()
	big := make([]byte, 40<<20)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i+8 <= len(big); i += 8 {
		binary.LittleEndian.PutUint64(big[i:], rng.Uint64())
	}
	copy(big[39<<20:], big[:1<<20])
	bigFile := filepath.Join(dir, "big.bin")
	if err := os.WriteFile(bigFile, big, 0o644); err != nil {
		t.Fatal(err)
	}
	testserver.Qemu(t, "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -s %s %d %d", bigFile, 136<<20, len(big)), qcow)
	raw3 := filepath.Join(dir, "point3.raw")
	testserver.Qemu(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow, raw3)
	addr, _ = testserver.QemuNBD(t, qcow, "qcow2", "b3")
	published = segmentsPublished(t, st)
	many := backup("kvm-inc", addr)
	if n := segmentsPublished(t, st) - published; n != 1 {
		t.Fatalf("a 40 MiB change in one window published %d segments, want 1", n)
	}
	if many.Kind != contracts.KindIncremental || many.State != contracts.StateVerified {
		t.Fatalf("40 MiB incremental: kind %s state %s %s", many.Kind, many.State, many.Error)
	}
	if md := many.Disks[0]; md.ReadBytes != int64(len(big)) || md.UploadedChunks != (40<<20)/cs-(1<<20)/cs {
		t.Fatalf("40 MiB incremental: read %d bytes, uploaded %d chunks; want %d, %d", md.ReadBytes, md.UploadedChunks, len(big), (40<<20)/cs-(1<<20)/cs)
	}
	out = filepath.Join(dir, "restore-many.img")
	st.mustCLI("restore", "--vm", "kvm-inc", "--backup", many.ID, "--to", out)
	if sha256File(t, out) != sha256File(t, raw3) {
		t.Fatal("restore of the 40 MiB incremental differs from its point in time")
	}
}

// qcowWithBitmap writes a generated raw image (name.raw) and a qcow2 copy
// of it (name.qcow2) with dirty bitmap b1: bitmap rotation creates the
// bitmap the next incremental consumes when (before) this point in time is
// backed up.
func qcowWithBitmap(t *testing.T, dir, name string, size int64, seed uint64) (raw, qcow string) {
	t.Helper()
	raw, qcow = filepath.Join(dir, name+".raw"), filepath.Join(dir, name+".qcow2")
	if err := demodisk.Write(raw, size, seed); err != nil {
		t.Fatal(err)
	}
	testserver.Qemu(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow)
	testserver.Qemu(t, "qemu-img", "bitmap", "--add", qcow, "b1")
	return raw, qcow
}

// segmentsPublished is the number of transfer segments ever published (the
// work queue's last sequence: acked messages leave the stream).
func segmentsPublished(t *testing.T, st *stack) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := st.jetstream().Stream(ctx, contracts.StreamSegments)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// Self-healing through another VM's incremental: a chunk of VM A is found
// corrupt (a bit flipped in the S3 server's file); VM B then writes those
// same bytes. B's conditional PUT is refused (the corrupt object is there),
// dedup answers the known-bad chunk missing, and the worker rewrites it: B
// uploads exactly that chunk, `strata check` finds A repaired, and both
// restore bit-exact.
func TestIncrementalRewritesAKnownBadChunk(t *testing.T) {
	const cs = 64 << 10
	st := startStack(t, stackOptions{chunkSize: cs})
	dir := t.TempDir()
	pattern := bytes.Repeat([]byte{7}, cs)
	imgA := filepath.Join(dir, "a.img")
	if err := demodisk.Write(imgA, 16<<20, 31); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(imgA, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(pattern, 3*cs); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out := st.mustCLI("backup", "--vm", "vm-a", "--source", "file://"+imgA, "--wait")
	a := st.record("vm-a", strings.TrimSpace(strings.Split(out, "\n")[0]))

	victim := chunk.Hash(pattern).String()
	c, ok := st.storedChunks()[victim]
	if !ok {
		t.Fatalf("chunk %s is not stored", victim)
	}
	c.flip(t, c.Len-1, 0x40)
	var reply contracts.VerifyReply
	out, _, code := st.cli("verify", "--vm", "vm-a", "--backup", a.ID, "--mode", "chunks", "--json")
	if err := json.Unmarshal([]byte(out), &reply); err != nil || code != 1 || len(reply.BadChunks) != 1 || reply.BadChunks[0].ID != victim {
		t.Fatalf("chunks verification after a bit flip: exit %d, %s", code, out)
	}

	rawB, qcow := qcowWithBitmap(t, dir, "b", 16<<20, 32)
	addr, nbdProc := testserver.QemuNBD(t, qcow, "qcow2", "b1")
	st.mustCLI("backup", "--vm", "vm-b", "--source", "nbd://"+addr+"/disk?bitmap=b1", "--wait")
	nbdProc.Stop()
	testserver.Qemu(t, "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 7 %d %d", 9*cs, cs), qcow)
	testserver.Qemu(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow, rawB)
	addr, _ = testserver.QemuNBD(t, qcow, "qcow2", "b1")
	out = st.mustCLI("backup", "--vm", "vm-b", "--source", "nbd://"+addr+"/disk?bitmap=b1", "--wait")
	b := st.record("vm-b", strings.TrimSpace(strings.Split(out, "\n")[0]))
	if b.Kind != contracts.KindIncremental || b.Disks[0].UploadedChunks != 1 || b.Disks[0].ReadBytes != cs {
		t.Fatalf("incremental writing the bad chunk's bytes: %s, read %d, uploaded %d chunks; want an incremental reading and uploading that one chunk",
			b.Kind, b.Disks[0].ReadBytes, b.Disks[0].UploadedChunks)
	}
	var health contracts.CheckReply
	if err := json.Unmarshal([]byte(st.mustCLI("check", "--json")), &health); err != nil || !health.Healthy || !slices.Contains(health.Repaired, victim) {
		t.Fatalf("check after B's incremental: %+v %v", health, err)
	}
	st.checkRestore("vm-a", a.ID, []string{imgA})
	st.checkRestore("vm-b", b.ID, []string{rawB})
}
