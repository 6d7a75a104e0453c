package guestfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-backup/strata/pkg/chunk"
)

// GetOptions tune Get.
type GetOptions struct {
	// Owners sets each file's owner from the image (needs root).
	Owners bool
	// Overwrite replaces files and symlinks already at a target (never a
	// directory: its contents are merged, as always).
	Overwrite bool
	// Devices recreates device nodes and FIFOs (needs root) instead of
	// skipping them; sockets are always skipped.
	Devices bool
	// Progress, if set, is called after each file with the bytes so far.
	Progress func(files int, bytes int64)
}

// GetStats is what Get wrote.
type GetStats struct {
	Files, Dirs, Links int
	// Nodes: device nodes and FIFOs recreated (Devices).
	Nodes int
	Bytes int64
	// Refused lists what was not written, and why (hostile names,
	// symlinks leading out of the tree, a name taken).
	Refused []string
	// Skipped lists special files (devices, FIFOs, sockets): there is
	// nothing in them to restore, so they are not a failure.
	Skipped []string
}

// Get copies name (a file, a symlink or a whole directory, recursively)
// from fsys into the directory dir, keeping modes, modification times and
// symlinks; runs of zero bytes become holes. Nothing is ever written
// outside dir: names from the image are single path elements, directories
// are created (never followed if something else is there), files are
// created exclusively without following links, and a relative symlink
// whose target climbs out of the tree being written is refused.
func Get(fsys FS, name, dir string, opt GetOptions) (GetStats, error) {
	var st GetStats
	root, err := filepath.Abs(dir)
	if err != nil {
		return st, err
	}
	if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
		return st, fmt.Errorf("--to %s: not a directory", dir)
	}
	e, err := fsys.Lstat(name)
	if err != nil {
		return st, err
	}
	base := path.Base(name)
	if name == "." {
		base = "."
	}
	g := getter{fsys: fsys, root: root, opt: opt, st: &st, dirTimes: map[string]time.Time{}}
	if base == "." {
		// The volume's root: its contents go straight into dir.
		err = g.dir(name, root, ".")
	} else {
		err = g.one(name, e, root, base)
	}
	// Directory times last: writing into a directory changes its mtime.
	for p, t := range g.dirTimes {
		os.Chtimes(p, t, t)
	}
	return st, err
}

type getter struct {
	fsys     FS
	root     string
	opt      GetOptions
	st       *GetStats
	dirTimes map[string]time.Time
	buf      []byte // one copy buffer for every file: a tree of small files is not a GB of allocations
}

// one writes the entry e (at src in the image) as dst/elem; rel is its
// path relative to the tree's top, for symlink checks.
func (g *getter) one(src string, e Entry, dst, elem string) error {
	if elem == "" || elem == "." || elem == ".." || strings.ContainsAny(elem, "/\x00") {
		g.st.Refused = append(g.st.Refused, fmt.Sprintf("%s: hostile name %q", src, elem))
		return nil
	}
	target := filepath.Join(dst, elem)
	rel, _ := filepath.Rel(g.root, target)
	switch {
	case e.Mode.IsDir():
		if err := os.Mkdir(target, 0o700); err != nil {
			if !errors.Is(err, fs.ErrExist) {
				return err
			}
			// Only a directory this run made, never a link planted by an
			// earlier entry of the same name.
			if fi, lerr := os.Lstat(target); lerr != nil || !fi.IsDir() {
				g.st.Refused = append(g.st.Refused, fmt.Sprintf("%s: a non-directory of that name was written already", src))
				return nil
			}
		}
		if err := g.dir(src, target, rel); err != nil {
			return err
		}
		g.finish(target, e)
		g.dirTimes[target] = e.ModTime
		g.st.Dirs++
	case e.Mode&fs.ModeSymlink != 0:
		if escapes(rel, e.Link) {
			g.st.Refused = append(g.st.Refused, fmt.Sprintf("%s: symlink to %q leads out of the tree written", src, e.Link))
			return nil
		}
		err := os.Symlink(e.Link, target)
		if errors.Is(err, fs.ErrExist) && g.replace(target) {
			err = os.Symlink(e.Link, target)
		}
		if err != nil {
			return err
		}
		if g.opt.Owners && e.HasOwner {
			os.Lchown(target, int(e.UID), int(e.GID))
		}
		ts := syscall.NsecToTimespec(e.ModTime.UnixNano())
		utimesNanoAt(target, []syscall.Timespec{ts, ts})
		g.st.Links++
	case e.Mode.IsRegular():
		if err := g.file(src, e, target); err != nil {
			return err
		}
		g.finish(target, e)
		os.Chtimes(target, e.ModTime, e.ModTime)
		g.st.Files++
		if g.opt.Progress != nil {
			g.opt.Progress(g.st.Files, g.st.Bytes)
		}
	case g.opt.Devices && e.Mode&(fs.ModeDevice|fs.ModeNamedPipe) != 0:
		if err := g.node(e, target); err != nil {
			return fmt.Errorf("%s: %w", src, err)
		}
		g.finish(target, e)
		os.Chtimes(target, e.ModTime, e.ModTime)
		g.st.Nodes++
	default:
		g.st.Skipped = append(g.st.Skipped, fmt.Sprintf("%s: %s", src, kind(e.Mode)))
	}
	return nil
}

