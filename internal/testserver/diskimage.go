package testserver

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Tool runs a Debian system tool (fdisk's sfdisk, e2fsprogs, dosfstools):
// skipped when missing, fatal with STRATA_REQUIRE_SERVERS=1.
func Tool(t testing.TB, stdin, name string, args ...string) {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/" + name); serr == nil {
			bin, err = "/usr/sbin/"+name, nil
		}
	}
	if err != nil {
		msg := fmt.Sprintf("%s not found (apt-get install fdisk e2fsprogs dosfstools)", name)
		if os.Getenv("STRATA_REQUIRE_SERVERS") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// Partition offsets of PartitionedImage.
const (
	Ext4Offset = 1 << 20
	Ext4Size   = 32 << 20
	FATOffset  = 33 << 20
	FATSize    = 30 << 20
)

// PartitionedImage writes a 64 MiB disk image with a GPT partition table,
// an ext4 filesystem holding files (partition 1) and a FAT filesystem
// (partition 2), made by the real Debian tools on an image file (no loop
// device needed).
func PartitionedImage(t testing.TB, path string) {
	t.Helper()
	content := t.TempDir()
	for i := 0; i < 20; i++ {
		os.WriteFile(fmt.Sprintf("%s/file%02d.txt", content, i), []byte(strings.Repeat(fmt.Sprintf("line %d of a test file\n", i), 2000)), 0o644)
	}
	PartitionedImageFrom(t, path, content)
}

// PartitionedImageFrom is PartitionedImage with the ext4 filesystem made
// from the files of the directory content (mkfs.ext4 -d).
func PartitionedImageFrom(t testing.TB, path, content string) {
	t.Helper()
	if err := os.Truncate(path, 64<<20); err != nil {
		f, cerr := os.Create(path)
		if cerr != nil {
			t.Fatal(cerr)
		}
		f.Truncate(64 << 20)
		f.Close()
	}
	Tool(t, fmt.Sprintf("label: gpt\nstart=%d, size=%d, type=linux\nstart=%d, size=%d, type=uefi\n",
		Ext4Offset/512, Ext4Size/512, FATOffset/512, FATSize/512), "sfdisk", "--quiet", path)
	Tool(t, "", "mkfs.ext4", "-q", "-F", "-d", content, "-E", fmt.Sprintf("offset=%d", Ext4Offset), path, fmt.Sprintf("%dk", Ext4Size>>10))
	Tool(t, "", "mkfs.vfat", "-F", "16", "--offset", fmt.Sprint(FATOffset/512), path, fmt.Sprint(FATSize>>10))
}

// Partitions of GuestDisk, in bytes.
const (
	GuestFATOffset  = 1 << 20
	GuestFATSize    = 40 << 20
	GuestExt4Offset = GuestFATOffset + GuestFATSize
	GuestExt4Size   = 64 << 20
	GuestXFSOffset  = GuestExt4Offset + GuestExt4Size
	GuestXFSSize    = 300 << 20
	GuestNTFSOffset = GuestXFSOffset + GuestXFSSize
	GuestNTFSSize   = 32 << 20
	GuestDiskSize   = GuestNTFSOffset + GuestNTFSSize + 1<<20
)

// GuestDisk writes a sparse GPT disk holding, each made by the real
// tools: p1 FAT32 (mkfs.vfat, the files fat copied in with mcopy), p2
// ext4 (mkfs.ext4 -d tree), p3 XFS (mkfs.xfs -p from tree), p4 NTFS
// (mkntfs, ntfs files copied into its root with ntfscp).
func GuestDisk(t testing.TB, path, tree string, fat []string, ntfs map[string][]byte) {
	t.Helper()
	os.WriteFile(path, nil, 0o644)
	if err := os.Truncate(path, GuestDiskSize); err != nil {
		t.Fatal(err)
	}
	Tool(t, fmt.Sprintf("label: gpt\nstart=%d, size=%d, type=uefi\nstart=%d, size=%d, type=linux\nstart=%d, size=%d, type=linux\nstart=%d, size=%d, type=%s\n",
		GuestFATOffset/512, GuestFATSize/512, GuestExt4Offset/512, GuestExt4Size/512, GuestXFSOffset/512, GuestXFSSize/512,
		GuestNTFSOffset/512, GuestNTFSSize/512, "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"), "sfdisk", "--quiet", path)
	// One sector per cluster: FAT32 needs 65,525 clusters or more, and
	// mkfs.vfat would size clusters by the whole image.
	Tool(t, "", "mkfs.vfat", "-F", "32", "-s", "1", "-n", "EFI", "--offset", fmt.Sprint(GuestFATOffset/512), path, fmt.Sprint(GuestFATSize>>10))
	CopyToFAT(t, path, GuestFATOffset, fat...)
	Tool(t, "", "mkfs.ext4", "-q", "-F", "-L", "root", "-d", tree, "-E", fmt.Sprintf("offset=%d", GuestExt4Offset), path, fmt.Sprintf("%dk", GuestExt4Size>>10))
	XFSImage(t, path, GuestXFSOffset, GuestXFSSize, tree)
	NTFSImage(t, path, GuestNTFSOffset, GuestNTFSSize, ntfs)
}
