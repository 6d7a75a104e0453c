package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-backup/strata/internal/testserver"
	"github.com/strata-backup/strata/pkg/guestfs"
)

// --skip-free: an ext4 filled by a big random file that is then deleted
// (debugfs) is backed up with and without the flag. With it the backup
// holds under a fifth of the data chunks, its record says how many bytes
// were skipped and from which bitmaps, certify passes (the source is read
// through the same bitmaps), and the restore is the disk with exactly the
// wholly free chunks zeroed: e2fsck accepts it and every file is intact.
func TestSkipFreeBlocks(t *testing.T) {
	const cs = 64 << 10
	work := t.TempDir()
	tree := filepath.Join(work, "tree")
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "etc", "hostname"), []byte("skip-free\n"), 0o644)
	os.WriteFile(filepath.Join(tree, "kept.bin"), testserver.RandomBytes(41, 300<<10), 0o644)
	os.WriteFile(filepath.Join(tree, "doomed.bin"), testserver.RandomBytes(42, 22<<20), 0o644)
	img := filepath.Join(work, "disk.img")
	testserver.PartitionedImageFrom(t, img, tree)
	part := filepath.Join(work, "p1.ext4")
	raw, _ := os.ReadFile(img)
	os.WriteFile(part, raw[testserver.Ext4Offset:testserver.Ext4Offset+testserver.Ext4Size], 0o644)
	testserver.Tool(t, "", "debugfs", "-w", "-R", "rm /doomed.bin", part)
	p, _ := os.ReadFile(part)
	copy(raw[testserver.Ext4Offset:], p)
	os.WriteFile(img, raw, 0o644)
	os.Remove(filepath.Join(tree, "doomed.bin"))

	st := startStack(t, stackOptions{chunkSize: cs})
	st.mustCLI("backup", "--vm", "lean", "--source", "file://"+img, "--skip-free", "--verify", "certify", "--wait")
	st.mustCLI("backup", "--vm", "plain", "--source", "file://"+img, "--wait")
	lean, plain := st.records("lean")[0], st.records("plain")[0]
	data := func(d int64, z int64) int64 { return d - z }
	ld, pd := lean.Disks[0], plain.Disks[0]
	if ld.FreeSkippedBytes < 20<<20 || !strings.Contains(ld.FreeMap, "p1 (ext4)") {
		t.Fatalf("skip-free record: %d bytes skipped, map %q", ld.FreeSkippedBytes, ld.FreeMap)
	}
	if lc, pc := data(ld.Chunks, ld.ZeroChunks), data(pd.Chunks, pd.ZeroChunks); lc*5 >= pc {
		t.Fatalf("with --skip-free %d data chunks, without %d: not under a fifth", lc, pc)
	}
	if pd.FreeSkippedBytes != 0 || pd.FreeMap != "" {
		t.Fatalf("a backup without --skip-free skipped %d bytes (%q)", pd.FreeSkippedBytes, pd.FreeMap)
	}

	// The restore: the disk, with exactly the wholly free chunks zeroed.
	out := filepath.Join(work, "restored.img")
	st.mustCLI("restore", "--vm", "lean", "--backup", "latest", "--to", out)
	got, _ := os.ReadFile(out)
	f, _ := os.Open(img)
	free, _, err := guestfs.FreeChunks(fileDisk{f}, cs)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(raw)
	for _, r := range free {
		clear(want[r[0]*cs : r[1]*cs])
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the restore is not the disk with its wholly free chunks zeroed")
	}
	os.WriteFile(part, got[testserver.Ext4Offset:testserver.Ext4Offset+testserver.Ext4Size], 0o644)
	testserver.Tool(t, "", "e2fsck", "-fn", part)
	files := t.TempDir()
	st.mustCLI("files", "get", "--vm", "lean", "/p1/etc", "/p1/kept.bin", "--to", files)
	testserver.CompareTrees(t, filepath.Join(tree, "etc"), filepath.Join(files, "etc"))
	if b, _ := os.ReadFile(filepath.Join(files, "kept.bin")); !bytes.Equal(b, testserver.RandomBytes(41, 300<<10)) {
		t.Fatal("kept.bin differs after a --skip-free backup")
	}
}

// fileDisk is an image file as a guestfs.Disk.
type fileDisk struct{ *os.File }

func (f fileDisk) Size() int64 {
	fi, _ := f.Stat()
	return fi.Size()
}

