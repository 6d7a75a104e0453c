package guestfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"time"
)

// extData reads file contents from an ext2/3/4 filesystem by inode
// number: extent trees (uninitialised extents read as zeros), the
// indirect blocks of ext2/3, and inline data. Written here because the
// library that reads ext4's directories and metadata (go-diskfs) reads
// sparse files wrongly — a hole makes its reader return nothing or the
// bytes before the next extent — and because reading whole extents at a
// time is what makes a restore from the chunk store fast. The same
// superblock and group descriptors give the block bitmaps free-block
// skipping needs.
type extData struct {
	s              section
	blockSize      int64
	inodeSize      int64
	inodesPerGroup uint32
	inodesCount    uint32
	blocksCount    uint64
	descSize       int64
	gdt            int64 // byte offset of the group descriptor table
}

func newExtData(s section) (*extData, error) {
	sb := make([]byte, 1024)
	if _, err := s.ReadAt(sb, 1024); err != nil {
		return nil, fmt.Errorf("read the superblock: %w", err)
	}
	le32 := func(o int) uint32 { return binary.LittleEndian.Uint32(sb[o:]) }
	le16 := func(o int) uint16 { return binary.LittleEndian.Uint16(sb[o:]) }
	if le16(56) != 0xef53 {
		return nil, errors.New("no ext2/3/4 superblock")
	}
	x := &extData{s: s, inodesCount: le32(0), inodesPerGroup: le32(40), inodeSize: 128, descSize: 32}
	if lg := le32(24); lg > 6 {
		return nil, fmt.Errorf("block size 2^(10+%d): damaged superblock", lg)
	} else {
		x.blockSize = 1024 << lg
	}
	x.blocksCount = uint64(le32(4))
	if le32(76) >= 1 {
		x.inodeSize = int64(le16(88))
	}
	if incompat := le32(96); incompat&0x80 != 0 { // 64bit
		x.descSize = int64(le16(254))
		x.blocksCount |= uint64(le32(0x150)) << 32
	}
	if x.inodeSize < 128 || x.inodeSize > x.blockSize || x.inodesPerGroup == 0 || x.descSize < 32 || x.descSize > 1024 {
		return nil, fmt.Errorf("superblock: inode size %d, %d inodes per group, descriptor size %d: damaged", x.inodeSize, x.inodesPerGroup, x.descSize)
	}
	x.gdt = (int64(le32(20)) + 1) * x.blockSize
	return x, nil
}

// inode reads inode ino's raw bytes.
func (x *extData) inode(ino uint32) ([]byte, error) {
	if ino == 0 || ino > x.inodesCount {
		return nil, fmt.Errorf("inode %d out of range", ino)
	}
	group, index := int64((ino-1)/x.inodesPerGroup), int64((ino-1)%x.inodesPerGroup)
	gd := make([]byte, x.descSize)
	if _, err := x.s.ReadAt(gd, x.gdt+group*x.descSize); err != nil {
		return nil, fmt.Errorf("group descriptor %d: %w", group, err)
	}
	table := int64(binary.LittleEndian.Uint32(gd[8:]))
	if x.descSize >= 64 {
		table |= int64(binary.LittleEndian.Uint32(gd[0x28:])) << 32
	}
	b := make([]byte, x.inodeSize)
	if _, err := x.s.ReadAt(b, table*x.blockSize+index*x.inodeSize); err != nil {
		return nil, fmt.Errorf("inode %d: %w", ino, err)
	}
	return b, nil
}

// extRun maps count blocks of a file from logical block logical to the
// physical block phys; phys 0 is a hole (or an uninitialised extent).
type extRun struct {
	logical, phys, count uint64
}

// extFile is a regular file's content: its size and where its blocks are
// (ext and XFS alike: runs of blocks of blockSize bytes in r).
type extFile struct {
	r         io.ReaderAt
	blockSize int64
	size      int64
	runs      []extRun // sorted by logical block, holes left out
	inline    []byte   // the whole content, for inline-data files
	pos       int64
}

const (
	extentsFlag    = 0x80000
	inlineDataFlag = 0x10000000
	maxRuns        = 1 << 20 // bounds a damaged or hostile extent tree
)

// open maps inode ino's content.
func (x *extData) open(ino uint32) (*extFile, error) {
	in, err := x.inode(ino)
	if err != nil {
		return nil, err
	}
	size := int64(binary.LittleEndian.Uint32(in[4:])) | int64(binary.LittleEndian.Uint32(in[108:]))<<32
	if size < 0 {
		return nil, fmt.Errorf("inode %d: size %d", ino, size)
	}
	f := &extFile{r: x.s, blockSize: x.blockSize, size: size}
	flags := binary.LittleEndian.Uint32(in[32:])
	iblock := in[40:100]
	switch {
	case flags&inlineDataFlag != 0:
		f.inline, err = x.inlineData(in, iblock, size)
	case flags&extentsFlag != 0:
		err = x.extents(iblock, 0, &f.runs)
	default:
		err = x.indirect(iblock, size, &f.runs)
	}
	if err != nil {
		return nil, fmt.Errorf("inode %d: %w", ino, err)
	}
	if err := f.sortRuns(); err != nil {
		return nil, fmt.Errorf("inode %d: %w", ino, err)
	}
	return f, nil
}

