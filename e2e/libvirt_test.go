package e2e

import (
	"bytes"
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/testserver"
)

// The libvirt driver against a real libvirtd and QEMU (TCG): a running
// domain with two qcow2 disks is backed up in full through a pull-mode
// backup job; scattered writes into the running guest's disks (2 % of
// each, through QEMU's own block layer) are read by the next backup —
// incremental from the first one's checkpoint, exactly the changed bytes
// — and both restore bit-exact against the disks at their points in
// time. After libvirtd restarts the next backup is still incremental
// (checkpoints persist); after its checkpoint is deleted behind Strata's
// back, the next one is a full that says why. After every backup only
// the newest verified backup's checkpoint is left, and no job runs.
func TestLibvirtDriver(t *testing.T) {
	const cs = 64 << 10
	lv := testserver.StartLibvirtd(t)
	work := t.TempDir()
	sizes := []int{64 << 20, 32 << 20}
	disks := make([][]byte, len(sizes))
	var raws []string
	for i, n := range sizes {
		// Old data, a hole, and a GPT with an ext4 over them (what the
		// restore test looks for).
		b := testserver.RandomBytes(uint64(60+i), n)
		clear(b[n/2 : n/2+4<<20])
		raws = append(raws, filepath.Join(work, fmt.Sprintf("d%d.raw", i)))
		os.WriteFile(raws[i], b, 0o644)
		testserver.Tool(t, "label: gpt\nstart=2048, type=linux\n", "sfdisk", "--quiet", raws[i])
		testserver.Tool(t, "", "mkfs.ext4", "-q", "-F", "-E", "offset=1048576", raws[i], fmt.Sprintf("%dk", (n-2<<20)>>10))
		disks[i], _ = os.ReadFile(raws[i])
	}
	const dom = "strata-kvm"
	images := lv.Domain(dom, raws...)
	st := startStack(t, stackOptions{chunkSize: cs, env: []string{"STRATA_LIBVIRT_SCRATCH_DIR=" + lv.Scratch}})
	src := lv.Source(dom)

	// settled waits until the domain holds exactly checkpoint cp and runs
	// no job: what every backup's release leaves.
	settled := func(cp, after string) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			cps := lv.Checkpoints(dom)
			if slices.Equal(cps, []string{cp}) && !lv.JobRunning(dom) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("after %s: checkpoints %v (want only %s), job running %v", after, cps, cp, lv.JobRunning(dom))
			}
		}
	}
	keep := "" // the checkpoint a backup should leave: its own when ""
	backup := func() contracts.BackupRecord {
		t.Helper()
		id := strings.TrimSpace(strings.Split(st.mustCLI("backup", "--vm", dom, "--source", src, "--wait"), "\n")[0])
		rec := st.record(dom, id)
		if rec.State != contracts.StateVerified {
			t.Fatalf("backup %s: %s %s", id, rec.State, rec.Error)
		}
		// The outcome releases the job and settles the checkpoints.
		settled(cmp.Or(keep, "strata-"+id), "backup "+id)
		return rec
	}
	restoreEquals := func(rec contracts.BackupRecord, want [][]byte) {
		t.Helper()
		out := filepath.Join(work, "restore-"+rec.ID+".img")
		st.mustCLI("restore", "--vm", dom, "--backup", rec.ID, "--to", out)
		for i := range want {
			p := out
			if i > 0 {
				p = fmt.Sprintf("%s.%d", out, i)
			}
			got, _ := os.ReadFile(p)
			if !bytes.Equal(got, want[i]) {
				t.Fatalf("restore of %s (%s) disk %d differs from the disk at its point in time", rec.ID, rec.Kind, i)
			}
		}
	}
	// snapshotOf reads the disks as they are now: the domain paused,
	// images converted with qemu-img convert -U.
	snapshotOf := func() [][]byte {
		t.Helper()
		lv.Virsh("suspend", dom)
		defer lv.Virsh("resume", dom)
		var out [][]byte
		for i, img := range images {
			raw := filepath.Join(work, fmt.Sprintf("now-%d.raw", i))
			testserver.Qemu(t, "qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", img, raw)
			b, _ := os.ReadFile(raw)
			out = append(out, b)
		}
		return out
	}

	full := backup()
	if full.Kind != contracts.KindFull || len(full.Disks) != 2 || full.Disks[0].Name != "vda" || full.Disks[1].Name != "vdb" {
		t.Fatalf("first backup: %s, disks %+v", full.Kind, full.Disks)
	}
	if full.VMConfig == nil || !strings.Contains(full.VMConfig.DomainXML, "<name>"+dom+"</name>") || full.VMConfig.MemoryMB != 64 || full.VMConfig.CPUs != 1 {
		t.Fatalf("first backup's VM config: %+v", full.VMConfig)
	}
	restoreEquals(full, disks)
	// The domain has no guest-agent channel: the default (filesystem,
	// preferred) falls back to crash consistency and says why; required,
	// the backup fails with the reason and takes no job or checkpoint.
	if full.Consistency != "crash" || !strings.Contains(full.ConsistencyWhy, "no agent channel") || full.FrozenMillis != 0 {
		t.Fatalf("consistency without an agent: %q (%s), frozen %d ms", full.Consistency, full.ConsistencyWhy, full.FrozenMillis)
	}
	if out, errOut, code := st.cli("backup", "--vm", dom, "--source", src, "--consistency", "filesystem", "--require-consistency", "--wait"); code != 1 || !strings.Contains(out+errOut, "no agent channel") {
		t.Fatalf("a required filesystem-consistent backup without an agent: exit %d\n%s%s", code, out, errOut)
	}
	settled("strata-"+full.ID, "a refused required-consistency backup")
	st.mustCLI("rm", "--vm", dom, "--failed") // the count of backups below is the chain's

	// 2 % of each disk: scattered 64 KiB writes, each its own pattern.
	var changed [2]int64
	for i, n := range sizes {
		writes := n / 50 / cs
		for k := 0; k < writes; k++ {
			// Granule-aligned (the bitmap counts 64 KiB granules), clear of
			// the partition table and the ext4 superblock.
			off := (2<<20 + int64(k)*int64((n-4<<20)/writes)) / cs * cs
			p := byte(1 + k + 40*i)
			lv.Write(dom, i, p, off, cs)
			copy(disks[i][off:off+cs], bytes.Repeat([]byte{p}, cs))
			changed[i] += cs
		}
	}
	if now := snapshotOf(); !bytes.Equal(now[0], disks[0]) || !bytes.Equal(now[1], disks[1]) {
		t.Fatal("the disks converted with qemu-img -U are not the content written")
	}
	inc := backup()
	if inc.Kind != contracts.KindIncremental || inc.Parent != full.ID {
		t.Fatalf("second backup: %s parent %s (want %s): %s", inc.Kind, inc.Parent, full.ID, inc.FullReason)
	}
	for i, d := range inc.Disks {
		if d.ChangedBytes != changed[i] || d.ReadBytes != changed[i] {
			t.Fatalf("incremental disk %s: changed %d, read %d bytes; the test wrote %d", d.Name, d.ChangedBytes, d.ReadBytes, changed[i])
		}
	}
	restoreEquals(inc, disks)

	// libvirtd restarts: checkpoints persist, the next one is incremental.
	lv.Stop()
	lv.Start()
	lv.Write(dom, 1, 0xee, 3<<20, cs)
	copy(disks[1][3<<20:3<<20+cs], bytes.Repeat([]byte{0xee}, cs))
	third := backup()
	if third.Kind != contracts.KindIncremental || third.Parent != inc.ID || third.Disks[1].ChangedBytes != cs || third.Disks[0].ChangedBytes != 0 {
		t.Fatalf("backup after a libvirtd restart: %s parent %s, changed %d/%d: %s", third.Kind, third.Parent, third.Disks[0].ChangedBytes, third.Disks[1].ChangedBytes, third.FullReason)
	}
	restoreEquals(third, disks)

	// The checkpoint deleted behind Strata's back: a full, with the reason.
	lv.Virsh("checkpoint-delete", dom, "strata-"+third.ID)
	lv.Write(dom, 0, 0xdd, 5<<20, cs)
	copy(disks[0][5<<20:5<<20+cs], bytes.Repeat([]byte{0xdd}, cs))
	fourth := backup()
	if fourth.Kind != contracts.KindFull || !strings.Contains(fourth.FullReason, "not on the domain") {
		t.Fatalf("backup after the checkpoint was deleted: %s, reason %q", fourth.Kind, fourth.FullReason)
	}
	restoreEquals(fourth, disks)

	// A source that fails under a backup: the job's NBD socket vanishes
	// (the job itself runs on) before certify re-reads the disks. The
	// backup fails, Strata ends the job, its checkpoint is dropped
	// (libvirt merges its bitmap into the last verified one's), and the
	// next backup is incremental from the last verified one, reading the
	// changes from both sides of the failed backup's point.
	write := func(i int, p byte, off int64) {
		lv.Write(dom, i, p, off, cs)
		copy(disks[i][off:off+cs], bytes.Repeat([]byte{p}, cs))
	}
	write(1, 0xbb, 9<<20)
	verifier := st.procs["verifier"]
	verifier[len(verifier)-1].Stop()
	done := make(chan int, 1)
	go func() {
		_, _, code := st.cli("backup", "--vm", dom, "--source", src, "--verify", "certify", "--wait")
		done <- code
	}()
	var failedID string
	for deadline := time.Now().Add(2 * time.Minute); failedID == ""; time.Sleep(100 * time.Millisecond) {
		if recs := st.records(dom); len(recs) == 5 && recs[4].State == contracts.StateCommitted {
			failedID = recs[4].ID
		}
		if time.Now().After(deadline) {
			t.Fatal("the fifth backup was not committed within 2 minutes")
		}
	}
	if err := os.Remove(filepath.Join(lv.Scratch, failedID+".sock")); err != nil {
		t.Fatal(err)
	}
	if !lv.JobRunning(dom) {
		t.Fatal("the job ended with its socket")
	}
	write(0, 0xcc, 7<<20)
	st.waitReady(st.startService("verifier"))
	if code := <-done; code == 0 {
		t.Fatal("backup --wait exited 0 for a backup whose source failed")
	}
	if rec := st.record(dom, failedID); rec.State != contracts.StateFailed {
		t.Fatalf("backup whose source failed: %s %s", rec.State, rec.Error)
	}
	settled("strata-"+fourth.ID, "a failed backup")
	// Cancelled mid-backup (the transfer worker stopped, so its job is
	// certainly still exporting): failed, job ended, its checkpoint gone.
	transfer := st.procs["transfer"]
	transfer[len(transfer)-1].Stop()
	cancelled := strings.TrimSpace(strings.Split(st.mustCLI("backup", "--vm", dom, "--source", src), "\n")[0])
	for deadline := time.Now().Add(time.Minute); !lv.JobRunning(dom); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no backup job started within a minute")
		}
	}
	st.mustCLI("cancel", "--vm", dom, "--backup", cancelled)
	settled("strata-"+fourth.ID, "a cancelled backup")
	if rec := st.record(dom, cancelled); rec.State != contracts.StateFailed {
		t.Fatalf("cancelled backup: %s", rec.State)
	}
	st.waitReady(st.startService("transfer"))

	after := backup()
	if after.Kind != contracts.KindIncremental || after.Parent != fourth.ID || after.Disks[0].ChangedBytes != cs || after.Disks[1].ChangedBytes != cs {
		t.Fatalf("backup after a failed one: %s parent %s (want %s), changed %d/%d: %s", after.Kind, after.Parent, fourth.ID,
			after.Disks[0].ChangedBytes, after.Disks[1].ChangedBytes, after.FullReason)
	}
	restoreEquals(after, disks)

	// Shut off: read from its images (qemu-nbd), incremental from the
	// checkpoint's bitmap QEMU saved in each qcow2, no checkpoint made;
	// started again, the next backup's job is incremental from the same
	// checkpoint: it reads what changed since then (the write before the
	// shut-off backup again, and the new one).
	write(0, 0x99, 11<<20)
	lv.Virsh("destroy", dom) // SIGTERM first: QEMU closes the images, storing the bitmaps
	keep = "strata-" + after.ID
	off := backup()
	if off.Kind != contracts.KindIncremental || off.Parent != after.ID || off.Disks[0].ChangedBytes != cs || off.Disks[1].ChangedBytes != 0 ||
		!strings.Contains(off.Note, "shut off") {
		t.Fatalf("backup of the shut-off domain: %s parent %s, changed %d/%d, note %q: %s", off.Kind, off.Parent,
			off.Disks[0].ChangedBytes, off.Disks[1].ChangedBytes, off.Note, off.FullReason)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		m, _ := filepath.Glob(filepath.Join(lv.Scratch, off.ID+"*"))
		if len(m) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the shut-off backup's release left %v", m)
		}
	}
	restoreEquals(off, disks)
	lv.Virsh("start", dom)
	keep = ""
	write(1, 0x98, 13<<20)
	on := backup()
	if on.Kind != contracts.KindIncremental || on.Parent != off.ID || on.Disks[0].ChangedBytes != cs || on.Disks[1].ChangedBytes != cs {
		t.Fatalf("backup after the domain started again: %s parent %s, changed %d/%d: %s", on.Kind, on.Parent,
			on.Disks[0].ChangedBytes, on.Disks[1].ChangedBytes, on.FullReason)
	}
	restoreEquals(on, disks)

	// Restore into libvirt: a new domain defined from the recorded XML,
	// its images beside the original's (qcow2), bit-exact; it starts. A
	// name that exists is refused before anything is restored.
	const restored = dom + "-restored"
	target := "libvirt+unix:///session/" + restored + "?socket=" + lv.Socket
	st.mustCLI("restore", "--vm", dom, "--backup", on.ID, "--to", target)
	for i, dev := range []string{"vda", "vdb"} {
		img := filepath.Join(lv.Dir, "images", restored+"-"+dev+".qcow2")
		raw := filepath.Join(work, "restored-"+dev+".raw")
		testserver.Qemu(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", img, raw)
		if got, _ := os.ReadFile(raw); !bytes.Equal(got, disks[i]) {
			t.Fatalf("restored domain's %s differs from the backup's disk", dev)
		}
		os.Chown(img, 65534, 65534) // the test's daemon runs as nobody; a system one chowns itself
	}
	xml := lv.Virsh("dumpxml", restored)
	if !strings.Contains(xml, restored+"-vda.qcow2") || strings.Contains(xml, images[0]) {
		t.Fatalf("restored domain's XML does not point at its own images:\n%s", xml)
	}
	lv.Virsh("start", restored)
	if state := lv.Virsh("domstate", restored); state != "running" {
		t.Fatalf("restored domain: %s", state)
	}
	for _, name := range []string{restored, dom} {
		_, errOut, code := st.cli("restore", "--vm", dom, "--backup", on.ID, "--to", "libvirt+unix:///session/"+name+"?socket="+lv.Socket+"&dir="+work)
		if code == 0 || !strings.Contains(errOut, "exists already") {
			t.Fatalf("restore to the existing domain %s: exit %d, %s", name, code, errOut)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(work, "*.qcow2")); len(m) != 0 {
		t.Fatalf("a refused restore left %v", m)
	}

	// Instant recovery: the backup served writable, a domain defined on
	// the exports and started at once; it reads the backup's bytes, its
	// writes land in the overlay, and it is gone when serving stops.
	const instant = dom + "-instant"
	overlayDir := filepath.Join(work, "overlay")
	_, stopServe := st.serveBackup(dom, "--backup", on.ID, "--writable", "--overlay", overlayDir,
		"--define", "libvirt+unix:///session/"+instant+"?socket="+lv.Socket)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if state, _ := lv.VirshErr("domstate", instant); state == "running" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the domain defined on the served backup is not running within 30 s")
		}
	}
	if xml := lv.Virsh("dumpxml", instant); !strings.Contains(xml, "protocol='nbd'") {
		t.Fatalf("instant domain's disks are not the NBD exports:\n%s", xml)
	}
	hmp := func(i int, cmd string) string {
		return lv.Virsh("qemu-monitor-command", "--hmp", instant, fmt.Sprintf("qemu-io -d /machine/peripheral/virtio-disk%d/virtio-backend %q", i, cmd))
	}
	// qemu-io prints into QEMU's log, not to the monitor.
	hmp(0, fmt.Sprintf("read -P 0xdd %d %d", 5<<20, cs))
	hmp(0, fmt.Sprintf("read -P 0x11 %d %d", 5<<20, cs)) // the wrong pattern: the check can fail
	qlog := lv.Log(instant)
	if !strings.Contains(qlog, "read 65536/65536 bytes at offset 5242880") || strings.Count(qlog, "Pattern verification failed") != 1 {
		t.Fatalf("the instant domain's reads of vda at 5 MiB (want the backup's 0xdd):\n%s", qlog)
	}
	if out := hmp(1, fmt.Sprintf("write -P 0x77 %d %d", 1<<20, cs)); strings.Contains(out, "fail") || strings.Contains(out, "rror") {
		t.Fatalf("the instant domain writes vdb: %s", out)
	}
	hmp(1, "flush")
	stopServe()
	if state, _ := lv.VirshErr("domstate", instant); state != "" && !strings.Contains(state, "failed to get domain") {
		t.Fatalf("after serving stopped the instant domain is still there: %q", state)
	}
	if b, err := os.ReadFile(filepath.Join(overlayDir, "disk1.raw")); err != nil || len(b) < 1<<20+cs || !bytes.Equal(b[1<<20:1<<20+cs], bytes.Repeat([]byte{0x77}, cs)) {
		t.Fatalf("the instant domain's write is not in the overlay (%v)", err)
	}

	// Restore test: a throwaway domain on the restored disks starts, and
	// is gone afterwards.
	id := strings.TrimSpace(strings.Split(st.mustCLI("backup", "--vm", dom, "--source", src, "--verify", "restore-test", "--wait"), "\n")[0])
	if rec := st.record(dom, id); rec.State != contracts.StateVerified {
		t.Fatalf("restore-test backup: %s %s", rec.State, rec.Error)
	}
	verifier = st.procs["verifier"]
	if out := verifier[len(verifier)-1].Output(); !strings.Contains(out, "boot check passed") {
		t.Fatal("the restore test did not boot-check the libvirt backup")
	}
	if names := lv.Virsh("list", "--all", "--name"); strings.Contains(names, "strata-check-") {
		t.Fatalf("the restore test left its domain: %s", names)
	}

	// A disk added to the domain: libvirt has no bitmap of the
	// checkpoint for it, so the backup is a full that says why; the next
	// one is incremental again, over all three disks.
	extra := filepath.Join(lv.Dir, "images", dom+"-2.qcow2")
	testserver.Qemu(t, "qemu-img", "create", "-f", "qcow2", extra, "16M")
	os.Chown(extra, 65534, 65534)
	lv.Virsh("destroy", dom) // the guest has no ACPI to hot-plug with: added while shut off
	lv.Virsh("attach-disk", dom, extra, "vdc", "--driver", "qemu", "--subdriver", "qcow2", "--targetbus", "virtio", "--config")
	lv.Virsh("start", dom)
	keep = ""
	added := backup()
	if added.Kind != contracts.KindFull || len(added.Disks) != 3 || !strings.Contains(added.FullReason, "3 disks") {
		t.Fatalf("backup after a disk was added: %s, %d disks, reason %q, note %q", added.Kind, len(added.Disks), added.FullReason, added.Note)
	}
	lv.Write(dom, 2, 0x55, 1<<20, cs)
	next := backup()
	if next.Kind != contracts.KindIncremental || next.Parent != added.ID || next.Disks[2].ChangedBytes != cs {
		t.Fatalf("backup after the added disk's full: %s parent %s, vdc changed %d: %s", next.Kind, next.Parent, next.Disks[2].ChangedBytes, next.FullReason)
	}
}