// --skip-free on XFS and NTFS: a GPT disk whose XFS (mkfs.xfs -K) and
// NTFS (mkntfs -Q) were made over random bytes — their free blocks hold
// data, as deleted files leave; neither tool deletes a file without a
// mount — is backed up with and without the flag. With it the backup
// holds under a fifth of the data chunks, certify passes, and the
// restored volumes pass xfs_repair -n and ntfsfix -n with every file
// intact.
func TestSkipFreeXFSAndNTFS(t *testing.T) {
	const cs = 64 << 10
	const xfsOff, xfsSize, ntfsOff, ntfsSize = 1 << 20, 300 << 20, 301 << 20, 64 << 20
	work := t.TempDir()
	tree := filepath.Join(work, "tree")
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "etc", "hostname"), []byte("skip-free-xfs\n"), 0o644)
	os.WriteFile(filepath.Join(tree, "kept.bin"), testserver.RandomBytes(43, 3<<20), 0o644)
	ntfsFiles := map[string][]byte{"kept.bin": testserver.RandomBytes(44, 2<<20), "note.txt": []byte("still here\n")}
	img := filepath.Join(work, "disk.img")
	os.WriteFile(img, nil, 0o644)
	os.Truncate(img, ntfsOff+ntfsSize+1<<20)
	testserver.Tool(t, fmt.Sprintf("label: gpt\nstart=%d, size=%d, type=linux\nstart=%d, size=%d, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n",
		xfsOff/512, xfsSize/512, ntfsOff/512, ntfsSize/512), "sfdisk", "--quiet", img)
	testserver.XFSImageOnStale(t, img, xfsOff, xfsSize, tree)
	testserver.NTFSImageOnStale(t, img, ntfsOff, ntfsSize, ntfsFiles)

	st := startStack(t, stackOptions{chunkSize: cs})
	st.mustCLI("backup", "--vm", "lean", "--source", "file://"+img, "--skip-free", "--verify", "certify", "--wait")
	st.mustCLI("backup", "--vm", "plain", "--source", "file://"+img, "--wait")
	ld, pd := st.records("lean")[0].Disks[0], st.records("plain")[0].Disks[0]
	if !strings.Contains(ld.FreeMap, "p1 (xfs)") || !strings.Contains(ld.FreeMap, "p2 (ntfs)") || ld.FreeSkippedBytes < 250<<20 {
		t.Fatalf("skip-free record: %d bytes skipped, map %q", ld.FreeSkippedBytes, ld.FreeMap)
	}
	if lc, pc := ld.Chunks-ld.ZeroChunks, pd.Chunks-pd.ZeroChunks; lc*5 >= pc {
		t.Fatalf("with --skip-free %d data chunks, without %d: not under a fifth", lc, pc)
	}

	out := filepath.Join(work, "restored.img")
	st.mustCLI("restore", "--vm", "lean", "--backup", "latest", "--to", out)
	got, _ := os.ReadFile(out)
	xfsPart, ntfsPart := filepath.Join(work, "p1.xfs"), filepath.Join(work, "p2.ntfs")
	os.WriteFile(xfsPart, got[xfsOff:xfsOff+xfsSize], 0o644)
	os.WriteFile(ntfsPart, got[ntfsOff:ntfsOff+ntfsSize], 0o644)
	testserver.Tool(t, "", "xfs_repair", "-n", "-f", xfsPart)
	testserver.Tool(t, "", "ntfsfix", "-n", ntfsPart)
	files, ntfsOut := t.TempDir(), t.TempDir()
	st.mustCLI("files", "get", "--vm", "lean", "/p1/etc", "/p1/kept.bin", "--to", files)
	st.mustCLI("files", "get", "--vm", "lean", "/p2/kept.bin", "/p2/note.txt", "--to", ntfsOut)
	// (A protofile gives no mtimes: the bytes are what is compared.)
	if b, _ := os.ReadFile(filepath.Join(files, "etc", "hostname")); string(b) != "skip-free-xfs\n" {
		t.Fatalf("XFS etc/hostname after a --skip-free backup: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(files, "kept.bin")); !bytes.Equal(b, testserver.RandomBytes(43, 3<<20)) {
		t.Fatal("XFS kept.bin differs after a --skip-free backup")
	}
	for name, want := range ntfsFiles {
		if b, _ := os.ReadFile(filepath.Join(ntfsOut, name)); !bytes.Equal(b, want) {
			t.Fatalf("NTFS %s differs after a --skip-free backup", name)
		}
	}
}
