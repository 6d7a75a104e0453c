package guestfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/diskfs/go-diskfs/partition/mbr"
)

const sector = 512

// volumes finds d's volumes: a filesystem on the whole disk, or the
// partitions of its GPT or MBR table (logical partitions included), and
// the logical volumes of LVM2 physical volumes among them.
func volumes(d Disk) ([]Volume, error) {
	vols, err := tableVolumes(d)
	if err != nil {
		return nil, err
	}
	var pvs []*pvInfo
	for i, v := range vols {
		if v.FS != "LVM2_member" {
			continue
		}
		pv, err := readPV(section{d, v.Offset, v.Size}, v.Size)
		if err != nil {
			vols[i].Note = "LVM2 physical volume: " + err.Error()
			continue
		}
		vols[i].UUID = pv.uuid
		pvs = append(pvs, pv)
	}
	return append(vols, lvmVolumes(pvs)...), nil
}

func tableVolumes(d Disk) ([]Volume, error) {
	size := d.Size()
	if size < sector {
		return nil, fmt.Errorf("disk of %d bytes: too small for a partition table or a filesystem", size)
	}
	// A filesystem at offset 0 first: FAT and NTFS boot sectors carry the
	// same 0x55AA signature an MBR does.
	if v := detect(section{d, 0, size}); v.FS != "" {
		v.Name, v.Offset, v.Size = "disk", 0, size
		return []Volume{v}, nil
	}
	st := newStorage(section{d, 0, size})
	var vols []Volume
	if t, err := gpt.Read(st, sector, sector); err == nil {
		for _, p := range t.Partitions {
			if p == nil || p.Type == gpt.Unused || p.Start == 0 {
				continue
			}
			name := fmt.Sprintf("p%d", p.Index)
			if p.End < p.Start || p.End >= uint64(size/sector) {
				vols = append(vols, Volume{Name: name, PartType: strings.ToLower(string(p.Type)),
					Note: fmt.Sprintf("partition entry [%d, %d] does not fit the disk's %d sectors", p.Start, p.End, size/sector)})
				continue
			}
			off, n := int64(p.Start)*sector, int64(p.End-p.Start+1)*sector
			vols = append(vols, volume(d, name, off, n, strings.ToLower(string(p.Type)), p.Name))
		}
		return vols, nil
	}
	t, err := mbr.Read(st, sector, sector)
	if err != nil {
		return nil, fmt.Errorf("no partition table and no filesystem recognised on the disk")
	}
	for _, p := range t.Partitions {
		if p == nil || p.Type == mbr.Empty || p.Size == 0 {
			continue
		}
		i := p.Index - 1
		off, n := int64(p.Start)*sector, int64(p.Size)*sector
		switch p.Type {
		case 0x05, 0x0f, 0x85: // extended: its logical partitions are p5, p6, …
			logical, err := logicalPartitions(d, off, n)
			vols = append(vols, logical...)
			if err != nil {
				vols = append(vols, Volume{Name: fmt.Sprintf("p%d", i+1), Offset: off, Size: n, PartType: fmt.Sprintf("%02x", byte(p.Type)),
					Note: fmt.Sprintf("extended partition: %v", err)})
			}
		case 0xee:
			return nil, errors.New("protective MBR without a readable GPT: the GPT header or its table is damaged")
		default:
			vols = append(vols, volume(d, fmt.Sprintf("p%d", i+1), off, n, fmt.Sprintf("%02x", byte(p.Type)), ""))
		}
	}
	return vols, nil
}

