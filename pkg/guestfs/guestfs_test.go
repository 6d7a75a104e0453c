package guestfs

import (
	"bytes"
	"encoding/binary"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

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

func TestExt4AndFATOnGPT(t *testing.T) {
	src := testserver.GuestTree(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	testserver.PartitionedImageFrom(t, img, src)
	// FAT: files copied in with mtools (long names, a subdirectory).
	fatFiles := t.TempDir()
	os.MkdirAll(filepath.Join(fatFiles, "EFI", "debian"), 0o755)
	os.WriteFile(filepath.Join(fatFiles, "EFI", "debian", "grubx64.efi"), testserver.RandomBytes(3, 200<<10), 0o644)
	os.WriteFile(filepath.Join(fatFiles, "A long file name.txt"), []byte("long names on FAT\n"), 0o644)
	testserver.CopyToFAT(t, img, testserver.FATOffset, filepath.Join(fatFiles, "EFI"), filepath.Join(fatFiles, "A long file name.txt"))

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
	if err != nil || e.Mode != 0o640 || !e.ModTime.Equal(testserver.Stamp) || e.Size != 21 || !e.HasOwner {
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
	testserver.CompareTrees(t, src, out, "escape")
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
	if !bytes.Equal(got, testserver.RandomBytes(3, 200<<10)) {
		t.Fatal("FAT file restored wrong")
	}
	if _, err := g.Volume("p9"); err == nil || !strings.Contains(err.Error(), "p1, p2") {
		t.Fatalf("unknown volume: %v", err)
	}
}

// LVM2 made by the real tools: an MBR disk whose partitions 1 and 2 are
// PVs of one VG with a linear and a striped LV (ext4 each), and a FAT in
// logical partition 5.
func TestLVMAndLogicalPartitions(t *testing.T) {
	img := filepath.Join(t.TempDir(), "lvm.img")
	lv := testserver.LVMImage(t, img)
	lvFiles(t, img, lv)

	// The free map through the LVs' segments (linear and striped): what
	// it reports free lies in the PV partitions, and filling all of it
	// with junk leaves every file intact.
	rep, err := FreeExtents(openDisk(t, img))
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(rep.Volumes, "; ")
	if !strings.Contains(all, lv.VG+"/root (ext4): ") || !strings.Contains(all, lv.VG+"/data (ext4): ") || rep.Bytes < 8<<20 {
		t.Fatalf("LVM free map: %d bytes, %s", rep.Bytes, all)
	}
	f, _ := os.OpenFile(img, os.O_RDWR, 0)
	for _, e := range rep.Free {
		if e.Offset < 1<<20 || e.Offset+e.Length > 49<<20 {
			t.Fatalf("free extent %+v outside the PV partitions", e)
		}
		f.WriteAt(bytes.Repeat([]byte{0x5a}, int(e.Length)), e.Offset)
	}
	f.Close()
	lvFiles(t, img, lv)
}

// lvFiles checks the files of testserver.LVMImage's disk.
func lvFiles(t *testing.T, img string, lv testserver.LVMDisk) {
	t.Helper()
	g, err := New(openDisk(t, img))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range g.Volumes() {
		got = append(got, v.Name+":"+v.FS)
	}
	want := []string{"p1:LVM2_member", "p2:LVM2_member", "p5:vfat", lv.VG + "/data:ext4", lv.VG + "/root:ext4"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("volumes %v, want %v", got, want)
	}
	for _, c := range []struct{ path, src string }{
		{"/" + lv.VG + "/root/payload.bin", filepath.Join(lv.Root, "payload.bin")},
		{"/" + lv.VG + "/root/etc/hostname", filepath.Join(lv.Root, "etc", "hostname")},
		{"/" + lv.VG + "/data/striped.bin", filepath.Join(lv.Data, "striped.bin")},
	} {
		vol, inside, err := g.Split(c.path)
		if err != nil {
			t.Fatal(err)
		}
		fsys, err := g.Volume(vol)
		if err != nil {
			t.Fatal(err)
		}
		r, err := fsys.Open(inside)
		if err != nil {
			t.Fatalf("%s: %v", c.path, err)
		}
		b, err := io.ReadAll(r)
		want, _ := os.ReadFile(c.src)
		if err != nil || !bytes.Equal(b, want) {
			t.Fatalf("%s: %d bytes (%v), want %d", c.path, len(b), err, len(want))
		}
	}
	fat, err := g.Volume("p5")
	if err != nil {
		t.Fatal(err)
	}
	r, err := fat.Open("BOOT.BIN")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(r); !bytes.Equal(b, lv.FATFile) {
		t.Fatal("the FAT file in the logical partition differs")
	}
}

// NTFS made by mkntfs and filled by ntfscp (no mount), on the whole disk.
func TestNTFS(t *testing.T) {
	img := filepath.Join(t.TempDir(), "ntfs.img")
	files := map[string][]byte{"big.bin": testserver.RandomBytes(21, 2<<20+5), "héllo.txt": []byte("hello NTFS\n"), "empty": nil}
	testserver.NTFSImage(t, img, 0, 24<<20, files)
	g, err := New(openDisk(t, img))
	if err != nil {
		t.Fatal(err)
	}
	if v := g.Volumes(); len(v) != 1 || v[0].Name != "disk" || v[0].FS != "ntfs" || v[0].UUID == "" {
		t.Fatalf("volumes: %+v", v)
	}
	fsys, err := g.Volume("disk")
	if err != nil {
		t.Fatal(err)
	}
	entries, err := fsys.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name)
	}
	sort.Strings(names)
	if strings.Join(names, ",") != "big.bin,empty,héllo.txt" {
		t.Fatalf("NTFS root: %q", names)
	}
	for name, want := range files {
		r, err := fsys.Open(name)
		if err != nil {
			t.Fatalf("open %s: %v", name, err)
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: %d bytes (%v), want %d", name, len(got), err, len(want))
		}
	}
	out := t.TempDir()
	if _, err := Get(fsys, ".", out, GetOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(out, "big.bin")); !bytes.Equal(got, files["big.bin"]) {
		t.Fatal("get of the NTFS volume: big.bin differs")
	}

	// $Bitmap: zeroing every cluster it marks free leaves every file.
	rep, err := FreeExtents(openDisk(t, img))
	if err != nil || rep.Bytes < 16<<20 || !strings.Contains(rep.Volumes[0], "bytes free") {
		t.Fatalf("NTFS free map: %d bytes, %v, %v", rep.Bytes, rep.Volumes, err)
	}
	w, _ := os.OpenFile(img, os.O_RDWR, 0)
	for _, e := range rep.Free {
		w.WriteAt(make([]byte, e.Length), e.Offset)
	}
	w.Close()
	g, err = New(openDisk(t, img))
	if err != nil {
		t.Fatal(err)
	}
	fsys, _ = g.Volume("disk")
	for name, want := range files {
		r, err := fsys.Open(name)
		if err != nil {
			t.Fatalf("after zeroing the free clusters, open %s: %v", name, err)
		}
		if got, _ := io.ReadAll(r); !bytes.Equal(got, want) {
			t.Fatalf("after zeroing the free clusters, %s differs", name)
		}
	}
	if out, err := exec.Command("ntfsls", "-f", img).CombinedOutput(); err != nil || !strings.Contains(string(out), "big.bin") {
		t.Fatalf("ntfsls after zeroing the free clusters: %v\n%s", err, out)
	}
}

// Free-block map: an ext4 filled by a big random file that is then
// deleted (debugfs) reports at least that file's blocks free; zeroing
// everything reported free leaves a filesystem e2fsck accepts with every
// remaining file intact.
func TestExtFreeBlocks(t *testing.T) {
	src := testserver.GuestTree(t)
	os.RemoveAll(filepath.Join(src, "many"))
	os.WriteFile(filepath.Join(src, "doomed.bin"), testserver.RandomBytes(31, 12<<20), 0o644)
	img := filepath.Join(t.TempDir(), "disk.img")
	testserver.PartitionedImageFrom(t, img, src)
	part := func() string {
		p := filepath.Join(t.TempDir(), "p1.ext4")
		b, _ := os.ReadFile(img)
		os.WriteFile(p, b[testserver.Ext4Offset:testserver.Ext4Offset+testserver.Ext4Size], 0o644)
		return p
	}
	p := part()
	testserver.Tool(t, "", "debugfs", "-w", "-R", "rm /doomed.bin", p)
	b, _ := os.ReadFile(p)
	f, _ := os.OpenFile(img, os.O_RDWR, 0)
	f.WriteAt(b, testserver.Ext4Offset)
	f.Close()

	rep, err := FreeExtents(openDisk(t, img))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Bytes < 12<<20 {
		t.Fatalf("%d bytes free after deleting a 12 MiB file: %v", rep.Bytes, rep.Volumes)
	}
	// Zero what is free: the filesystem and its files must not notice.
	f, _ = os.OpenFile(img, os.O_RDWR, 0)
	for _, e := range rep.Free {
		if e.Offset < testserver.Ext4Offset || e.Offset+e.Length > testserver.Ext4Offset+testserver.Ext4Size {
			t.Fatalf("free extent %+v outside the ext4 partition", e)
		}
		f.WriteAt(make([]byte, e.Length), e.Offset)
	}
	f.Close()
	testserver.Tool(t, "", "e2fsck", "-fn", part())
	g, err := New(openDisk(t, img))
	if err != nil {
		t.Fatal(err)
	}
	ext, _ := g.Volume("p1")
	out := t.TempDir()
	if _, err := Get(ext, ".", out, GetOptions{}); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(src, "doomed.bin"))
	testserver.CompareTrees(t, src, out, "escape")

	// A journal still to replay: nothing is reported free, and why.
	f, _ = os.OpenFile(img, os.O_RDWR, 0)
	flags := make([]byte, 4)
	f.ReadAt(flags, testserver.Ext4Offset+1024+96)
	flags[0] |= 0x4
	f.WriteAt(flags, testserver.Ext4Offset+1024+96)
	f.Close()
	rep, err = FreeExtents(openDisk(t, img))
	if err != nil || rep.Bytes != 0 || !strings.Contains(strings.Join(rep.Volumes, ";"), "needs recovery") {
		t.Fatalf("free map of a filesystem whose journal needs recovery: %d bytes, %v, %v", rep.Bytes, rep.Volumes, err)
	}
}

