package guestfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/diskfs/go-diskfs/backend"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/ext4"
	"github.com/diskfs/go-diskfs/filesystem/fat12"
	"github.com/diskfs/go-diskfs/filesystem/fat16"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
)

// openFS opens the filesystem of v, reading only v's byte range.
func openFS(d Disk, v Volume) (f FS, err error) {
	// The readers are not ours: a damaged filesystem must give an error
	// naming the volume, never take the process down.
	defer func() {
		if r := recover(); r != nil {
			f, err = nil, fmt.Errorf("damaged filesystem (the reader failed: %v)", r)
		}
	}()
	if v.Note != "" && v.FS == "" {
		return nil, fmt.Errorf("%w: %s", ErrNoFS, v.Note)
	}
	st := newStorage(v.bytes(d))
	switch v.FS {
	case "ext2", "ext3", "ext4":
		x, err := ext4.Read(st, v.Size, 0, sector)
		if err != nil {
			return nil, err
		}
		data, err := newExtData(v.bytes(d))
		if err != nil {
			return nil, err
		}
		return diskfsFS{fsys: x, ext: data}, nil
	case "vfat":
		head := make([]byte, sector)
		if _, err := st.ReadAt(head, 0); err != nil {
			return nil, err
		}
		var x filesystem.FileSystem
		switch {
		case string(head[82:87]) == "FAT32":
			x, err = fat32.Read(st, v.Size, 0, sector)
		case string(head[54:59]) == "FAT12":
			x, err = fat12.Read(st, v.Size, 0, sector)
		default:
			x, err = fat16.Read(st, v.Size, 0, sector)
		}
		if err != nil {
			return nil, err
		}
		return diskfsFS{fsys: x}, nil
	case "ntfs":
		return openNTFS(v.bytes(d))
	case "xfs":
		x, err := openXFS(v.bytes(d))
		if err != nil {
			return nil, err
		}
		return x, nil
	case "":
		return nil, ErrNoFS
	}
	return nil, fmt.Errorf("%w: %s is not supported yet", ErrNoFS, v.FS)
}

// diskfsFS adapts a go-diskfs filesystem (io/fs style) to FS; on ext2/3/4
// file contents are read by extData instead (see there).
type diskfsFS struct {
	fsys filesystem.FileSystem
	ext  *extData
}

func (d diskfsFS) Lstat(name string) (e Entry, err error) {
	defer recovered(&err)
	if name == "." {
		return Entry{Name: "/", Mode: fs.ModeDir | 0o755}, nil
	}
	fi, err := d.fsys.Stat(name)
	if err != nil {
		return Entry{}, notExist(name, err)
	}
	return d.entry(fi)
}

func (d diskfsFS) ReadDir(name string) (out []Entry, err error) {
	defer recovered(&err)
	des, err := d.fsys.ReadDir(name)
	if err != nil {
		return nil, notExist(name, err)
	}
	out = make([]Entry, 0, len(des))
	for _, de := range des {
		fi, err := de.Info()
		if err != nil {
			return nil, fmt.Errorf("%s/%s: %w", name, de.Name(), err)
		}
		e, err := d.entry(fi)
		if err != nil {
			return nil, fmt.Errorf("%s/%s: %w", name, de.Name(), err)
		}
		out = append(out, e)
	}
	return out, nil
}

func (d diskfsFS) Open(name string) (r io.ReadCloser, err error) {
	defer recovered(&err)
	e, err := d.Lstat(name)
	if err != nil {
		return nil, err
	}
	if !e.Mode.IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s)", name, e.Mode.Type())
	}
	return d.openEntry(name, e)
}

func (d diskfsFS) openEntry(name string, e Entry) (r io.ReadCloser, err error) {
	defer recovered(&err)
	if d.ext != nil && e.ino != 0 && e.ino <= 1<<32-1 {
		f, err := d.ext.open(uint32(e.ino))
		if err == nil && f.size != e.Size {
			err = fmt.Errorf("inode %d: %d bytes, its directory entry says %d", e.ino, f.size, e.Size)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		return f, nil
	}
	f, err := d.fsys.OpenFile(name, os.O_RDONLY)
	if err != nil {
		return nil, err
	}
	return safeReader{f}, nil
}

// safeReader turns a panic of a library's file reader (a damaged
// filesystem) into an error.
type safeReader struct{ r io.ReadCloser }

func (s safeReader) Read(p []byte) (n int, err error) {
	defer recovered(&err)
	return s.r.Read(p)
}

func (s safeReader) Close() error { return s.r.Close() }

func (d diskfsFS) entry(fi fs.FileInfo) (Entry, error) {
	e := entry(fi)
	if d.ext != nil && e.ino != 0 && e.ino <= 1<<32-1 {
		if err := d.ext.stat(uint32(e.ino), &e); err != nil {
			return e, err
		}
		if e.Mode&fs.ModeSymlink != 0 {
			e.Size = int64(len(e.Link))
		}
	}
	return e, nil
}

func entry(fi fs.FileInfo) Entry {
	e := Entry{Name: fi.Name(), Mode: fi.Mode(), Size: fi.Size(), ModTime: fi.ModTime()}
	if fi.IsDir() {
		e.Mode |= fs.ModeDir
	}
	if st, ok := fi.Sys().(*ext4.StatT); ok && st != nil {
		e.HasOwner, e.UID, e.GID, e.Link, e.ino = true, st.UID, st.GID, st.LinkTarget, uint64(st.Ino)
	}
	if e.Mode&fs.ModeSymlink != 0 {
		e.Size = int64(len(e.Link))
	}
	return e
}

func notExist(name string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", name, fs.ErrNotExist)
	}
	return fmt.Errorf("%s: %w", name, err)
}

func recovered(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("damaged filesystem (the reader failed: %v)", r)
	}
}

// storage presents a byte range as the backend go-diskfs reads from.
type storage struct {
	s   section
	pos int64
}

func newStorage(s section) *storage { return &storage{s: s} }

var _ backend.Storage = (*storage)(nil)

func (s *storage) ReadAt(p []byte, off int64) (int, error) { return s.s.ReadAt(p, off) }
func (s *storage) Read(p []byte) (int, error) {
	n, err := s.s.ReadAt(p, s.pos)
	s.pos += int64(n)
	return n, err
}
func (s *storage) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += s.pos
	case io.SeekEnd:
		off += s.s.len
	default:
		return 0, fmt.Errorf("seek: whence %d", whence)
	}
	if off < 0 {
		return 0, errors.New("seek before the start")
	}
	s.pos = off
	return off, nil
}
func (s *storage) Stat() (fs.FileInfo, error)              { return sizeInfo(s.s.len), nil }
func (s *storage) Close() error                            { return nil }
func (s *storage) Sys() (*os.File, error)                  { return nil, backend.ErrNotSuitable }
func (s *storage) Writable() (backend.WritableFile, error) { return nil, backend.ErrIncorrectOpenMode }
func (s *storage) Path() string                            { return "" }

type sizeInfo int64

func (n sizeInfo) Name() string       { return "disk" }
func (n sizeInfo) Size() int64        { return int64(n) }
func (n sizeInfo) Mode() fs.FileMode  { return 0o400 }
func (n sizeInfo) ModTime() time.Time { return time.Time{} }
func (n sizeInfo) IsDir() bool        { return false }
func (n sizeInfo) Sys() any           { return nil }
