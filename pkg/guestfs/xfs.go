package guestfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
	"time"
)

// xfsFS reads XFS (v4 and v5): inodes, directories in every format
// (short form, block, leaf and node — their data blocks), symlinks (inline
// and remote), and file data through extent lists and B+trees; unwritten
// extents read as zeros. Written here: the Go XFS reader on the module
// proxy (the one Trivy uses) exposes neither owners nor symlink targets
// and reads files a block at a time through a per-block map.
type xfsFS struct {
	s                              section
	blockSize, agBlocks, inodeSize int64
	agBlkLog, inoPBLog             uint
	dirBlkSize                     int64
	v5, ftype, bigtime             bool
	root                           uint64

	// dirs caches directory listings by inode: a get of a directory of
	// n files looks each one up by path (bounded: dropped when full).
	// An FS is used by one goroutine at a time.
	dirs map[uint64][]xfsDirent
}

var be = binary.BigEndian

func openXFS(s section) (*xfsFS, error) {
	sb := make([]byte, 512)
	if _, err := s.ReadAt(sb, 0); err != nil {
		return nil, fmt.Errorf("superblock: %w", err)
	}
	if string(sb[:4]) != "XFSB" {
		return nil, errors.New("no XFS superblock")
	}
	x := &xfsFS{s: s, blockSize: int64(be.Uint32(sb[4:])), root: be.Uint64(sb[56:]), agBlocks: int64(be.Uint32(sb[84:])),
		inodeSize: int64(be.Uint16(sb[104:])), agBlkLog: uint(sb[124]), inoPBLog: uint(sb[123])}
	version := be.Uint16(sb[100:]) & 0xf
	x.v5 = version == 5
	if x.v5 {
		incompat := be.Uint32(sb[216:])
		x.ftype, x.bigtime = incompat&0x1 != 0, incompat&0x8 != 0
	} else if be.Uint16(sb[100:])&0x8000 != 0 { // MOREBITS: features2
		x.ftype = be.Uint32(sb[200:])&0x200 != 0
	}
	x.dirBlkSize = x.blockSize << sb[192]
	if x.blockSize < 512 || x.blockSize > 65536 || x.inodeSize < 256 || x.inodeSize > x.blockSize || x.agBlocks <= 0 ||
		x.agBlkLog > 40 || x.inoPBLog > 8 || x.dirBlkSize > 1<<20 {
		return nil, fmt.Errorf("superblock: block %d, inode %d, %d blocks per AG: damaged", x.blockSize, x.inodeSize, x.agBlocks)
	}
	return x, nil
}

// fsbOffset turns a filesystem block number (AG number, block in AG)
// into a byte offset of the volume.
func (x *xfsFS) fsbOffset(fsb uint64) int64 {
	ag, bno := fsb>>x.agBlkLog, fsb&(1<<x.agBlkLog-1)
	return (int64(ag)*x.agBlocks + int64(bno)) * x.blockSize
}

// xfsInode is a parsed inode: its core fields and its data fork.
type xfsInode struct {
	ino      uint64
	mode     uint16
	format   uint8
	uid, gid uint32
	size     int64
	mtime    time.Time
	nextents uint32
	fork     []byte
}

func (x *xfsFS) inode(ino uint64) (*xfsInode, error) {
	agno := ino >> (x.agBlkLog + x.inoPBLog)
	agino := ino & (1<<(x.agBlkLog+x.inoPBLog) - 1)
	off := (int64(agno)*x.agBlocks+int64(agino>>x.inoPBLog))*x.blockSize + int64(agino&(1<<x.inoPBLog-1))*x.inodeSize
	if off < 0 || off+x.inodeSize > x.s.len {
		return nil, fmt.Errorf("inode %d outside the volume", ino)
	}
	b := make([]byte, x.inodeSize)
	if _, err := x.s.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("inode %d: %w", ino, err)
	}
	if string(b[:2]) != "IN" {
		return nil, fmt.Errorf("inode %d: bad magic", ino)
	}
	in := &xfsInode{ino: ino, mode: be.Uint16(b[2:]), format: b[5], uid: be.Uint32(b[8:]), gid: be.Uint32(b[12:]),
		size: int64(be.Uint64(b[56:])), nextents: be.Uint32(b[76:])}
	core := int64(100)
	if b[4] == 3 {
		core = 176
	}
	forkEnd := x.inodeSize
	if fo := int64(b[82]); fo != 0 {
		forkEnd = min(forkEnd, core+fo*8)
	}
	in.fork = b[core:forkEnd]
	ts := be.Uint64(b[40:])
	if x.bigtime && b[4] == 3 && be.Uint64(b[120:])&0x8 != 0 { // inode flag2 BIGTIME
		in.mtime = time.Unix(int64(ts/1e9)-1<<31, int64(ts%1e9)).UTC()
	} else {
		in.mtime = time.Unix(int64(int32(ts>>32)), int64(uint32(ts))).UTC()
	}
	if in.size < 0 {
		return nil, fmt.Errorf("inode %d: size %d", ino, in.size)
	}
	return in, nil
}