// extents walks an extent tree node (the inode's i_block, or a block).
func (x *extData) extents(node []byte, depth int, runs *[]extRun) error {
	if depth > 5 {
		return errors.New("extent tree deeper than 5")
	}
	if len(node) < 12 || binary.LittleEndian.Uint16(node) != 0xf30a {
		return errors.New("bad extent header")
	}
	entries, level := int(binary.LittleEndian.Uint16(node[2:])), binary.LittleEndian.Uint16(node[6:])
	if 12+entries*12 > len(node) {
		return fmt.Errorf("extent node of %d entries in %d bytes", entries, len(node))
	}
	for i := 0; i < entries; i++ {
		e := node[12+i*12:]
		if level == 0 {
			l := uint64(binary.LittleEndian.Uint16(e[4:]))
			phys := uint64(binary.LittleEndian.Uint16(e[6:]))<<32 | uint64(binary.LittleEndian.Uint32(e[8:]))
			if l > 32768 {
				continue // uninitialised: reads as zeros
			}
			if phys+l > x.blocksCount {
				return fmt.Errorf("extent at block %d past the filesystem's %d blocks", phys, x.blocksCount)
			}
			if len(*runs) >= maxRuns {
				return errors.New("too many extents")
			}
			*runs = append(*runs, extRun{logical: uint64(binary.LittleEndian.Uint32(e)), phys: phys, count: l})
			continue
		}
		leaf := uint64(binary.LittleEndian.Uint16(e[8:]))<<32 | uint64(binary.LittleEndian.Uint32(e[4:]))
		if leaf >= x.blocksCount {
			return fmt.Errorf("extent index to block %d past the filesystem", leaf)
		}
		b := make([]byte, x.blockSize)
		if _, err := x.s.ReadAt(b, int64(leaf)*x.blockSize); err != nil {
			return err
		}
		if err := x.extents(b, depth+1, runs); err != nil {
			return err
		}
	}
	return nil
}

