package guestfs

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// linkFS is a tree of directories, files and symlinks for Resolve's unit
// test (the real filesystems' symlinks are read in TestExt4AndFATOnGPT).
type linkFS map[string]string // path → "dir", "file" or "->target"

func (m linkFS) Lstat(name string) (Entry, error) {
	v, ok := m[name]
	if !ok {
		return Entry{}, fs.ErrNotExist
	}
	switch {
	case v == "dir":
		return Entry{Name: path.Base(name), Mode: fs.ModeDir | 0o755}, nil
	case v == "fifo":
		return Entry{Name: path.Base(name), Mode: fs.ModeNamedPipe | 0o644}, nil
	case v == "chardev":
		return Entry{Name: path.Base(name), Mode: fs.ModeDevice | fs.ModeCharDevice | 0o600, Major: 1, Minor: 3}, nil
	case v == "blockdev":
		return Entry{Name: path.Base(name), Mode: fs.ModeDevice | 0o660, Major: 259, Minor: 300}, nil
	case strings.HasPrefix(v, "->"):
		return Entry{Name: path.Base(name), Mode: fs.ModeSymlink | 0o777, Link: v[2:]}, nil
	}
	return Entry{Name: path.Base(name), Mode: 0o644, Size: int64(len(strings.TrimPrefix(v, "file:")))}, nil
}

func (m linkFS) ReadDir(dir string) ([]Entry, error) {
	var out []Entry
	for name := range m {
		if name != dir && path.Dir(name) == dir {
			e, _ := m.Lstat(name)
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (m linkFS) Open(name string) (io.ReadCloser, error) {
	v, ok := m[name]
	if !ok || !strings.HasPrefix(v, "file:") {
		return nil, fs.ErrNotExist
	}
	return io.NopCloser(strings.NewReader(v[5:])), nil
}

// Special files are skipped, not refused; a file already in the target is
// an error unless Overwrite, which replaces files and symlinks.
func TestGetSkipsSpecialFilesAndOverwrites(t *testing.T) {
	fsys := linkFS{".": "dir", "f": "file:new bytes", "p": "fifo", "null": "chardev", "l": "->f"}
	dir := t.TempDir()
	st, err := Get(fsys, ".", dir, GetOptions{})
	if err != nil || st.Files != 1 || st.Links != 1 || len(st.Skipped) != 2 || len(st.Refused) != 0 {
		t.Fatalf("get: %+v %v", st, err)
	}
	os.WriteFile(filepath.Join(dir, "f"), []byte("old"), 0o644)
	if _, err := Get(fsys, "f", dir, GetOptions{}); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("get over an existing file: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "f")); string(b) != "old" {
		t.Fatal("an existing file was replaced without Overwrite")
	}
	if st, err := Get(fsys, ".", dir, GetOptions{Overwrite: true}); err != nil || st.Files != 1 || st.Links != 1 {
		t.Fatalf("get with Overwrite: %+v %v", st, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "l")); string(b) != "new bytes" {
		t.Fatalf("after Overwrite: %q", b)
	}
}

// With Devices (as root), device nodes and FIFOs are recreated with their
// type, numbers and mode; an existing one is replaced only with Overwrite.
func TestGetRecreatesDeviceNodes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mknod needs root")
	}
	fsys := linkFS{".": "dir", "p": "fifo", "null": "chardev", "nvme": "blockdev"}
	dir := t.TempDir()
	st, err := Get(fsys, ".", dir, GetOptions{Devices: true})
	if err != nil || st.Nodes != 3 || len(st.Skipped) != 0 {
		t.Fatalf("get --devices: %+v %v", st, err)
	}
	for name, want := range map[string]struct {
		typ          uint32
		major, minor uint32
		perm         uint32
	}{"p": {syscall.S_IFIFO, 0, 0, 0o644}, "null": {syscall.S_IFCHR, 1, 3, 0o600}, "nvme": {syscall.S_IFBLK, 259, 300, 0o660}} {
		var s syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(dir, name), &s); err != nil {
			t.Fatal(err)
		}
		if s.Mode&syscall.S_IFMT != want.typ || s.Mode&0o7777 != want.perm || unix.Major(s.Rdev) != want.major || unix.Minor(s.Rdev) != want.minor {
			t.Errorf("%s: mode %o rdev %d:%d, want type %o perm %o %d:%d", name, s.Mode, unix.Major(s.Rdev), unix.Minor(s.Rdev), want.typ, want.perm, want.major, want.minor)
		}
	}
	if _, err := Get(fsys, "null", dir, GetOptions{Devices: true}); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("a node over an existing one: %v", err)
	}
	if st, err := Get(fsys, "null", dir, GetOptions{Devices: true, Overwrite: true}); err != nil || st.Nodes != 1 {
		t.Fatalf("with Overwrite: %+v %v", st, err)
	}
}

func TestResolveStaysInTheVolume(t *testing.T) {
	fsys := linkFS{
		"etc": "dir", "usr": "dir", "usr/lib": "dir", "usr/lib/os-release": "file",
		"etc/os-release": "->../usr/lib/os-release", // Debian's, relative
		"etc/abs":        "->/usr/lib/os-release",
		"etc/chain":      "->abs",
		"lib":            "->usr/lib", // a directory link in the middle of a path
		"etc/escape":     "->../../../../usr/lib/os-release",
		"etc/proc":       "->/proc/self/mounts",
		"loop1":          "->loop2", "loop2": "->loop1",
	}
	for name, want := range map[string]string{
		"etc/os-release": "usr/lib/os-release", "etc/abs": "usr/lib/os-release", "etc/chain": "usr/lib/os-release",
		"lib/os-release": "usr/lib/os-release", "etc/escape": "usr/lib/os-release", "etc/../etc/os-release": "usr/lib/os-release",
		".": ".", "usr/lib": "usr/lib",
	} {
		if got, err := Resolve(fsys, name); err != nil || got != want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", name, got, err, want)
		}
	}
	if _, err := Resolve(fsys, "etc/proc"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a link out of the volume: %v", err)
	}
	if _, err := Resolve(fsys, "loop1"); !errors.Is(err, ErrLoop) {
		t.Errorf("a symlink loop: %v", err)
	}
}