// runs maps an extent-list or B+tree data fork into runs of volume
// blocks (physical = byte offset / blockSize); unwritten extents are holes.
func (x *xfsFS) runs(in *xfsInode) ([]extRun, error) {
	var out []extRun
	add := func(rec []byte) error {
		hi, lo := be.Uint64(rec), be.Uint64(rec[8:])
		unwritten := hi>>63 != 0
		startoff := (hi >> 9) & (1<<54 - 1)
		startblock := (hi&0x1ff)<<43 | lo>>21
		count := lo & (1<<21 - 1)
		if unwritten || count == 0 {
			return nil
		}
		phys := x.fsbOffset(startblock)
		if phys < 0 || phys+int64(count)*x.blockSize > x.s.len {
			return fmt.Errorf("extent at block %d outside the volume", startblock)
		}
		if len(out) >= maxRuns {
			return errors.New("too many extents")
		}
		out = append(out, extRun{logical: startoff, phys: uint64(phys / x.blockSize), count: count})
		return nil
	}
	switch in.format {
	case 2: // extents
		if int64(in.nextents)*16 > int64(len(in.fork)) {
			return nil, fmt.Errorf("inode %d: %d extents in a %d-byte fork", in.ino, in.nextents, len(in.fork))
		}
		for i := 0; i < int(in.nextents); i++ {
			if err := add(in.fork[i*16:]); err != nil {
				return nil, err
			}
		}
	case 3: // B+tree: the root sits in the fork
		f := in.fork
		if len(f) < 4 {
			return nil, errors.New("btree root too small")
		}
		level, n := be.Uint16(f), int(be.Uint16(f[2:]))
		maxrecs := (len(f) - 4) / 16
		if n > maxrecs {
			return nil, fmt.Errorf("btree root of %d records, room for %d", n, maxrecs)
		}
		for i := 0; i < n; i++ {
			ptr := be.Uint64(f[4+maxrecs*8+i*8:])
			if err := x.bmbt(ptr, int(level)-1, add); err != nil {
				return nil, err
			}
		}
	default:
		return nil, fmt.Errorf("inode %d: data fork format %d", in.ino, in.format)
	}
	return out, nil
}

// bmbt walks a long-format B+tree block of the block map.
func (x *xfsFS) bmbt(fsb uint64, level int, add func([]byte) error) error {
	if level < 0 || level > 8 {
		return fmt.Errorf("btree level %d", level)
	}
	b := make([]byte, x.blockSize)
	if _, err := x.s.ReadAt(b, x.fsbOffset(fsb)); err != nil {
		return err
	}
	head := 24
	if x.v5 {
		head = 72
	}
	if m := string(b[:4]); m != "BMA3" && m != "BMAP" {
		return fmt.Errorf("btree block at %d: bad magic", fsb)
	}
	n := int(be.Uint16(b[6:]))
	if int(be.Uint16(b[4:])) != level {
		return fmt.Errorf("btree block at %d: level %d, expected %d", fsb, be.Uint16(b[4:]), level)
	}
	if level == 0 {
		if head+n*16 > len(b) {
			return errors.New("btree leaf overflows its block")
		}
		for i := 0; i < n; i++ {
			if err := add(b[head+i*16:]); err != nil {
				return err
			}
		}
		return nil
	}
	maxrecs := (len(b) - head) / 16
	if n > maxrecs {
		return errors.New("btree node overflows its block")
	}
	for i := 0; i < n; i++ {
		if err := x.bmbt(be.Uint64(b[head+maxrecs*8+i*8:]), level-1, add); err != nil {
			return err
		}
	}
	return nil
}