// XFS made by mkfs.xfs from the test tree (protofile): listings, modes,
// owners, symlink targets, file bytes, the 5,000-file directory (leaf or
// node format), and a whole-volume get.
func TestXFS(t *testing.T) {
	src := testserver.GuestTree(t)
	img := filepath.Join(t.TempDir(), "xfs.img")
	testserver.XFSImage(t, img, 0, 300<<20, src)
	g, err := New(openDisk(t, img))
	if err != nil {
		t.Fatal(err)
	}
	if v := g.Volumes(); len(v) != 1 || v[0].FS != "xfs" || v[0].Label != "strata-xfs" {
		t.Fatalf("volumes: %+v", v)
	}
	x, err := g.Volume("disk")
	if err != nil {
		t.Fatal(err)
	}
	if e, err := x.Lstat("docs/readme.txt"); err != nil || e.Mode != 0o640 || e.UID != 1000 || e.Size != 21 {
		t.Fatalf("lstat docs/readme.txt: %+v %v", e, err)
	}
	if e, err := x.Lstat("escape"); err != nil || e.Link != "../../etc/passwd" {
		t.Fatalf("lstat escape: %+v %v", e, err)
	}
	if many, err := x.ReadDir("many"); err != nil || len(many) != 5000 {
		t.Fatalf("many: %d entries, %v", len(many), err)
	}
	out := t.TempDir()
	st, err := Get(x, ".", out, GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Refused) != 1 {
		t.Fatalf("refused %q", st.Refused)
	}
	for _, name := range []string{"big.bin", "docs/nested/deep/file.bin", "sparse.img", "docs/readme.txt", "many/f4321"} {
		want, _ := os.ReadFile(filepath.Join(src, name))
		got, err := os.ReadFile(filepath.Join(out, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: %d bytes (%v), want %d", name, len(got), err, len(want))
		}
	}
	if l, _ := os.Readlink(filepath.Join(out, "link-rel")); l != "docs/readme.txt" {
		t.Fatalf("link-rel -> %q", l)
	}
}

// XFS free map: an XFS made over random bytes (its free blocks hold
// data, as deleted files leave) reports them free; zeroing everything
// reported free leaves a filesystem xfs_repair accepts with every file
// intact. A log that does not end in an unmount record reports nothing.
func TestXFSFreeBlocks(t *testing.T) {
	src := testserver.GuestTree(t)
	img := filepath.Join(t.TempDir(), "xfs.img")
	testserver.XFSImageOnStale(t, img, 0, 300<<20, src)
	rep, err := FreeExtents(openDisk(t, img))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Bytes < 200<<20 || !strings.Contains(rep.Volumes[0], "disk (xfs)") {
		t.Fatalf("XFS free map: %d bytes, %v", rep.Bytes, rep.Volumes)
	}
	f, _ := os.OpenFile(img, os.O_RDWR, 0)
	for _, e := range rep.Free {
		f.WriteAt(make([]byte, e.Length), e.Offset)
	}
	f.Close()
	testserver.Tool(t, "", "xfs_repair", "-n", "-f", img)
	g, err := New(openDisk(t, img))
	if err != nil {
		t.Fatal(err)
	}
	x, _ := g.Volume("disk")
	out := t.TempDir()
	if _, err := Get(x, ".", out, GetOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"big.bin", "docs/nested/deep/file.bin", "sparse.img", "docs/readme.txt", "many/f4321"} {
		want, _ := os.ReadFile(filepath.Join(src, name))
		if got, err := os.ReadFile(filepath.Join(out, name)); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("after zeroing the free blocks, %s: %d bytes (%v), want %d", name, len(got), err, len(want))
		}
	}

	// Damage around the log's head: each is refused, nothing reported free.
	sb := make([]byte, 512)
	f, _ = os.OpenFile(img, os.O_RDWR, 0)
	f.ReadAt(sb, 0)
	logAt := int64(binary.BigEndian.Uint64(sb[48:])) // one AG is enough to find it in a test image
	agBlkLog, agBlocks, bs := uint(sb[124]), int64(binary.BigEndian.Uint32(sb[84:])), int64(binary.BigEndian.Uint32(sb[4:]))
	logAt = ((logAt>>agBlkLog)*agBlocks + logAt&(1<<agBlkLog-1)) * bs
	rec := make([]byte, 64<<10)
	f.ReadAt(rec, logAt)
	f.Close()
	if binary.BigEndian.Uint32(rec) != 0xFEEDBABE {
		t.Fatalf("no log record header at the log's start: % x", rec[:8])
	}
	for name, damage := range map[string]func(){
		"not an unmount record": func() { f.WriteAt([]byte{rec[512+9] &^ 0x20}, logAt+512+9) },
		"a current block past the head": func() {
			b := make([]byte, 4)
			binary.BigEndian.PutUint32(b, binary.BigEndian.Uint32(rec[4:]))
			f.WriteAt(b, logAt+40*512)
		},
		"two operations": func() { f.WriteAt([]byte{0, 0, 0, 2}, logAt+40) },
	} {
		f, _ = os.OpenFile(img, os.O_RDWR, 0)
		damage()
		f.Close()
		rep, err := FreeExtents(openDisk(t, img))
		if err != nil || rep.Bytes != 0 || !strings.Contains(rep.Volumes[0], "not shut down clean") {
			t.Errorf("%s: %d bytes free, %v, %v", name, rep.Bytes, rep.Volumes, err)
		}
		f, _ = os.OpenFile(img, os.O_RDWR, 0)
		f.WriteAt(rec, logAt)
		f.Close()
	}
	if rep, _ := FreeExtents(openDisk(t, img)); rep.Bytes == 0 {
		t.Fatalf("the log put back: %v", rep.Volumes)
	}
}
