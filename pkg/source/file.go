package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// File is a raw image file or block device.
type File struct {
	f    *os.File
	size int64
}

// OpenFile opens a raw image or block device read-only.
func OpenFile(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open disk image: %w", err)
	}
	// Seek to the end rather than Stat: a block device stats as size 0.
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("size of %s: %w", path, err)
	}
	if size == 0 {
		f.Close()
		return nil, fmt.Errorf("disk image %s is empty", path)
	}
	return &File{f: f, size: size}, nil
}

func (d *File) Size() int64 { return d.size }

func (d *File) ReadAt(p []byte, off int64) (int, error) { return d.f.ReadAt(p, off) }

func (d *File) Close() error { return d.f.Close() }

// ChangedExtents: a file keeps no change history, so only since == "" is
// answered, with the allocated extents (SEEK_DATA/SEEK_HOLE; the whole file
// where the filesystem cannot tell).
func (d *File) ChangedExtents(ctx context.Context, since ChangeID) ([]Extent, ChangeID, error) {
	if since != "" {
		return nil, "", ErrNoChangeTracking
	}
	var out []Extent
	fd := int(d.f.Fd())
	for off := int64(0); off < d.size; {
		if err := ctx.Err(); err != nil {
			return nil, "", err
		}
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, syscall.ENXIO) {
			break // no data after off
		}
		if err != nil {
			return []Extent{{0, d.size}}, "", nil
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			hole = d.size
		}
		out = append(out, Extent{data, min(hole, d.size) - data})
		off = hole
	}
	return out, "", nil
}
