package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-backup/strata/internal/testserver"
)

// Boot from the backup: a GPT disk whose ext4 root holds a small static
// init is backed up, served writable with an overlay, and booted by
// qemu-system-x86_64 (TCG) with Debian's kernel, the export as its virtio
// disk. The init prints a marker and the hash of a file it reads, writes
// a file and powers off. The test sees both lines on the serial console,
// finds the written file in the overlay by serving it again, and the
// original backup still certifies and reads back as it was.
func TestBootFromServedBackup(t *testing.T) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		if os.Getenv("STRATA_REQUIRE_SERVERS") == "1" {
			t.Fatal("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
		}
		t.Skip("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
	}
	kernel := testserver.DebianKernel(t)
	work := t.TempDir()
	init := filepath.Join(work, "init")
	build := exec.Command("go", "build", "-o", init, "github.com/strata-backup/strata/e2e/cmd/strata-guest-init")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the guest init: %v\n%s", err, out)
	}
	initrd := filepath.Join(work, "initrd.gz")
	kernel.Initramfs(t, initrd, init, "virtio_pci", "virtio_blk", "ext4", "crc32c_generic")

	// The root filesystem: the init and a payload whose hash it prints.
	root := filepath.Join(work, "root")
	os.MkdirAll(filepath.Join(root, "sbin"), 0o755)
	initBytes, _ := os.ReadFile(init)
	os.WriteFile(filepath.Join(root, "sbin", "init"), initBytes, 0o755)
	payload := make([]byte, 3<<20+12345)
	for i := range payload {
		payload[i] = byte(rand.Uint32())
	}
	os.WriteFile(filepath.Join(root, "payload.bin"), payload, 0o644)
	sum := sha256.Sum256(payload)
	hash := hex.EncodeToString(sum[:])
	img := filepath.Join(work, "disk.img")
	testserver.PartitionedImageFrom(t, img, root)
	orig, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}

	st := startStack(t, stackOptions{chunkSize: 64 << 10})
	st.mustCLI("backup", "--vm", "bootable", "--source", "file://"+img, "--wait")
	id := st.records("bootable")[0].ID
	overlayDir := filepath.Join(work, "overlay")
	addr, stop := st.serveBackup("bootable", "--writable", "--overlay", overlayDir)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	vm := exec.CommandContext(ctx, qemu, "-machine", "accel=tcg", "-m", "512", "-smp", "1",
		"-nodefaults", "-no-reboot", "-display", "none", "-serial", "stdio",
		"-kernel", kernel.Vmlinuz, "-initrd", initrd,
		"-append", "console=ttyS0 root=/dev/vda1 rw panic=-1 loglevel=4",
		"-drive", "file=nbd://"+addr+"/disk0,format=raw,if=virtio")
	start := time.Now()
	console, err := vm.CombinedOutput()
	t.Logf("the VM ran %v; its console ends:\n%s", time.Since(start).Round(time.Millisecond), console[max(0, len(console)-600):])
	if err != nil {
		t.Fatalf("qemu-system-x86_64: %v\n%s", err, console)
	}
	for _, want := range []string{"STRATA-GUEST-MARKER", "STRATA-GUEST-SHA256 " + hash, "STRATA-GUEST-DONE"} {
		if !bytes.Contains(console, []byte(want)) {
			t.Fatalf("the serial console lacks %q:\n%s", want, console)
		}
	}
	stop()

	// The file the guest wrote is in the overlay: serve it again, read the
	// ext4 partition back and ask e2fsprogs' debugfs for the file.
	addr, stop = st.serveBackup("bootable", "--writable", "--overlay", overlayDir)
	disk := convert(t, "nbd://"+addr+"/disk0")
	stop()
	part := filepath.Join(work, "root.ext4")
	os.WriteFile(part, disk[testserver.Ext4Offset:testserver.Ext4Offset+testserver.Ext4Size], 0o644)
	debugfs := "debugfs"
	if _, err := exec.LookPath(debugfs); err != nil {
		debugfs = "/usr/sbin/debugfs"
	}
	out, err := exec.Command(debugfs, "-R", "cat /written-by-guest.txt", part).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "written by the guest after booting from the backup; payload "+hash) {
		t.Fatalf("the guest's file is not in the overlay: %v\n%s", err, out)
	}

	// The repository was not touched.
	addr, stop = st.serveBackup("bootable")
	if !bytes.Equal(convert(t, "nbd://"+addr+"/disk0"), orig) {
		t.Fatal("the backup served read-only is not the original any more")
	}
	stop()
	st.mustCLI("verify", "--vm", "bootable", "--backup", id, "--mode", "certify")
}
