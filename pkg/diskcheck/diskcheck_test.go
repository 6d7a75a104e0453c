package diskcheck

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-backup/strata/internal/testserver"
)

func inspect(t *testing.T, path string) *Layout {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	l, err := Inspect(f, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestInspectRealImage(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.img")
	testserver.PartitionedImage(t, img)
	l := inspect(t, img)
	if l.Table != "gpt" || len(l.Partitions) != 2 || l.Partitions[0].Content != "ext4" || l.Partitions[1].Content != "fat" {
		t.Fatalf("layout %+v", l)
	}
	if p := l.Plausible(); p != "" {
		t.Fatal(p)
	}
	if r := l.Recovery(); r != nil || l.Partitions[0].NeedsRecovery {
		t.Fatalf("a freshly made ext4 needs recovery: %v", r)
	}
	// The flag a crash leaves (set with the real debugfs): reported.
	part := filepath.Join(t.TempDir(), "part.img")
	testserver.Tool(t, "", "dd", "if="+img, "of="+part, "bs=1M", fmt.Sprint("skip=", testserver.Ext4Offset>>20), fmt.Sprint("count=", testserver.Ext4Size>>20), "status=none")
	testserver.Tool(t, "", "debugfs", "-w", "-R", "feature needs_recovery", part)
	testserver.Tool(t, "", "dd", "if="+part, "of="+img, "bs=1M", fmt.Sprint("seek=", testserver.Ext4Offset>>20), "conv=notrunc", "status=none")
	if r := inspect(t, img).Recovery(); len(r) != 1 || !strings.Contains(r[0], "partition 1") {
		t.Fatalf("needs_recovery set: %v", r)
	}

	// A zeroed ext4 superblock is a clear failure naming the partition.
	f, _ := os.OpenFile(img, os.O_WRONLY, 0)
	f.WriteAt(make([]byte, 1024), testserver.Ext4Offset+1024)
	f.Close()
	damaged := inspect(t, img)
	if p := damaged.Plausible(); !strings.Contains(p, "partition 1") || !strings.Contains(p, "superblock") {
		t.Fatalf("zeroed superblock: %q", p)
	}
	if c := Compare(l, damaged); !strings.Contains(c, "ext4") {
		t.Fatalf("compare: %q", c)
	}

	// A corrupt GPT is an error, not a guess.
	f, _ = os.OpenFile(img, os.O_WRONLY, 0)
	f.WriteAt([]byte{0xff}, 512+40)
	f.Close()
	g, _ := os.Open(img)
	defer g.Close()
	if _, err := Inspect(g, 64<<20); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("corrupt GPT header: %v", err)
	}
}

func TestBlankDiskIsImplausible(t *testing.T) {
	img := filepath.Join(t.TempDir(), "blank.img")
	os.WriteFile(img, make([]byte, 1<<20), 0o644)
	if p := inspect(t, img).Plausible(); !strings.Contains(p, "no partition table") {
		t.Fatalf("blank disk: %q", p)
	}
}

func TestInspectMBRWithSwap(t *testing.T) {
	img := filepath.Join(t.TempDir(), "mbr.img")
	f, _ := os.Create(img)
	f.Truncate(32 << 20)
	f.Close()
	testserver.Tool(t, "label: dos\nstart=2048, size=16384, type=83\nstart=18432, size=8192, type=82\n", "sfdisk", "--quiet", img)
	testserver.Tool(t, "", "mkfs.ext4", "-q", "-F", "-E", "offset=1048576", img, "8192k")
	// A swap signature, as mkswap writes it, at the end of the first page.
	f, _ = os.OpenFile(img, os.O_WRONLY, 0)
	f.WriteAt([]byte("SWAPSPACE2"), 18432*512+4086)
	f.Close()
	l := inspect(t, img)
	if l.Table != "mbr" || len(l.Partitions) != 2 || l.Partitions[0].Content != "ext4" || l.Partitions[1].Content != "swap" {
		t.Fatalf("layout %+v", l)
	}
	if p := l.Plausible(); p != "" {
		t.Fatal(p)
	}
	// A partition running past the end of the disk is refused.
	f, _ = os.OpenFile(img, os.O_WRONLY, 0)
	f.WriteAt([]byte{0xff, 0xff, 0xff, 0x00}, 446+16+12)
	f.Close()
	g, _ := os.Open(img)
	defer g.Close()
	if _, err := Inspect(g, 32<<20); err == nil || !strings.Contains(err.Error(), "outside") {
		t.Fatalf("partition past the end: %v", err)
	}
}