// A transfer worker on another host: the job exports its disks over TCP
// (STRATA_LIBVIRT_NBD_HOST, a port of STRATA_LIBVIRT_NBD_PORTS) and the
// worker — here with a scratch directory of its own, where no job socket
// ever appears — reads them through the address in each disk's URL. A
// full and an incremental restore bit-exact; the job ends with each.
func TestLibvirtJobOverTCP(t *testing.T) {
	const cs = 64 << 10
	lv := testserver.StartLibvirtd(t)
	work := t.TempDir()
	raw := filepath.Join(work, "d.raw")
	disk := testserver.RandomBytes(91, 32<<20)
	os.WriteFile(raw, disk, 0o644)
	const dom = "strata-tcp"
	lv.Domain(dom, raw)
	port := testserver.FreePort(t)
	st := startStack(t, stackOptions{chunkSize: cs,
		env:      []string{"STRATA_LIBVIRT_SCRATCH_DIR=" + lv.Scratch, "STRATA_LIBVIRT_NBD_HOST=127.0.0.1", fmt.Sprintf("STRATA_LIBVIRT_NBD_PORTS=%d-%d", port, port)},
		extraEnv: map[string][]string{"transfer": {"STRATA_LIBVIRT_SCRATCH_DIR=" + t.TempDir()}}})
	src := lv.Source(dom)
	backup := func() contracts.BackupRecord {
		t.Helper()
		id := strings.TrimSpace(strings.Split(st.mustCLI("backup", "--vm", dom, "--source", src, "--wait"), "\n")[0])
		rec := st.record(dom, id)
		if rec.State != contracts.StateVerified {
			t.Fatalf("backup %s: %s %s", id, rec.State, rec.Error)
		}
		if want := fmt.Sprintf("nbd=127.0.0.1%%3A%d", port); !strings.Contains(rec.Disks[0].Source, want) {
			t.Fatalf("disk URL %s does not name the TCP export (%s)", rec.Disks[0].Source, want)
		}
		for deadline := time.Now().Add(30 * time.Second); lv.JobRunning(dom); time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the job still runs after the backup")
			}
		}
		out := filepath.Join(work, "restore-"+id+".img")
		st.mustCLI("restore", "--vm", dom, "--backup", id, "--to", out)
		if got, _ := os.ReadFile(out); !bytes.Equal(got, disk) {
			t.Fatalf("restore of %s (%s) differs", id, rec.Kind)
		}
		return rec
	}
	full := backup()
	lv.Write(dom, 0, 0x5a, 4<<20, cs)
	copy(disk[4<<20:4<<20+cs], bytes.Repeat([]byte{0x5a}, cs))
	inc := backup()
	if full.Kind != contracts.KindFull || inc.Kind != contracts.KindIncremental || inc.Disks[0].ChangedBytes != cs {
		t.Fatalf("over TCP: %s then %s changing %d bytes", full.Kind, inc.Kind, inc.Disks[0].ChangedBytes)
	}
}