// indirect maps an ext2/3 file: 12 direct blocks, then single, double
// and triple indirect blocks; consecutive blocks are joined into runs.
func (x *extData) indirect(iblock []byte, size int64, runs *[]extRun) error {
	blocks := uint64((size + x.blockSize - 1) / x.blockSize)
	per := uint64(x.blockSize / 4)
	var logical uint64
	add := func(phys uint64) error {
		defer func() { logical++ }()
		if phys == 0 {
			return nil
		}
		if phys >= x.blocksCount {
			return fmt.Errorf("block pointer %d past the filesystem", phys)
		}
		if n := len(*runs); n > 0 && (*runs)[n-1].logical+(*runs)[n-1].count == logical && (*runs)[n-1].phys+(*runs)[n-1].count == phys {
			(*runs)[n-1].count++
			return nil
		}
		if len(*runs) >= maxRuns {
			return errors.New("too many runs")
		}
		*runs = append(*runs, extRun{logical: logical, phys: phys, count: 1})
		return nil
	}
	var walk func(block uint64, level int) error
	walk = func(block uint64, level int) error {
		if block == 0 { // a hole of per^level blocks
			n := uint64(1)
			for i := 0; i < level; i++ {
				n *= per
			}
			logical += n
			return nil
		}
		if block >= x.blocksCount {
			return fmt.Errorf("indirect block %d past the filesystem", block)
		}
		b := make([]byte, x.blockSize)
		if _, err := x.s.ReadAt(b, int64(block)*x.blockSize); err != nil {
			return err
		}
		for i := uint64(0); i < per && logical < blocks; i++ {
			p := uint64(binary.LittleEndian.Uint32(b[i*4:]))
			var err error
			if level == 1 {
				err = add(p)
			} else {
				err = walk(p, level-1)
			}
			if err != nil {
				return err
			}
		}
		return nil
	}
	for i := 0; i < 15 && logical < blocks; i++ {
		p := uint64(binary.LittleEndian.Uint32(iblock[i*4:]))
		var err error
		if i < 12 {
			err = add(p)
		} else {
			err = walk(p, i-11)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// inlineData reads a file stored in its inode: the first 60 bytes in
// i_block, the rest in the in-inode extended attribute system.data.
func (x *extData) inlineData(in, iblock []byte, size int64) ([]byte, error) {
	if size <= 60 {
		return append([]byte(nil), iblock[:size]...), nil
	}
	out := append([]byte(nil), iblock...)
	extra := int64(binary.LittleEndian.Uint16(in[128:]))
	start := 128 + extra
	if start+4 > int64(len(in)) || binary.LittleEndian.Uint32(in[start:]) != 0xea020000 {
		return nil, errors.New("inline data without its extended attribute")
	}
	first := start + 4
	for e := first; e+16 <= int64(len(in)); {
		nameLen, index := int64(in[e]), in[e+1]
		if nameLen == 0 {
			break
		}
		valOff, valSize := int64(binary.LittleEndian.Uint16(in[e+2:])), int64(binary.LittleEndian.Uint32(in[e+8:]))
		if e+16+nameLen > int64(len(in)) {
			break
		}
		if index == 7 && string(in[e+16:e+16+nameLen]) == "data" {
			if first+valOff+valSize > int64(len(in)) {
				return nil, errors.New("inline data attribute past the inode")
			}
			out = append(out, in[first+valOff:first+valOff+valSize]...)
			break
		}
		e += (16 + nameLen + 3) &^ 3
	}
	if int64(len(out)) < size {
		return nil, fmt.Errorf("inline data holds %d of %d bytes", len(out), size)
	}
	return out[:size], nil
}

// sortRuns orders the runs and refuses overlapping ones (a damaged map).
func (f *extFile) sortRuns() error {
	sort.Slice(f.runs, func(i, j int) bool { return f.runs[i].logical < f.runs[j].logical })
	for i := 1; i < len(f.runs); i++ {
		if prev := f.runs[i-1]; prev.logical+prev.count > f.runs[i].logical || prev.logical+prev.count < prev.logical {
			return fmt.Errorf("extents overlap at block %d: damaged", f.runs[i].logical)
		}
	}
	return nil
}

// ReadAt reads the file's bytes at off; holes read as zeros.
func (f *extFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= f.size {
		return 0, io.EOF
	}
	n := len(p)
	eof := false
	if int64(n) > f.size-off {
		n, eof = int(f.size-off), true
	}
	p = p[:n]
	if f.inline != nil {
		copy(p, f.inline[off:])
	} else {
		clear(p)
		bs := uint64(f.blockSize)
		first, last := uint64(off)/bs, (uint64(off)+uint64(n)-1)/bs
		i := sort.Search(len(f.runs), func(i int) bool { return f.runs[i].logical+f.runs[i].count > first })
		for ; i < len(f.runs) && f.runs[i].logical <= last; i++ {
			r := f.runs[i]
			lo, hi := max(r.logical, first), min(r.logical+r.count-1, last)
			// The bytes of p this run covers, and where they are on disk.
			from, to := max(int64(lo*bs), off), min(int64((hi+1)*bs), off+int64(n))
			disk := int64((r.phys+(uint64(from)/bs-r.logical))*bs) + from%int64(bs)
			if _, err := f.r.ReadAt(p[from-off:to-off], disk); err != nil {
				return 0, fmt.Errorf("read blocks at %d: %w", disk, err)
			}
		}
	}
	if eof {
		return n, io.EOF
	}
	return n, nil
}

func (f *extFile) Read(p []byte) (int, error) {
	n, err := f.ReadAt(p, f.pos)
	f.pos += int64(n)
	if errors.Is(err, io.EOF) && n > 0 {
		err = nil
	}
	return n, err
}

func (f *extFile) Close() error { return nil }

// stat fills e's mode, owner, size and modification time from inode ino
// (the directory listing of the library gives the type bits only).
func (x *extData) stat(ino uint32, e *Entry) error {
	in, err := x.inode(ino)
	if err != nil {
		return err
	}
	le16 := func(o int) uint32 { return uint32(binary.LittleEndian.Uint16(in[o:])) }
	le32 := func(o int) uint32 { return binary.LittleEndian.Uint32(in[o:]) }
	m := unixMode(le16(0))
	e.Mode = m
	e.UID, e.GID, e.HasOwner = le16(2)|le16(0x78)<<16, le16(0x18)|le16(0x7a)<<16, true
	if m.IsRegular() {
		e.Size = int64(le32(4)) | int64(le32(108))<<32
	}
	if m&fs.ModeDevice != 0 {
		// i_block[0] holds an old-style 16-bit number, else i_block[1] the
		// new encoding (Linux's old_/new_decode_dev).
		if old := le32(0x28); old != 0 {
			e.Major, e.Minor = old>>8&0xff, old&0xff
		} else {
			dev := le32(0x2c)
			e.Major, e.Minor = dev&0xfff00>>8, dev&0xff|dev>>12&0xfff00
		}
	}
	sec, nsec := int64(int32(le32(0x10))), int64(0)
	// Large inodes carry nanoseconds and two more bits of seconds.
	if x.inodeSize > 128 && 128+int64(le16(128)) >= 0x8c {
		extra := le32(0x88)
		sec += int64(extra&3) << 32
		nsec = int64(extra >> 2)
	}
	e.ModTime = time.Unix(sec, nsec).UTC()
	return nil
}