// node makes a device node or FIFO like e at target.
func (g *getter) node(e Entry, target string) error {
	mode := uint32(e.Mode.Perm())
	switch {
	case e.Mode&fs.ModeNamedPipe != 0:
		mode |= syscall.S_IFIFO
	case e.Mode&fs.ModeCharDevice != 0:
		mode |= syscall.S_IFCHR
	default:
		mode |= syscall.S_IFBLK
	}
	dev := unix.Mkdev(e.Major, e.Minor)
	err := syscall.Mknod(target, mode, int(dev))
	if errors.Is(err, fs.ErrExist) && g.replace(target) {
		err = syscall.Mknod(target, mode, int(dev))
	}
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s exists (--force replaces it)", target)
	}
	return err
}

// kind names a special file's type.
func kind(m fs.FileMode) string {
	switch {
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	case m&fs.ModeNamedPipe != 0:
		return "FIFO"
	case m&fs.ModeSocket != 0:
		return "socket"
	}
	return "special file " + m.Type().String()
}

// replace removes what is at target so that it can be written again, when
// Overwrite allows and it is not a directory.
func (g *getter) replace(target string) bool {
	if !g.opt.Overwrite {
		return false
	}
	fi, err := os.Lstat(target)
	if err != nil || fi.IsDir() {
		return false
	}
	return os.Remove(target) == nil
}

func (g *getter) dir(src, target, rel string) error {
	entries, err := g.fsys.ReadDir(src)
	if err != nil {
		return err
	}
	for _, c := range entries {
		if err := g.one(path.Join(src, c.Name), c, target, c.Name); err != nil {
			return err
		}
	}
	return nil
}

func (g *getter) finish(target string, e Entry) {
	if g.opt.Owners && e.HasOwner {
		os.Lchown(target, int(e.UID), int(e.GID))
	}
	os.Chmod(target, e.Mode.Perm()|e.Mode&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky))
}

// file copies a regular file; all-zero blocks are skipped (holes).
func (g *getter) file(src string, e Entry, target string) error {
	var r io.ReadCloser
	var err error
	if eo, ok := g.fsys.(entryOpener); ok && e.ino != 0 {
		r, err = eo.openEntry(src, e)
	} else {
		r, err = g.fsys.Open(src)
	}
	if err != nil {
		return err
	}
	defer r.Close()
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if errors.Is(err, fs.ErrExist) && g.replace(target) {
		f, err = os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	}
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s exists (--force replaces it)", target)
	}
	if err != nil {
		return err
	}
	if g.buf == nil {
		g.buf = make([]byte, 1<<20)
	}
	n, err := copySparse(f, r, g.buf)
	g.st.Bytes += n
	if err == nil && n != e.Size {
		err = fmt.Errorf("%s: read %d bytes, the file has %d", src, n, e.Size)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(target)
		return fmt.Errorf("%s: %w", src, err)
	}
	return nil
}

// copySparse copies r to f through buf, seeking over 4 KiB blocks of
// zeros so they become holes (one write per run of data blocks), and sets
// f's size at the end (a trailing hole).
func copySparse(f *os.File, r io.Reader, buf []byte) (int64, error) {
	var n int64
	for {
		k, err := io.ReadFull(r, buf)
		for off := 0; off < k; {
			end := min(k, off+4096)
			if chunk.AllZero(buf[off:end]) {
				off = end
				continue
			}
			for end < k && !chunk.AllZero(buf[end:min(k, end+4096)]) {
				end = min(k, end+4096)
			}
			if _, werr := f.WriteAt(buf[off:end], n+int64(off)); werr != nil {
				return n, werr
			}
			off = end
		}
		n += int64(k)
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return n, f.Truncate(n)
		}
		if err != nil {
			return n, err
		}
	}
}

// escapes reports whether a symlink at rel (relative to the tree's top)
// pointing to link leads above the top. Absolute targets name the guest's
// own tree and are kept as they are: they are never followed here.
func escapes(rel, link string) bool {
	if link == "" || strings.ContainsRune(link, 0) {
		return true
	}
	if path.IsAbs(link) {
		return false
	}
	p := path.Join(path.Dir(filepath.ToSlash(rel)), link)
	return p == ".." || strings.HasPrefix(p, "../")
}
