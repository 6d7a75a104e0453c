package guestfs

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"

	"github.com/strata-backup/strata/pkg/source"
)

// Extent is a byte range of a disk.
type Extent struct {
	Offset, Length int64
}

// addExtent appends e to the sorted list, merged with the last extent
// when they touch.
func addExtent(list []Extent, e Extent) []Extent {
	if k := len(list); k > 0 && list[k-1].Offset+list[k-1].Length == e.Offset {
		list[k-1].Length += e.Length
		return list
	}
	return append(list, e)
}

// FreeReport is what FreeExtents found: the byte ranges of the disk that
// filesystems mark free, and per volume what was understood.
type FreeReport struct {
	Free  []Extent // sorted, disjoint
	Bytes int64    // their total
	// Volumes says per volume how much was found free, or why none was
	// (an unknown filesystem, a journal that needs recovery, …).
	Volumes []string
}

// FreeExtents reads the allocation bitmaps of the filesystems on d and
// returns the ranges they mark free. Only what is certain is reported: a
// volume whose filesystem is not understood, is damaged, or has a journal
// still to replay (blocks it allocated may be marked free on disk) counts
// as fully used. Supported: ext2/3/4, XFS and NTFS on partitions, the
// whole disk or LVM2 logical volumes (linear and striped) whose physical
// volumes are on d.
func FreeExtents(d Disk) (FreeReport, error) {
	var rep FreeReport
	vols, err := volumes(d)
	if err != nil {
		return rep, err
	}
	for _, v := range vols {
		var read func(section) ([]Extent, error)
		switch v.FS {
		case "ext2", "ext3", "ext4":
			read = extFree
		case "ntfs":
			read = ntfsFree
		case "xfs":
			read = xfsFree
		}
		if read == nil {
			rep.Volumes = append(rep.Volumes, fmt.Sprintf("%s (%s): read in full", v.Name, cmp.Or(v.FS, "unknown")))
			continue
		}
		vol, toDisk := section{d, v.Offset, v.Size}, func(e Extent) ([]Extent, error) {
			return []Extent{{v.Offset + e.Offset, e.Length}}, nil
		}
		if v.r != nil {
			lv, ok := v.r.(*lvMap)
			if !ok {
				rep.Volumes = append(rep.Volumes, fmt.Sprintf("%s (%s): read in full", v.Name, v.FS))
				continue
			}
			vol, toDisk = section{lv, 0, v.Size}, func(e Extent) ([]Extent, error) { return lv.onDisk(e) }
		}
		free, err := read(vol)
		var mapped []Extent
		n := int64(0)
		for _, e := range free {
			on, merr := toDisk(e)
			if merr != nil {
				err = merr
				break
			}
			mapped = append(mapped, on...)
			n += e.Length
		}
		if err != nil {
			rep.Volumes = append(rep.Volumes, fmt.Sprintf("%s (%s): read in full: %v", v.Name, v.FS, err))
			continue
		}
		rep.Free = append(rep.Free, mapped...)
		rep.Bytes += n
		rep.Volumes = append(rep.Volumes, fmt.Sprintf("%s (%s): %d bytes free", v.Name, v.FS, n))
	}
	sort.Slice(rep.Free, func(i, j int) bool { return rep.Free[i].Offset < rep.Free[j].Offset })
	return rep, nil
}

// extFree reads an ext2/3/4 block bitmap, group by group, into free byte
// ranges of the volume. Groups whose bitmap was never initialised
// (BLOCK_UNINIT) count as used: their metadata blocks are not in it.
func extFree(s section) ([]Extent, error) {
	x, err := newExtData(s)
	if err != nil {
		return nil, err
	}
	sb := make([]byte, 1024)
	if _, err := s.ReadAt(sb, 1024); err != nil {
		return nil, err
	}
	le32 := func(b []byte, o int) uint32 { return binary.LittleEndian.Uint32(b[o:]) }
	if incompat := le32(sb, 96); incompat&0x4 != 0 {
		return nil, errors.New("its journal needs recovery (blocks it allocated may still be marked free)")
	} else if incompat&0x8 != 0 {
		return nil, errors.New("external journal device")
	}
	if ro := le32(sb, 100); ro&0x200 != 0 { // bigalloc: clusters, not blocks
		return nil, errors.New("bigalloc filesystem")
	}
	perGroup := int64(le32(sb, 32))
	firstData := int64(le32(sb, 20))
	if perGroup <= 0 || perGroup > 8*x.blockSize {
		return nil, fmt.Errorf("%d blocks per group", perGroup)
	}
	total := int64(x.blocksCount)
	if total*x.blockSize > s.len {
		return nil, fmt.Errorf("%d blocks of %d bytes on a %d-byte volume", total, x.blockSize, s.len)
	}
	groups := (total - firstData + perGroup - 1) / perGroup
	var free []Extent
	gd := make([]byte, x.descSize)
	bitmap := make([]byte, x.blockSize)
	for g := int64(0); g < groups; g++ {
		if _, err := s.ReadAt(gd, x.gdt+g*x.descSize); err != nil {
			return nil, fmt.Errorf("group %d: %w", g, err)
		}
		if binary.LittleEndian.Uint16(gd[0x12:])&0x2 != 0 {
			continue // BLOCK_UNINIT
		}
		at := int64(le32(gd, 0))
		if x.descSize >= 64 {
			at |= int64(le32(gd, 0x20)) << 32
		}
		if at <= 0 || at >= total {
			return nil, fmt.Errorf("group %d: block bitmap at block %d", g, at)
		}
		if _, err := s.ReadAt(bitmap, at*x.blockSize); err != nil {
			return nil, fmt.Errorf("group %d bitmap: %w", g, err)
		}
		first := firstData + g*perGroup
		n := min(perGroup, total-first)
		for i := int64(0); i < n; {
			if bitmap[i/8]&(1<<(i%8)) != 0 {
				i++
				continue
			}
			j := i + 1
			for j < n && bitmap[j/8]&(1<<(j%8)) == 0 {
				j++
			}
			free = addExtent(free, Extent{(first + i) * x.blockSize, (j - i) * x.blockSize})
			i = j
		}
	}
	return free, nil
}

// FreeChunks returns the chunk ranges [first, end) of d lying wholly in
// blocks its filesystems mark free — the one rule both a --skip-free
// backup (not read, stored as zeros) and its certification (not compared)
// follow — with the report they came from.
func FreeChunks(d Disk, chunkSize int) ([][2]int64, FreeReport, error) {
	rep, err := FreeExtents(d)
	if err != nil {
		return nil, rep, err
	}
	free := make([]source.Extent, len(rep.Free))
	for i, e := range rep.Free {
		free[i] = source.Extent{Offset: e.Offset, Length: e.Length}
	}
	return source.WhollyInside(free, chunkSize), rep, nil
}
