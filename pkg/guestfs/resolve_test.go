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
	"testing"
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
		return Entry{Name: path.Base(name), Mode: fs.ModeDevice | fs.ModeCharDevice | 0o600}, nil
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