// logicalPartitions walks the chain of extended boot records in the
// extended partition at [ext, ext+n). Written here: go-diskfs reads the
// four primary entries only.
func logicalPartitions(d Disk, ext, n int64) ([]Volume, error) {
	var vols []Volume
	ebr := ext
	seen := map[int64]bool{}
	for k := 5; ; k++ {
		if seen[ebr] || len(vols) > 128 {
			return vols, errors.New("the chain of logical partitions loops")
		}
		seen[ebr] = true
		b := make([]byte, sector)
		if _, err := d.ReadAt(b, ebr); err != nil {
			return vols, fmt.Errorf("read the boot record at %d: %w", ebr, err)
		}
		if b[510] != 0x55 || b[511] != 0xaa {
			return vols, fmt.Errorf("boot record at %d: no signature", ebr)
		}
		e1, e2 := b[446:462], b[462:478]
		if typ, start, size := e1[4], binary.LittleEndian.Uint32(e1[8:]), binary.LittleEndian.Uint32(e1[12:]); typ != 0 && size != 0 {
			off, l := ebr+int64(start)*sector, int64(size)*sector
			if off < ext || off+l > ext+n {
				return vols, fmt.Errorf("logical partition %d lies outside its extended partition", k)
			}
			vols = append(vols, volume(d, fmt.Sprintf("p%d", k), off, l, fmt.Sprintf("%02x", typ), ""))
		}
		next := binary.LittleEndian.Uint32(e2[8:])
		if e2[4] == 0 || next == 0 {
			return vols, nil
		}
		ebr = ext + int64(next)*sector
		if ebr >= ext+n {
			return vols, errors.New("the chain of logical partitions leaves the extended partition")
		}
	}
}

func volume(d Disk, name string, off, n int64, partType, label string) Volume {
	if off+n > d.Size() {
		return Volume{Name: name, Offset: off, Size: n, PartType: partType, Note: fmt.Sprintf("partition ends at %d, past the disk's %d bytes", off+n, d.Size())}
	}
	v := detect(section{d, off, n})
	v.Name, v.Offset, v.Size, v.PartType = name, off, n, partType
	if v.Label == "" {
		v.Label = label
	}
	return v
}

// detect recognises the filesystem at the start of s by its magic numbers.
func detect(s section) Volume {
	head := make([]byte, 8192)
	n, err := s.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return Volume{Note: fmt.Sprintf("read: %v", err)}
	}
	head = head[:n]
	at := func(off int, magic string) bool {
		return len(head) >= off+len(magic) && string(head[off:off+len(magic)]) == magic
	}
	str := func(b []byte) string { return strings.TrimRight(strings.TrimSpace(string(b)), "\x00") }
	hexid := func(b []byte) string { return fmt.Sprintf("%x", b) }
	switch {
	case len(head) >= 2048 && binary.LittleEndian.Uint16(head[1024+56:]) == 0xef53:
		sb := head[1024:]
		compat, incompat := binary.LittleEndian.Uint32(sb[92:]), binary.LittleEndian.Uint32(sb[96:])
		kind := "ext2"
		if compat&0x4 != 0 {
			kind = "ext3"
		}
		if incompat&(0x40|0x80|0x200|0x8000) != 0 { // extents, 64bit, flex_bg, inline data
			kind = "ext4"
		}
		u := sb[104:120]
		return Volume{FS: kind, Label: str(sb[120:136]), UUID: fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])}
	case at(0, "XFSB"):
		u := head[32:48]
		return Volume{FS: "xfs", Label: str(head[108:120]), UUID: fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])}
	case at(3, "NTFS    "):
		serial := head[0x48:0x50]
		return Volume{FS: "ntfs", UUID: strings.ToUpper(hexid(reverse(serial)))}
	case at(82, "FAT32   ") && at(510, "\x55\xaa"):
		return Volume{FS: "vfat", Label: str(head[71:82]), UUID: fatSerial(head[67:71])}
	case (at(54, "FAT12   ") || at(54, "FAT16   ") || at(54, "FAT     ")) && at(510, "\x55\xaa"):
		return Volume{FS: "vfat", Label: str(head[43:54]), UUID: fatSerial(head[39:43])}
	case at(4086, "SWAPSPACE2") || at(4086, "SWAP-SPACE"):
		return Volume{FS: "swap", Note: "swap space: no files"}
	}
	for i := 0; i < 4; i++ {
		if at(i*sector, "LABELONE") && at(i*sector+24, "LVM2 001") {
			return Volume{FS: "LVM2_member"}
		}
	}
	return Volume{}
}

func fatSerial(b []byte) string {
	return fmt.Sprintf("%04X-%04X", binary.LittleEndian.Uint16(b[2:]), binary.LittleEndian.Uint16(b[0:]))
}

func reverse(b []byte) []byte {
	r := make([]byte, len(b))
	for i := range b {
		r[len(b)-1-i] = b[i]
	}
	return r
}
