// Package guestfs reads the files inside a backed-up disk image without
// mounting anything: partition tables (GPT, MBR with logical partitions),
// then the filesystem on each volume. It reads through any io.ReaderAt —
// a backup point's restore.Reader in practice, so only the blocks a
// listing or a file needs are fetched, each checked against its id.
//
// Which library reads what: partition tables (GPT, MBR primaries) and
// ext2/3/4 and FAT12/16/32 are read by github.com/diskfs/go-diskfs; the
// MBR extended-partition chain and the filesystem detection are here (a
// few lines each). Every reader is given only its volume's byte range.
//
// Paths are /<volume>/<path inside>: /p2/etc/hostname.
package guestfs

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
	"time"
)

// Disk is a disk image read at random.
type Disk interface {
	io.ReaderAt
	Size() int64
}

// Volume is a part of a disk that may hold a filesystem.
type Volume struct {
	Name   string `json:"name"`   // p1, p2, … or disk (no partition table)
	Offset int64  `json:"offset"` // bytes from the disk's start
	Size   int64  `json:"size"`
	FS     string `json:"fs"` // ext4, ext3, ext2, vfat, xfs, ntfs, swap, LVM2_member, or "" (not recognised)
	Label  string `json:"label,omitempty"`
	UUID   string `json:"uuid,omitempty"`
	// Partition type: a GPT type GUID or an MBR type byte (hex).
	PartType string `json:"part_type,omitempty"`
	// Note says why the volume's files cannot be read, if they cannot.
	Note string `json:"note,omitempty"`

	r io.ReaderAt // a logical volume's bytes (nil: the disk's at Offset)
}

// bytes returns the volume's byte range.
func (v Volume) bytes(d Disk) section {
	if v.r != nil {
		return section{v.r, 0, v.Size}
	}
	return section{d, v.Offset, v.Size}
}

// Entry is a file, directory or link in a guest filesystem.
type Entry struct {
	Name    string      `json:"name"`
	Mode    fs.FileMode `json:"mode"` // type bits and permissions
	Size    int64       `json:"size"`
	ModTime time.Time   `json:"mtime"`
	// Owner is known on Unix filesystems (ext, XFS), not on FAT.
	HasOwner bool   `json:"-"`
	UID      uint32 `json:"uid"`
	GID      uint32 `json:"gid"`
	Link     string `json:"link,omitempty"` // a symlink's target
	// Major and Minor number a device node (ext, XFS).
	Major uint32 `json:"major,omitempty"`
	Minor uint32 `json:"minor,omitempty"`

	ino uint64 // ext, XFS: the inode, for reading the content
}

// entryOpener is an FS that opens a file from the Entry its ReadDir gave,
// without looking its path up again: a directory of n files costs n
// lookups, not n².
type entryOpener interface {
	openEntry(name string, e Entry) (io.ReadCloser, error)
}

// FS is one guest filesystem, read-only. Names are slash-separated paths
// inside it without a leading slash ("." is its root), as in io/fs. An FS
// is used by one goroutine at a time.
type FS interface {
	// Lstat describes name without following a final symlink.
	Lstat(name string) (Entry, error)
	// ReadDir lists a directory.
	ReadDir(name string) ([]Entry, error)
	// Open opens a regular file for reading.
	Open(name string) (io.ReadCloser, error)
}

// ErrNoFS is returned for a volume whose filesystem is not readable here.
var ErrNoFS = errors.New("no readable filesystem")

// Guest is a disk opened for file access: its volumes and, on demand,
// their filesystems.
type Guest struct {
	disk    Disk
	volumes []Volume
	opened  map[string]FS
}

// New finds the volumes of d.
func New(d Disk) (*Guest, error) {
	vols, err := volumes(d)
	if err != nil {
		return nil, err
	}
	return &Guest{disk: d, volumes: vols, opened: map[string]FS{}}, nil
}

// Volumes lists the disk's volumes, in disk order.
func (g *Guest) Volumes() []Volume { return g.volumes }

// Volume returns the filesystem of the named volume.
func (g *Guest) Volume(name string) (FS, error) {
	if f, ok := g.opened[name]; ok {
		return f, nil
	}
	for _, v := range g.volumes {
		if v.Name != name {
			continue
		}
		f, err := openFS(g.disk, v)
		if err != nil {
			return nil, fmt.Errorf("volume %s (%s): %w", name, cmp.Or(v.FS, "unknown filesystem"), err)
		}
		g.opened[name] = f
		return f, nil
	}
	return nil, fmt.Errorf("no volume %q on this disk (%s)", name, g.names())
}

func (g *Guest) names() string {
	var n []string
	for _, v := range g.volumes {
		n = append(n, v.Name)
	}
	if len(n) == 0 {
		return "it has none"
	}
	return "it has " + strings.Join(n, ", ")
}

// Split takes a guest path (/p2/etc/hostname, /vg0/root/etc) apart into
// the volume and the cleaned path inside it ("etc/hostname"; "." for the
// volume's root). "/" or "" is the disk itself: volume "". A volume name
// may hold a slash (VG/LV): the longest volume name that prefixes the
// path wins.
func (g *Guest) Split(p string) (volume, inside string, err error) {
	if strings.ContainsRune(p, 0) {
		return "", "", fmt.Errorf("path %q: NUL byte", p)
	}
	clean := strings.TrimPrefix(path.Clean("/"+p), "/")
	if clean == "" {
		return "", ".", nil
	}
	for _, v := range g.volumes {
		if (clean == v.Name || strings.HasPrefix(clean, v.Name+"/")) && len(v.Name) > len(volume) {
			volume = v.Name
		}
	}
	if volume == "" {
		volume, _, _ = strings.Cut(clean, "/")
		return "", "", fmt.Errorf("no volume %q on this disk (%s)", volume, g.names())
	}
	inside = strings.TrimPrefix(strings.TrimPrefix(clean, volume), "/")
	if inside == "" {
		inside = "."
	}
	return volume, inside, nil
}

// section is the byte range of one volume.
type section struct {
	r        io.ReaderAt
	off, len int64
}

func (s section) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= s.len {
		return 0, io.EOF
	}
	n := int64(len(p))
	if n > s.len-off {
		n = s.len - off
	}
	k, err := s.r.ReadAt(p[:n], s.off+off)
	if err == nil && int64(k) < int64(len(p)) {
		err = io.EOF
	}
	return k, err
}
