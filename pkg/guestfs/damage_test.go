package guestfs

import (
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
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

// readAll lists every volume and reads a few files of each.
func readAll(d Disk) {
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
		for _, e := range entries[:min(len(entries), 8)] {
			if rd, err := fsys.Open(e.Name); err == nil {
				io.Copy(io.Discard, io.LimitReader(rd, 1<<20))
				rd.Close()
			}
		}
	}
}