// content returns a reader of an inode's data fork contents.
func (x *xfsFS) content(in *xfsInode) (*extFile, error) {
	f := &extFile{r: x.s, blockSize: x.blockSize, size: in.size}
	if in.format == 1 {
		if in.size > int64(len(in.fork)) {
			return nil, fmt.Errorf("inode %d: %d bytes inline in a %d-byte fork", in.ino, in.size, len(in.fork))
		}
		f.inline = append([]byte{}, in.fork[:in.size]...)
		return f, nil
	}
	runs, err := x.runs(in)
	if err != nil {
		return nil, err
	}
	f.runs = runs
	if err := f.sortRuns(); err != nil {
		return nil, fmt.Errorf("inode %d: %w", in.ino, err)
	}
	return f, nil
}

type xfsDirent struct {
	name string
	ino  uint64
}

const xfsDirLeafOffset = 32 << 30 // directory blocks past this are index, not data

// readDir lists a directory inode (without . and ..), from the cache
// when it can.
func (x *xfsFS) readDir(in *xfsInode) ([]xfsDirent, error) {
	if d, ok := x.dirs[in.ino]; ok {
		return d, nil
	}
	d, err := x.listDir(in)
	if err != nil {
		return nil, err
	}
	if x.dirs == nil || len(x.dirs) >= 256 {
		x.dirs = map[uint64][]xfsDirent{}
	}
	x.dirs[in.ino] = d
	return d, nil
}

func (x *xfsFS) listDir(in *xfsInode) ([]xfsDirent, error) {
	var out []xfsDirent
	if in.format == 1 { // short form
		f := in.fork
		if len(f) < 2 {
			return nil, errors.New("short-form directory too small")
		}
		count, i8 := int(f[0]), f[1]
		inoLen := 4
		if i8 != 0 {
			count, inoLen = int(i8), 8
		}
		p := 2 + inoLen
		for k := 0; k < count; k++ {
			if p+3 > len(f) {
				return nil, errors.New("short-form directory entry past its fork")
			}
			n := int(f[p])
			p += 3
			end := p + n
			if x.ftype {
				end++
			}
			if end+inoLen > len(f) {
				return nil, errors.New("short-form directory entry past its fork")
			}
			name := string(f[p : p+n])
			var ino uint64
			if inoLen == 8 {
				ino = be.Uint64(f[end:])
			} else {
				ino = uint64(be.Uint32(f[end:]))
			}
			out = append(out, xfsDirent{name, ino})
			p = end + inoLen
		}
		return out, nil
	}
	data, err := x.content(in)
	if err != nil {
		return nil, err
	}
	head := int64(16)
	if x.v5 {
		head = 64
	}
	blk := make([]byte, x.dirBlkSize)
	dbs := uint64(x.dirBlkSize)
	next := uint64(0) // the first directory block not read yet
	for _, r := range data.runs {
		from := max(next, r.logical*uint64(x.blockSize)/dbs*dbs)
		for b := from; b < (r.logical+r.count)*uint64(x.blockSize) && b < xfsDirLeafOffset; b += dbs {
			next = b + dbs
			if _, err := data.ReadAt(blk, int64(b)); err != nil && !errors.Is(err, io.EOF) {
				return nil, err
			}
			magic := string(blk[:4])
			end := int64(len(blk))
			switch magic {
			case "XDB3", "XD2B": // block form: a leaf and a tail at the end
				count := int64(be.Uint32(blk[len(blk)-8:]))
				end = int64(len(blk)) - 8 - count*8
			case "XDD3", "XD2D":
			default:
				continue
			}
			if end < head || end > int64(len(blk)) {
				return nil, errors.New("directory block tail out of range")
			}
			for p := head; p < end; {
				if be.Uint16(blk[p:]) == 0xffff { // unused space
					l := int64(be.Uint16(blk[p+2:]))
					if l < 8 || l%8 != 0 {
						return nil, errors.New("directory free space of a bad length")
					}
					p += l
					continue
				}
				if p+11 > end {
					break
				}
				ino, n := be.Uint64(blk[p:]), int64(blk[p+8])
				l := 8 + 1 + n + 2
				if x.ftype {
					l++
				}
				l = (l + 7) &^ 7
				if n == 0 || p+l > end {
					return nil, errors.New("directory entry past its block")
				}
				if name := string(blk[p+9 : p+9+n]); name != "." && name != ".." {
					out = append(out, xfsDirent{name, ino})
				}
				p += l
			}
		}
	}
	return out, nil
}

