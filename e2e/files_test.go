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

// File-level restore straight from the repository: a GPT disk with an
// ext4 partition (made by mkfs.ext4 -d from a tree with nested
// directories, a big file, a sparse file, symlinks, a non-ASCII name, a
// directory of 5,000 files) and a FAT partition (mcopy) is backed up;
// then `strata files` lists the volumes, lists directories with modes,
// owners and link targets, cats a file, and gets files, a directory and
// a whole volume back — bytes, modes, mtimes and symlinks as built, the
// escaping symlink refused.
func TestFilesFromBackup(t *testing.T) {
	src := testserver.GuestTree(t)
	work := t.TempDir()
	img := filepath.Join(work, "disk.img")
	testserver.PartitionedImageFrom(t, img, src)
	efi := filepath.Join(work, "EFI")
	os.MkdirAll(filepath.Join(efi, "debian"), 0o755)
	grub := testserver.RandomBytes(9, 150<<10)
	os.WriteFile(filepath.Join(efi, "debian", "grubx64.efi"), grub, 0o644)
	testserver.CopyToFAT(t, img, testserver.FATOffset, efi)

	st := startStack(t, stackOptions{chunkSize: 64 << 10})
	st.mustCLI("backup", "--vm", "files", "--source", "file://"+img, "--wait")

	var vols []struct{ Name, FS, UUID string }
	if err := json.Unmarshal([]byte(st.mustCLI("files", "ls", "--vm", "files", "--json")), &vols); err != nil {
		t.Fatal(err)
	}
	if len(vols) != 2 || vols[0].Name != "p1" || vols[0].FS != "ext4" || vols[1].Name != "p2" || vols[1].FS != "vfat" {
		t.Fatalf("files ls /: %+v", vols)
	}
	long := st.mustCLI("files", "ls", "--vm", "files", "-l", "/p1")
	for _, want := range []string{"drwxr-x---", "docs/", "link-rel -> docs/readme.txt", "escape -> ../../etc/passwd", "héllo wörld ✓.txt", "2024-01-02 03:04:05"} {
		if !strings.Contains(long, want) {
			t.Fatalf("files ls -l /p1 lacks %q:\n%s", want, long)
		}
	}
	if n := strings.Count(st.mustCLI("files", "ls", "--vm", "files", "/p1/many"), "\n"); n != 5000 {
		t.Fatalf("files ls /p1/many: %d entries", n)
	}
	big, _ := os.ReadFile(filepath.Join(src, "big.bin"))
	if got := st.mustCLI("files", "cat", "--vm", "files", "/p1/big.bin"); got != string(big) {
		t.Fatalf("files cat /p1/big.bin: %d bytes, want %d", len(got), len(big))
	}
	if got := st.mustCLI("files", "cat", "--vm", "files", "/p2/EFI/debian/grubx64.efi"); got != string(grub) {
		t.Fatal("files cat of a FAT file differs")
	}
	if _, errOut, code := st.cli("files", "cat", "--vm", "files", "/p1/no/such/file"); code == 0 || !strings.Contains(errOut, "no/such/file") {
		t.Fatalf("cat of a missing file: exit %d, %s", code, errOut)
	}

	// get: a directory and a file, then the whole volume.
	out := t.TempDir()
	st.mustCLI("files", "get", "--vm", "files", "/p1/docs", "/p1/sparse.img", "--to", out)
	testserver.CompareTrees(t, filepath.Join(src, "docs"), filepath.Join(out, "docs"))
	sparse, _ := os.ReadFile(filepath.Join(out, "sparse.img"))
	if want, _ := os.ReadFile(filepath.Join(src, "sparse.img")); !bytes.Equal(sparse, want) {
		t.Fatal("files get of the sparse file differs")
	}
	whole := t.TempDir()
	stdout, errOut, code := st.cli("files", "get", "--vm", "files", "/p1", "--to", whole)
	if code != 1 || !strings.Contains(errOut, "/p1/escape") {
		t.Fatalf("get of a volume with an escaping symlink: exit %d\n%s\n%s", code, stdout, errOut)
	}
	testserver.CompareTrees(t, src, whole, "escape")
	if _, err := os.Lstat(filepath.Join(whole, "escape")); err == nil {
		t.Fatal("the escaping symlink was written")
	}
}
