package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-backup/strata/internal/testserver"
)

// File-level restore straight from the repository: one GPT disk holding
// FAT32 (mkfs.vfat + mcopy), ext4 (mkfs.ext4 -d from a tree with nested
// directories, a big file, a sparse file, symlinks, a non-ASCII name, a
// directory of 5,000 files), XFS (mkfs.xfs -p from the same tree) and
// NTFS (mkntfs + ntfscp) is backed up; then `strata files` lists the
// volumes with their types, lists directories with modes, owners and
// link targets, cats files from each filesystem, and gets files, a
// directory and a whole volume back — bytes, modes, mtimes, symlinks and
// holes as built, the escaping symlink refused.
func TestFilesFromBackup(t *testing.T) {
	src := testserver.GuestTree(t)
	work := t.TempDir()
	img := filepath.Join(work, "disk.img")
	efi := filepath.Join(work, "EFI")
	os.MkdirAll(filepath.Join(efi, "debian"), 0o755)
	grub := testserver.RandomBytes(9, 150<<10)
	os.WriteFile(filepath.Join(efi, "debian", "grubx64.efi"), grub, 0o644)
	ntfsBig := testserver.RandomBytes(10, 1<<20+3)
	testserver.GuestDisk(t, img, src, []string{efi}, map[string][]byte{"big.bin": ntfsBig, "readme.txt": []byte("NTFS\n")})

	st := startStack(t, stackOptions{chunkSize: 64 << 10})
	st.mustCLI("backup", "--vm", "files", "--source", "file://"+img, "--wait")

	var vols []struct{ Name, FS, UUID string }
	if err := json.Unmarshal([]byte(st.mustCLI("files", "ls", "--vm", "files", "--json")), &vols); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range vols {
		got = append(got, v.Name+":"+v.FS)
	}
	if strings.Join(got, " ") != "p1:vfat p2:ext4 p3:xfs p4:ntfs" {
		t.Fatalf("files ls /: %+v", vols)
	}
	long := st.mustCLI("files", "ls", "--vm", "files", "-l", "/p2")
	for _, want := range []string{"drwxr-x---", "docs/", "link-rel -> docs/readme.txt", "escape -> ../../etc/passwd", "héllo wörld ✓.txt", "2024-01-02 03:04:05"} {
		if !strings.Contains(long, want) {
			t.Fatalf("files ls -l /p2 lacks %q:\n%s", want, long)
		}
	}
	if n := strings.Count(st.mustCLI("files", "ls", "--vm", "files", "/p2/many"), "\n"); n != 5000 {
		t.Fatalf("files ls /p2/many: %d entries", n)
	}
	big, _ := os.ReadFile(filepath.Join(src, "big.bin"))
	if got := st.mustCLI("files", "cat", "--vm", "files", "/p2/big.bin"); got != string(big) {
		t.Fatalf("files cat /p2/big.bin: %d bytes, want %d", len(got), len(big))
	}
	if got := st.mustCLI("files", "cat", "--vm", "files", "/p1/EFI/debian/grubx64.efi"); got != string(grub) {
		t.Fatal("files cat of a FAT file differs")
	}
	if got := st.mustCLI("files", "cat", "--vm", "files", "/p3/big.bin"); got != string(big) {
		t.Fatal("files cat of an XFS file differs")
	}
	if got := st.mustCLI("files", "cat", "--vm", "files", "/p4/big.bin"); got != string(ntfsBig) {
		t.Fatal("files cat of an NTFS file differs")
	}
	if l := st.mustCLI("files", "ls", "--vm", "files", "-l", "/p3"); !strings.Contains(l, "link-rel -> docs/readme.txt") || !strings.Contains(l, "1000 1000") {
		t.Fatalf("files ls -l of XFS:\n%s", l)
	}
	xfsOut := t.TempDir()
	st.mustCLI("files", "get", "--vm", "files", "/p3/docs", "--to", xfsOut)
	if b, _ := os.ReadFile(filepath.Join(xfsOut, "docs", "nested", "deep", "file.bin")); !bytes.Equal(b, testserver.RandomBytes(1, 300<<10)) {
		t.Fatal("files get of an XFS directory: a file differs")
	}
	if _, errOut, code := st.cli("files", "cat", "--vm", "files", "/p2/no/such/file"); code == 0 || !strings.Contains(errOut, "no/such/file") {
		t.Fatalf("cat of a missing file: exit %d, %s", code, errOut)
	}
	// cat follows symlinks as in the guest (ext4 and XFS), never out of
	// the volume: escape -> ../../etc/passwd is /etc/passwd of the volume,
	// which it does not have.
	for _, vol := range []string{"p2", "p3"} {
		if got := st.mustCLI("files", "cat", "--vm", "files", "/"+vol+"/link-rel"); got != "hello from the guest\n" {
			t.Fatalf("files cat /%s/link-rel: %q", vol, got)
		}
	}
	if _, errOut, code := st.cli("files", "cat", "--vm", "files", "/p2/escape"); code == 0 || !strings.Contains(errOut, "etc") {
		t.Fatalf("cat of a symlink out of the volume: exit %d, %s", code, errOut)
	}

	// get: a directory and a file, then the whole volume.
	out := t.TempDir()
	st.mustCLI("files", "get", "--vm", "files", "/p2/docs", "/p2/sparse.img", "--to", out)
	testserver.CompareTrees(t, filepath.Join(src, "docs"), filepath.Join(out, "docs"))
	// Again over what is there: refused without --force, replaced with it.
	os.WriteFile(filepath.Join(out, "docs", "readme.txt"), []byte("changed locally"), 0o644)
	if _, errOut, code := st.cli("files", "get", "--vm", "files", "/p2/docs", "--to", out); code == 0 || !strings.Contains(errOut, "--force") {
		t.Fatalf("get over existing files: exit %d, %s", code, errOut)
	}
	st.mustCLI("files", "get", "--vm", "files", "/p2/docs", "--to", out, "--force")
	testserver.CompareTrees(t, filepath.Join(src, "docs"), filepath.Join(out, "docs"))
	sparse, _ := os.ReadFile(filepath.Join(out, "sparse.img"))
	if want, _ := os.ReadFile(filepath.Join(src, "sparse.img")); !bytes.Equal(sparse, want) {
		t.Fatal("files get of the sparse file differs")
	}
	whole := t.TempDir()
	stdout, errOut, code := st.cli("files", "get", "--vm", "files", "/p2", "--to", whole)
	if code != 1 || !strings.Contains(errOut, "/p2/escape") {
		t.Fatalf("get of a volume with an escaping symlink: exit %d\n%s\n%s", code, stdout, errOut)
	}
	testserver.CompareTrees(t, src, whole, "escape")
	if _, err := os.Lstat(filepath.Join(whole, "escape")); err == nil {
		t.Fatal("the escaping symlink was written")
	}

	// An MBR disk with an LVM2 volume group over two partitions (made by
	// lvm2's tools) and FAT in a logical partition, backed up too.
	lvmImg := filepath.Join(work, "lvm.img")
	lv := testserver.LVMImage(t, lvmImg)
	st.mustCLI("backup", "--vm", "lvm", "--source", "file://"+lvmImg, "--wait")
	vols = nil
	if err := json.Unmarshal([]byte(st.mustCLI("files", "ls", "--vm", "lvm", "--json")), &vols); err != nil {
		t.Fatal(err)
	}
	got = nil
	for _, v := range vols {
		got = append(got, v.Name+":"+v.FS)
	}
	if want := "p1:LVM2_member p2:LVM2_member p5:vfat " + lv.VG + "/data:ext4 " + lv.VG + "/root:ext4"; strings.Join(got, " ") != want {
		t.Fatalf("files ls / of the LVM disk: %v, want %s", got, want)
	}
	payload, _ := os.ReadFile(filepath.Join(lv.Root, "payload.bin"))
	if got := st.mustCLI("files", "cat", "--vm", "lvm", "/"+lv.VG+"/root/payload.bin"); got != string(payload) {
		t.Fatal("files cat from a linear LV differs")
	}
	striped, _ := os.ReadFile(filepath.Join(lv.Data, "striped.bin"))
	lvOut := t.TempDir()
	st.mustCLI("files", "get", "--vm", "lvm", "/"+lv.VG+"/data/striped.bin", "/"+lv.VG+"/root/etc", "--to", lvOut)
	if b, _ := os.ReadFile(filepath.Join(lvOut, "striped.bin")); !bytes.Equal(b, striped) {
		t.Fatal("files get from a striped LV differs")
	}
	if b, _ := os.ReadFile(filepath.Join(lvOut, "etc", "hostname")); string(b) != "lvm-guest\n" {
		t.Fatalf("files get of /%s/root/etc: hostname %q", lv.VG, b)
	}
	if got := st.mustCLI("files", "cat", "--vm", "lvm", "/p5/BOOT.BIN"); got != string(lv.FATFile) {
		t.Fatal("files cat from the FAT in a logical partition differs")
	}
}