// lookup resolves a path (no leading slash) inode by inode; symlinks on
// the way are not followed.
func (x *xfsFS) lookup(name string) (*xfsInode, error) {
	in, err := x.inode(x.root)
	if err != nil {
		return nil, err
	}
	if name == "." {
		return in, nil
	}
	for _, part := range strings.Split(path.Clean(name), "/") {
		if in.mode&0xf000 != 0x4000 {
			return nil, fmt.Errorf("%s: %w", name, fs.ErrNotExist)
		}
		ents, err := x.readDir(in)
		if err != nil {
			return nil, err
		}
		found := false
		for _, e := range ents {
			if e.name == part {
				if in, err = x.inode(e.ino); err != nil {
					return nil, err
				}
				found = true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("%s: %w", name, fs.ErrNotExist)
		}
	}
	return in, nil
}

func (x *xfsFS) entry(name string, in *xfsInode) (Entry, error) {
	e := Entry{Name: name, Size: in.size, ModTime: in.mtime, HasOwner: true, UID: in.uid, GID: in.gid, ino: in.ino}
	e.Mode = unixMode(uint32(in.mode))
	if e.Mode&fs.ModeDevice != 0 && in.format == 0 && len(in.fork) >= 4 {
		// XFS_DINODE_FMT_DEV: the fork holds major<<18 | minor.
		dev := binary.BigEndian.Uint32(in.fork)
		e.Major, e.Minor = dev>>18, dev&0x3ffff
	}
	if e.Mode&fs.ModeSymlink != 0 {
		f, err := x.content(in)
		if err != nil {
			return e, err
		}
		b := make([]byte, min(in.size, 4096))
		if in.format == 1 {
			copy(b, f.inline)
		} else {
			// Remote symlink blocks carry a 56-byte header in v5.
			raw := make([]byte, x.blockSize)
			if _, err := f.ReadAt(raw, 0); err != nil && !errors.Is(err, io.EOF) {
				return e, err
			}
			if x.v5 {
				raw = raw[56:]
			}
			copy(b, raw)
		}
		e.Link = string(bytes.TrimRight(b, "\x00"))
	}
	if e.Mode.IsDir() {
		e.Size = 0
	}
	return e, nil
}

func (x *xfsFS) Lstat(name string) (e Entry, err error) {
	defer recovered(&err)
	in, err := x.lookup(name)
	if err != nil {
		return Entry{}, err
	}
	if name == "." {
		name = "/"
	}
	return x.entry(path.Base(name), in)
}

func (x *xfsFS) ReadDir(name string) (out []Entry, err error) {
	defer recovered(&err)
	in, err := x.lookup(name)
	if err != nil {
		return nil, err
	}
	if in.mode&0xf000 != 0x4000 {
		return nil, fmt.Errorf("%s: not a directory", name)
	}
	ents, err := x.readDir(in)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	for _, d := range ents {
		c, err := x.inode(d.ino)
		if err != nil {
			return nil, fmt.Errorf("%s/%s: %w", name, d.name, err)
		}
		e, err := x.entry(d.name, c)
		if err != nil {
			return nil, fmt.Errorf("%s/%s: %w", name, d.name, err)
		}
		out = append(out, e)
	}
	return out, nil
}

func (x *xfsFS) Open(name string) (r io.ReadCloser, err error) {
	defer recovered(&err)
	in, err := x.lookup(name)
	if err != nil {
		return nil, err
	}
	return x.open(name, in)
}

func (x *xfsFS) openEntry(name string, e Entry) (r io.ReadCloser, err error) {
	defer recovered(&err)
	in, err := x.inode(e.ino)
	if err != nil {
		return nil, err
	}
	return x.open(name, in)
}

func (x *xfsFS) open(name string, in *xfsInode) (io.ReadCloser, error) {
	if in.mode&0xf000 != 0x8000 {
		return nil, fmt.Errorf("%s is not a regular file", name)
	}
	f, err := x.content(in)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return f, nil
}

// unixMode turns st_mode bits into an fs.FileMode.
func unixMode(mode uint32) fs.FileMode {
	m := fs.FileMode(mode & 0o777)
	if mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	switch mode & 0xf000 {
	case 0x4000:
		m |= fs.ModeDir
	case 0xa000:
		m |= fs.ModeSymlink
	case 0x2000:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case 0x6000:
		m |= fs.ModeDevice
	case 0x1000:
		m |= fs.ModeNamedPipe
	case 0xc000:
		m |= fs.ModeSocket
	case 0x8000:
	default:
		m |= fs.ModeIrregular
	}
	return m
}
