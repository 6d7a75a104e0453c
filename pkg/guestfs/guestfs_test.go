package guestfs

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strata-backup/strata/internal/testserver"
)

// fileDisk is a disk image file.
type fileDisk struct{ *os.File }

func (f fileDisk) Size() int64 {
	fi, _ := f.Stat()
	return fi.Size()
}

func openDisk(t *testing.T, path string) Disk {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return fileDisk{f}
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

var stamp = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)

// tree writes the test's directory tree: nested directories, a big file,
// a sparse file, symlinks (one leading out), a non-ASCII name, modes and
// times, and a directory of 5,000 files (an htree directory in ext4).
func tree(t *testing.T) string {
	dir := t.TempDir()
	w := func(rel string, data []byte, mode fs.FileMode) {
		p := filepath.Join(dir, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		os.Chtimes(p, stamp, stamp)
	}
	w("docs/readme.txt", []byte("hello from the guest\n"), 0o640)
	w("docs/nested/deep/file.bin", randomBytes(1, 300<<10), 0o600)
	w("big.bin", randomBytes(2, 4<<20+17), 0o644)
	w("héllo wörld ✓.txt", []byte("non-ASCII name\n"), 0o644)
	sp, _ := os.Create(filepath.Join(dir, "sparse.img"))
	sp.WriteAt([]byte("data in the middle"), 3<<20)
	sp.Truncate(8 << 20)
	sp.Close()
	os.Symlink("docs/readme.txt", filepath.Join(dir, "link-rel"))
	os.Symlink("../../etc/passwd", filepath.Join(dir, "escape"))
	os.Symlink("/etc/hostname", filepath.Join(dir, "abs"))
	os.MkdirAll(filepath.Join(dir, "many"), 0o755)
	for i := 0; i < 5000; i++ {
		os.WriteFile(filepath.Join(dir, "many", fmt.Sprintf("f%04d", i)), []byte(fmt.Sprint(i)), 0o644)
	}
	os.Chmod(filepath.Join(dir, "docs"), 0o750)
	os.Chtimes(filepath.Join(dir, "docs"), stamp, stamp)
	return dir
}

func TestExt4AndFATOnGPT(t *testing.T) {
	src := tree(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	testserver.PartitionedImageFrom(t, img, src)
	// FAT: files copied in with mtools (long names, a subdirectory).
	fatFiles := t.TempDir()
	os.MkdirAll(filepath.Join(fatFiles, "EFI", "debian"), 0o755)
	os.WriteFile(filepath.Join(fatFiles, "EFI", "debian", "grubx64.efi"), randomBytes(3, 200<<10), 0o644)
	os.WriteFile(filepath.Join(fatFiles, "A long file name.txt"), []byte("long names on FAT\n"), 0o644)
	mcopy := exec.Command("mcopy", "-s", "-i", fmt.Sprintf("%s@@%d", img, testserver.FATOffset), filepath.Join(fatFiles, "EFI"), filepath.Join(fatFiles, "A long file name.txt"), "::/")
	mcopy.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	if out, err := mcopy.CombinedOutput(); err != nil {
		if _, lerr := exec.LookPath("mcopy"); lerr != nil && os.Getenv("STRATA_REQUIRE_SERVERS") != "1" {
			t.Skip("mcopy not found (apt-get install mtools)")
		}
		t.Fatalf("mcopy: %v\n%s", err, out)
	}

	g, err := New(openDisk(t, img))
	if err != nil {
		t.Fatal(err)
	}
	vols := g.Volumes()
	if len(vols) != 2 || vols[0].Name != "p1" || vols[0].FS != "ext4" || vols[1].Name != "p2" || vols[1].FS != "vfat" ||
		vols[0].Offset != testserver.Ext4Offset || vols[1].Size != testserver.FATSize || vols[0].UUID == "" {
		t.Fatalf("volumes: %+v", vols)
	}

	ext, err := g.Volume("p1")
	if err != nil {
		t.Fatal(err)
	}
	e, err := ext.Lstat("docs/readme.txt")
	if err != nil || e.Mode != 0o640 || !e.ModTime.Equal(stamp) || e.Size != 21 || !e.HasOwner {
		t.Fatalf("lstat docs/readme.txt: %+v %v", e, err)
	}
	if e, err := ext.Lstat("escape"); err != nil || e.Mode&fs.ModeSymlink == 0 || e.Link != "../../etc/passwd" {
		t.Fatalf("lstat escape: %+v %v", e, err)
	}
	if e, err := ext.Lstat("docs"); err != nil || !e.Mode.IsDir() || e.Mode.Perm() != 0o750 {
		t.Fatalf("lstat docs: %+v %v", e, err)
	}
	many, err := ext.ReadDir("many")
	if err != nil || len(many) != 5000 {
		t.Fatalf("many: %d entries, %v", len(many), err)
	}
	for _, name := range []string{"big.bin", "docs/nested/deep/file.bin", "héllo wörld ✓.txt", "sparse.img"} {
		r, err := ext.Open(name)
		if err != nil {
			t.Fatalf("open %s: %v", name, err)
		}
		got, err := io.ReadAll(r)
		r.Close()
		want, _ := os.ReadFile(filepath.Join(src, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: %d bytes read (%v), want %d", name, len(got), err, len(want))
		}
	}
	if _, err := ext.Open("link-rel"); err == nil {
		t.Fatal("Open of a symlink returned a file")
	}
	if _, err := ext.Lstat("no/such/file"); err == nil {
		t.Fatal("lstat of a missing file succeeded")
	}

	// Get of the whole volume: the same tree, the escaping link refused.
	out := t.TempDir()
	st, err := Get(ext, ".", out, GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Refused) != 1 || !strings.Contains(st.Refused[0], "escape") {
		t.Fatalf("refused: %q (want the escaping symlink only)", st.Refused)
	}
	if _, err := os.Lstat(filepath.Join(out, "escape")); err == nil {
		t.Fatal("the escaping symlink was written")
	}
	compareTrees(t, src, out, "escape")
	var sys syscall.Stat_t
	syscall.Stat(filepath.Join(out, "sparse.img"), &sys)
	if sys.Blocks*512 > 1<<20 {
		t.Fatalf("sparse.img restored with %d bytes allocated", sys.Blocks*512)
	}

	// FAT: long names, a subdirectory, a file's bytes.
	fat, err := g.Volume("p2")
	if err != nil {
		t.Fatal(err)
	}
	root, err := fat.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range root {
		names = append(names, e.Name)
	}
	sort.Strings(names)
	if strings.Join(names, ",") != "A long file name.txt,EFI" {
		t.Fatalf("FAT root: %q", names)
	}
	fout := t.TempDir()
	if _, err := Get(fat, "EFI", fout, GetOptions{}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(fout, "EFI", "debian", "grubx64.efi"))
	if !bytes.Equal(got, randomBytes(3, 200<<10)) {
		t.Fatal("FAT file restored wrong")
	}
	if _, err := g.Volume("p9"); err == nil || !strings.Contains(err.Error(), "p1, p2") {
		t.Fatalf("unknown volume: %v", err)
	}
}

// compareTrees checks that got holds every file, directory and symlink of
// want (but skip) with the same bytes, permissions, mtimes and targets.
func compareTrees(t *testing.T, want, got string, skip ...string) {
	t.Helper()
	filepath.WalkDir(want, func(p string, d fs.DirEntry, err error) error {
		rel, _ := filepath.Rel(want, p)
		for _, s := range skip {
			if rel == s {
				return nil
			}
		}
		wi, _ := os.Lstat(p)
		gi, err := os.Lstat(filepath.Join(got, rel))
		if err != nil {
			t.Fatalf("%s missing: %v", rel, err)
		}
		if wi.Mode() != gi.Mode() {
			t.Fatalf("%s: mode %v, want %v", rel, gi.Mode(), wi.Mode())
		}
		switch {
		case wi.Mode()&fs.ModeSymlink != 0:
			wl, _ := os.Readlink(p)
			gl, _ := os.Readlink(filepath.Join(got, rel))
			if wl != gl {
				t.Fatalf("%s: link %q, want %q", rel, gl, wl)
			}
		case wi.Mode().IsRegular():
			wb, _ := os.ReadFile(p)
			gb, _ := os.ReadFile(filepath.Join(got, rel))
			if !bytes.Equal(wb, gb) {
				t.Fatalf("%s: content differs", rel)
			}
			if !wi.ModTime().Truncate(time.Second).Equal(gi.ModTime().Truncate(time.Second)) {
				t.Fatalf("%s: mtime %v, want %v", rel, gi.ModTime(), wi.ModTime())
			}
		case wi.IsDir() && rel != ".":
			// Seconds: the test's small ext4 has 128-byte inodes (no ns).
			if !wi.ModTime().Truncate(time.Second).Equal(gi.ModTime().Truncate(time.Second)) {
				t.Fatalf("%s: dir mtime %v, want %v", rel, gi.ModTime(), wi.ModTime())
			}
		}
		return nil
	})
}
