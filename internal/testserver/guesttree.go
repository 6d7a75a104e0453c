package testserver

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// RandomBytes is n bytes from a seeded generator.
func RandomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n+8)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b[:n:n]
}

// Stamp is the modification time GuestTree gives its files.
var Stamp = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)

// GuestTree writes a directory tree for the file-restore tests: nested directories, a big file,
// a sparse file, symlinks (one leading out), a non-ASCII name, modes and
// times, and a directory of 5,000 files (an htree directory in ext4).
func GuestTree(t testing.TB) string {
	dir := t.TempDir()
	w := func(rel string, data []byte, mode fs.FileMode) {
		p := filepath.Join(dir, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		os.Chtimes(p, Stamp, Stamp)
	}
	w("docs/readme.txt", []byte("hello from the guest\n"), 0o640)
	w("docs/nested/deep/file.bin", RandomBytes(1, 300<<10), 0o600)
	w("big.bin", RandomBytes(2, 4<<20+17), 0o644)
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
	os.Chtimes(filepath.Join(dir, "docs"), Stamp, Stamp)
	return dir
}

// CopyToFAT copies files and directories into the FAT filesystem at
// offset in img with mtools' mcopy (no mount).
func CopyToFAT(t testing.TB, img string, offset int64, paths ...string) {
	t.Helper()
	if _, err := exec.LookPath("mcopy"); err != nil {
		msg := "mcopy not found (apt-get install mtools)"
		if os.Getenv("STRATA_REQUIRE_SERVERS") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	args := append([]string{"-s", "-i", fmt.Sprintf("%s@@%d", img, offset)}, paths...)
	cmd := exec.Command("mcopy", append(args, "::/")...)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mcopy: %v\n%s", err, out)
	}
}

// CompareTrees checks that got holds every file, directory and symlink of
// want (but skip) with the same bytes, permissions, mtimes and targets.
func CompareTrees(t testing.TB, want, got string, skip ...string) {
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

// NTFSImage writes an NTFS filesystem of size bytes at offset in img
// (mkntfs) and copies files into its root with ntfscp (ntfs-3g's tools,
// no mount): name → content.
func NTFSImage(t testing.TB, img string, offset, size int64, files map[string][]byte) {
	t.Helper()
	ntfsImage(t, img, offset, size, files, false)
}

// NTFSImageOnStale is NTFSImage made over random bytes (mkntfs -Q does
// not clear them): its free clusters hold data, as deleted files leave.
func NTFSImageOnStale(t testing.TB, img string, offset, size int64, files map[string][]byte) {
	t.Helper()
	ntfsImage(t, img, offset, size, files, true)
}

func ntfsImage(t testing.TB, img string, offset, size int64, files map[string][]byte, stale bool) {
	t.Helper()
	for _, tool := range []string{"mkntfs", "ntfscp"} {
		if _, err := lookTool(tool); err != nil {
			msg := tool + " not found (apt-get install ntfs-3g)"
			if os.Getenv("STRATA_REQUIRE_SERVERS") == "1" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	part := filepath.Join(t.TempDir(), "ntfs.img")
	if err := os.WriteFile(part, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(part, size)
	if stale {
		os.WriteFile(part, RandomBytes(77, int(size)), 0o644)
	}
	mk, _ := lookTool("mkntfs")
	if out, err := exec.Command(mk, "-F", "-Q", "-L", "strata-ntfs", part).CombinedOutput(); err != nil {
		t.Fatalf("mkntfs: %v\n%s", err, out)
	}
	cp, _ := lookTool("ntfscp")
	src := t.TempDir()
	for name, data := range files {
		p := filepath.Join(src, "f")
		os.WriteFile(p, data, 0o644)
		if out, err := exec.Command(cp, "-f", part, p, name).CombinedOutput(); err != nil {
			t.Fatalf("ntfscp %s: %v\n%s", name, err, out)
		}
	}
	b, err := os.ReadFile(part)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(img, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, offset); err != nil {
		t.Fatal(err)
	}
}

// XFSImage writes an XFS filesystem of size bytes (at least 300 MiB, as
// mkfs.xfs demands) at offset in img, populated from the tree at src
// through a mkfs.xfs protofile (-p; no mount): directories, files and
// symlinks with their modes and owners. Names with spaces cannot be
// written in a protofile and are left out; mtimes are mkfs's.
func XFSImage(t testing.TB, img string, offset, size int64, src string) {
	t.Helper()
	xfsImage(t, img, offset, size, src, false)
}

// XFSImageOnStale is XFSImage made over random bytes with mkfs.xfs -K
// (no discard): its free blocks hold data, as deleted files leave.
func XFSImageOnStale(t testing.TB, img string, offset, size int64, src string) {
	t.Helper()
	xfsImage(t, img, offset, size, src, true)
}

func xfsImage(t testing.TB, img string, offset, size int64, src string, stale bool) {
	t.Helper()
	mk, err := lookTool("mkfs.xfs")
	if err != nil {
		if os.Getenv("STRATA_REQUIRE_SERVERS") == "1" {
			t.Fatal("mkfs.xfs not found (apt-get install xfsprogs)")
		}
		t.Skip("mkfs.xfs not found (apt-get install xfsprogs)")
	}
	var proto strings.Builder
	proto.WriteString("/dev/null\n0 0\nd--755 0 0\n")
	var walk func(dir, indent string)
	walk = func(dir, indent string) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if strings.ContainsAny(e.Name(), " \t\n") {
				continue
			}
			p := filepath.Join(dir, e.Name())
			fi, _ := os.Lstat(p)
			perm := fmt.Sprintf("%03o", fi.Mode().Perm())
			switch {
			case fi.Mode()&fs.ModeSymlink != 0:
				target, _ := os.Readlink(p)
				fmt.Fprintf(&proto, "%s%s l--%s 0 0 %s\n", indent, e.Name(), perm, target)
			case fi.IsDir():
				fmt.Fprintf(&proto, "%s%s d--%s 0 0\n", indent, e.Name(), perm)
				walk(p, indent+" ")
				fmt.Fprintf(&proto, "%s$\n", indent+" ")
			default:
				fmt.Fprintf(&proto, "%s%s ---%s 1000 1000 %s\n", indent, e.Name(), perm, p)
			}
		}
	}
	walk(src, "")
	proto.WriteString("$\n")
	protoFile := filepath.Join(t.TempDir(), "proto")
	os.WriteFile(protoFile, []byte(proto.String()), 0o644)
	part := filepath.Join(t.TempDir(), "xfs.img")
	os.WriteFile(part, nil, 0o644)
	os.Truncate(part, size)
	args := []string{"-q", "-L", "strata-xfs", "-p", protoFile}
	if stale {
		os.WriteFile(part, RandomBytes(78, int(size)), 0o644)
		args = append(args, "-K")
	}
	if out, err := exec.Command(mk, append(args, part)...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v\n%s", err, out)
	}
	copySparse(t, part, img, offset)
}

// copySparse writes the non-zero 64 KiB blocks of the file src into dst
// at offset (an image of hundreds of MiB, mostly zeros, stays sparse).
func copySparse(t testing.TB, src, dst string, offset int64) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	buf := make([]byte, 64<<10)
	for off := int64(0); ; off += int64(len(buf)) {
		n, err := in.ReadAt(buf, off)
		if n > 0 && !bytes.Equal(buf[:n], make([]byte, n)) {
			if _, werr := out.WriteAt(buf[:n], offset+off); werr != nil {
				t.Fatal(werr)
			}
		}
		if err != nil {
			// A zero tail is not written: the image still ends where src does.
			if fi, _ := out.Stat(); fi != nil && fi.Size() < offset+off+int64(n) {
				out.Truncate(offset + off + int64(n))
			}
			return
		}
	}
}
