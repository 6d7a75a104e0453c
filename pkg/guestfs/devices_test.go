package guestfs

import (
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/strata-backup/strata/internal/testserver"
)

// Device nodes and FIFOs as real filesystems store them — ext4 made by
// mkfs.ext4 with nodes added by debugfs (old and new number encodings),
// XFS made by mkfs.xfs from a protofile — read with their numbers, and
// (as root) recreated by Get with Devices.
func TestDeviceNodesOfExt4AndXFS(t *testing.T) {
	type node struct {
		mode         fs.FileMode
		major, minor uint32
	}
	want := map[string]node{
		"null": {fs.ModeDevice | fs.ModeCharDevice, 1, 3},
		"nvme": {fs.ModeDevice, 259, 300}, // a minor over 255: the new encoding
		"fifo": {fs.ModeNamedPipe, 0, 0},
	}
	ext := filepath.Join(t.TempDir(), "ext4.img")
	testserver.Tool(t, "", "mkfs.ext4", "-q", "-F", "-O", "^has_journal", ext, "4M")
	for _, cmd := range []string{"mknod null c 1 3", "mknod nvme b 259 300", "mknod fifo p"} {
		testserver.Tool(t, "", "debugfs", "-w", "-R", cmd, ext)
	}
	xfs := filepath.Join(t.TempDir(), "xfs.img")
	os.WriteFile(xfs, nil, 0o644)
	os.Truncate(xfs, 300<<20)
	proto := filepath.Join(t.TempDir(), "proto")
	os.WriteFile(proto, []byte("/dev/null\n0 0\nd--755 0 0\nnull c--666 0 0 1 3\nnvme b--660 0 0 259 300\nfifo p--644 0 0\n$\n"), 0o644)
	testserver.Tool(t, "", "mkfs.xfs", "-q", "-p", proto, xfs)

	for name, img := range map[string]string{"ext4": ext, "xfs": xfs} {
		t.Run(name, func(t *testing.T) {
			g, err := New(openDisk(t, img))
			if err != nil {
				t.Fatal(err)
			}
			v, err := g.Volume("disk")
			if err != nil {
				t.Fatal(err)
			}
			for n, w := range want {
				e, err := v.Lstat(n)
				if err != nil {
					t.Fatal(err)
				}
				if e.Mode.Type() != w.mode || e.Major != w.major || e.Minor != w.minor {
					t.Errorf("%s: %s %d:%d, want %s %d:%d", n, e.Mode.Type(), e.Major, e.Minor, w.mode, w.major, w.minor)
				}
			}
			if os.Geteuid() != 0 {
				return // mknod needs root
			}
			out := t.TempDir()
			st, err := Get(v, ".", out, GetOptions{Devices: true})
			if err != nil || st.Nodes != 3 {
				t.Fatalf("get --devices: %+v %v", st, err)
			}
			for n, w := range want {
				var s syscall.Stat_t
				if err := syscall.Lstat(filepath.Join(out, n), &s); err != nil {
					t.Fatal(err)
				}
				if unix.Major(s.Rdev) != w.major || unix.Minor(s.Rdev) != w.minor {
					t.Errorf("%s recreated as %d:%d", n, unix.Major(s.Rdev), unix.Minor(s.Rdev))
				}
			}
		})
	}
}
