package guestfs

import (
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/strata-backup/strata/internal/testserver"
	"github.com/strata-backup/strata/pkg/chunk"
)

// Damaged filesystems made by the real tools — bytes flipped, numbers
// made huge, fields zeroed, images cut short — are listed and read with
// errors or without, never a panic and never a hang (5 s each).
func TestDamagedFilesystemsNeverPanicOrHang(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "hello.txt"), []byte("hello"), 0o644)
	ext := filepath.Join(t.TempDir(), "ext.img")
	os.WriteFile(ext, make([]byte, 256<<10), 0o644)
	fat := filepath.Join(t.TempDir(), "fat.img")
	for _, c := range [][]string{{"mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-d", dir, ext, "256k"}, {"mkfs.vfat", "-C", fat, "256"}, {"mcopy", "-i", fat, filepath.Join(dir, "hello.txt"), "::/"}} {
		cmd := exec.Command(c[0], c[1:]...)
		cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			if os.Getenv("STRATA_REQUIRE_SERVERS") == "1" {
				t.Fatalf("%v: %v\n%s", c, err, out)
			}
			t.Skipf("%v: %v", c, err)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for _, img := range []string{ext, fat} {
		seed, _ := os.ReadFile(img)
		for i := 0; i < 3000; i++ {
			b := append([]byte(nil), seed...)
			for k := 0; k < 1+r.IntN(8); k++ {
				switch r.IntN(4) {
				case 0:
					b[r.IntN(len(b))] = byte(r.Uint32())
				case 1: // a huge little-endian number
					at := r.IntN(len(b) - 8)
					b[at], b[at+1], b[at+2], b[at+3] = 0xff, 0xff, byte(r.Uint32()), 0x7f
				case 2:
					b = b[:len(b)/2+r.IntN(len(b)/2)]
				case 3:
					at := r.IntN(len(b) - 4)
					b[at], b[at+1] = 0, 0
				}
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				readAll(memDisk(b))
			}()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				os.WriteFile(filepath.Join(os.TempDir(), "strata-guestfs-hang.img"), b, 0o644)
				t.Fatalf("%s damaged (case %d) hangs; the image is in %s", filepath.Base(img), i, filepath.Join(os.TempDir(), "strata-guestfs-hang.img"))
			}
		}
	}
}

// readAll lists every volume, reads a few files of each, and reads the
// free-block maps.
func readAll(d Disk) {
	FreeExtents(d)
	g, err := New(d)
	if err != nil {
		return
	}
	for _, v := range g.Volumes() {
		fsys, err := g.Volume(v.Name)
		if err != nil {
			continue
		}
		entries, err := fsys.ReadDir(".")
		if err != nil {
			continue
		}
		for _, e := range entries[:min(len(entries), 12)] {
			fsys.Lstat(e.Name)
			if e.Mode.IsDir() {
				fsys.ReadDir(e.Name)
				continue
			}
			if rd, err := fsys.Open(e.Name); err == nil {
				io.Copy(io.Discard, io.LimitReader(rd, 1<<20))
				rd.Close()
			}
		}
	}
}

// patchedDisk is an image with a few bytes changed and maybe cut short,
// without copying it (an XFS image is 300 MiB).
type patchedDisk struct {
	base    []byte
	patches map[int64]byte
	size    int64
}

func (p patchedDisk) Size() int64 { return p.size }
func (p patchedDisk) ReadAt(b []byte, off int64) (int, error) {
	if off >= p.size {
		return 0, io.EOF
	}
	n := copy(b, p.base[off:p.size])
	for at, v := range p.patches {
		if at >= off && at < off+int64(n) {
			b[at-off] = v
		}
	}
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

// The XFS reader (Strata's own) on damaged images made by mkfs.xfs: the
// bytes changed are in the blocks that hold anything (superblock, AG
// headers, inodes, directories, extent maps, file data).
func TestDamagedXFSNeverPanicsOrHangs(t *testing.T) {
	src := testserver.GuestTree(t)
	img := filepath.Join(t.TempDir(), "xfs.img")
	testserver.XFSImage(t, img, 0, 300<<20, src)
	base, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	var used []int64 // 4 KiB blocks that are not all zero
	for off := int64(0); off < int64(len(base)); off += 4096 {
		if !chunk.AllZero(base[off : off+4096]) {
			used = append(used, off)
		}
	}
	r := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 1500; i++ {
		d := patchedDisk{base: base, patches: map[int64]byte{}, size: int64(len(base))}
		for k := 0; k < 1+r.IntN(8); k++ {
			at := used[r.IntN(len(used))] + r.Int64N(4096-8)
			switch r.IntN(4) {
			case 0:
				d.patches[at] = byte(r.Uint32())
			case 1: // a huge big-endian number
				d.patches[at], d.patches[at+1], d.patches[at+2] = 0x7f, 0xff, byte(r.Uint32())
			case 2:
				d.size = used[r.IntN(len(used))]
			case 3:
				d.patches[at], d.patches[at+1] = 0, 0
			}
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			readAll(d)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("damaged XFS (case %d: %v, size %d) hangs", i, d.patches, d.size)
		}
	}
}
