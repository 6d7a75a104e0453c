// Package diskcheck tells whether a raw disk image looks like a disk a
// machine could boot or mount: a sane partition table (MBR or GPT) and, in
// each partition, a filesystem superblock (ext2/3/4, XFS, NTFS, FAT) or a
// known non-filesystem signature (Linux swap, LVM physical volume). It is
// the restore test's inspection: cheap (a few sectors per partition), and
// strict where a damaged restore would show.
package diskcheck

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
)

// Layout is what Inspect found.
type Layout struct {
	Table      string // "gpt", "mbr" or "none"
	Partitions []Partition
}

// Partition is one partition and the signature found in it.
type Partition struct {
	Index       int    // 1-based
	Start, Size int64  // bytes
	Content     string // "ext4", "xfs", "ntfs", "fat", "swap", "lvm", "" (nothing known)
	// NeedsRecovery: the filesystem's journal must be replayed before it
	// is mounted (ext3/4 with needs_recovery set, an XFS log that does not
	// end with an unmount record): the visible mark of a
	// crash-consistent point, which a filesystem-consistent one lacks.
	NeedsRecovery bool
}

// Recovery lists the partitions whose journal needs replaying, or nil.
func (l *Layout) Recovery() []string {
	var out []string
	for _, p := range l.Partitions {
		if p.NeedsRecovery {
			what := "journal needs recovery"
			if p.Content == "xfs" {
				what = "log holds metadata to replay"
			}
			out = append(out, fmt.Sprintf("%s: %s %s", p, p.Content, what))
		}
	}
	return out
}

func (p Partition) String() string {
	return fmt.Sprintf("partition %d (%d MiB at %d MiB)", p.Index, p.Size>>20, p.Start>>20)
}

const sector = 512

// Inspect reads the partition table and each partition's signature.
func Inspect(r io.ReaderAt, size int64) (*Layout, error) {
	mbr := make([]byte, sector)
	if _, err := r.ReadAt(mbr, 0); err != nil {
		return nil, fmt.Errorf("read sector 0: %w", err)
	}
	l := &Layout{Table: "none"}
	if mbr[510] != 0x55 || mbr[511] != 0xAA {
		return l, nil
	}
	if mbr[450] == 0xEE { // protective MBR
		l.Table = "gpt"
		if err := l.readGPT(r, size); err != nil {
			return nil, err
		}
	} else {
		l.Table = "mbr"
		if err := l.readMBR(mbr, size); err != nil {
			return nil, err
		}
	}
	for i := range l.Partitions {
		content, err := signature(r, l.Partitions[i])
		if err != nil {
			return nil, err
		}
		l.Partitions[i].Content = content
		switch content {
		case "ext4":
			if l.Partitions[i].NeedsRecovery, err = ext4NeedsRecovery(r, l.Partitions[i]); err != nil {
				return nil, err
			}
		case "xfs":
			if l.Partitions[i].NeedsRecovery, err = xfsLogDirty(r, l.Partitions[i]); err != nil {
				return nil, err
			}
		}
	}
	return l, nil
}

func (l *Layout) readMBR(mbr []byte, size int64) error {
	for i := 0; i < 4; i++ {
		e := mbr[446+16*i : 446+16*(i+1)]
		if e[4] == 0 {
			continue
		}
		if e[4] == 0x05 || e[4] == 0x0F || e[4] == 0x85 {
			continue // extended partition container: its logical partitions are not inspected
		}
		start := int64(binary.LittleEndian.Uint32(e[8:])) * sector
		n := int64(binary.LittleEndian.Uint32(e[12:])) * sector
		if err := l.add(i+1, start, n, size); err != nil {
			return err
		}
	}
	return nil
}

func (l *Layout) readGPT(r io.ReaderAt, size int64) error {
	h := make([]byte, sector)
	if _, err := r.ReadAt(h, sector); err != nil {
		return fmt.Errorf("read GPT header: %w", err)
	}
	if string(h[:8]) != "EFI PART" {
		return errors.New("protective MBR but no GPT header at LBA 1")
	}
	hsize := binary.LittleEndian.Uint32(h[12:])
	if hsize < 92 || hsize > sector {
		return fmt.Errorf("GPT header size %d", hsize)
	}
	want := binary.LittleEndian.Uint32(h[16:])
	crcBuf := bytes.Clone(h[:hsize])
	clear(crcBuf[16:20])
	if crc32.ChecksumIEEE(crcBuf) != want {
		return errors.New("GPT header checksum mismatch")
	}
	entriesLBA := int64(binary.LittleEndian.Uint64(h[72:]))
	count := binary.LittleEndian.Uint32(h[80:])
	esize := binary.LittleEndian.Uint32(h[84:])
	if count > 1024 || esize < 128 || esize > 4096 {
		return fmt.Errorf("GPT claims %d entries of %d bytes", count, esize)
	}
	entries := make([]byte, int(count)*int(esize))
	if _, err := r.ReadAt(entries, entriesLBA*sector); err != nil {
		return fmt.Errorf("read GPT entries: %w", err)
	}
	if crc32.ChecksumIEEE(entries) != binary.LittleEndian.Uint32(h[88:]) {
		return errors.New("GPT partition entries checksum mismatch")
	}
	for i := 0; i < int(count); i++ {
		e := entries[i*int(esize):]
		if bytes.Equal(e[:16], make([]byte, 16)) {
			continue
		}
		first, last := int64(binary.LittleEndian.Uint64(e[32:])), int64(binary.LittleEndian.Uint64(e[40:]))
		if last < first {
			return fmt.Errorf("GPT partition %d ends before it starts", i+1)
		}
		if err := l.add(i+1, first*sector, (last-first+1)*sector, size); err != nil {
			return err
		}
	}
	return nil
}

// add records a partition after checking it lies on the disk and overlaps
// no other.
func (l *Layout) add(index int, start, n, size int64) error {
	p := Partition{Index: index, Start: start, Size: n}
	if n <= 0 || start < sector || start+n > size {
		return fmt.Errorf("%s lies outside the %d-byte disk", p, size)
	}
	for _, o := range l.Partitions {
		if start < o.Start+o.Size && o.Start < start+n {
			return fmt.Errorf("%s overlaps %s", p, o)
		}
	}
	l.Partitions = append(l.Partitions, p)
	return nil
}

// ext4NeedsRecovery reads the superblock's feature flags: a journal
// (compat has_journal, 0x4) left needing a replay (incompat RECOVER, 0x4).
func ext4NeedsRecovery(r io.ReaderAt, p Partition) (bool, error) {
	sb := make([]byte, 1024)
	if _, err := r.ReadAt(sb, p.Start+1024); err != nil {
		return false, fmt.Errorf("read %s superblock: %w", p, err)
	}
	compat, incompat := binary.LittleEndian.Uint32(sb[0x5C:]), binary.LittleEndian.Uint32(sb[0x60:])
	return compat&0x4 != 0 && incompat&0x4 != 0, nil
}

// signature names what the partition's first sectors hold.
func signature(r io.ReaderAt, p Partition) (string, error) {
	head := make([]byte, min(p.Size, 8192))
	if _, err := r.ReadAt(head, p.Start); err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read %s: %w", p, err)
	}
	switch {
	case len(head) >= 1024+58 && binary.LittleEndian.Uint16(head[1024+56:]) == 0xEF53:
		return "ext4", nil // ext2, ext3 and ext4 share the magic
	case string(head[:4]) == "XFSB":
		return "xfs", nil
	case len(head) >= 11 && string(head[3:11]) == "NTFS    ":
		return "ntfs", nil
	case len(head) >= 512 && head[510] == 0x55 && head[511] == 0xAA &&
		(strings.HasPrefix(string(head[54:62]), "FAT") || strings.HasPrefix(string(head[82:90]), "FAT32")):
		return "fat", nil
	case len(head) >= 4096 && string(head[4086:4096]) == "SWAPSPACE2":
		return "swap", nil
	case len(head) >= 1024 && string(head[512:520]) == "LABELONE":
		return "lvm", nil
	}
	return "", nil
}

// Plausible says what is wrong with a layout for a disk that should boot
// or mount, or "" when nothing is.
func (l *Layout) Plausible() string {
	if l.Table == "none" {
		return "no partition table (no MBR/GPT signature in sector 0)"
	}
	if len(l.Partitions) == 0 {
		return fmt.Sprintf("%s partition table lists no partition", strings.ToUpper(l.Table))
	}
	var bad []string
	for _, p := range l.Partitions {
		if p.Content == "" {
			bad = append(bad, fmt.Sprintf("%s: no known filesystem superblock (ext2/3/4, XFS, NTFS, FAT) or swap/LVM signature", p))
		}
	}
	return strings.Join(bad, "; ")
}

// Compare says how a restored layout differs from the source's, or "".
func Compare(source, restored *Layout) string {
	if source.Table != restored.Table || len(source.Partitions) != len(restored.Partitions) {
		return fmt.Sprintf("source has a %s table with %d partitions, the restore a %s table with %d", source.Table, len(source.Partitions), restored.Table, len(restored.Partitions))
	}
	for i, p := range source.Partitions {
		q := restored.Partitions[i]
		if p.Start != q.Start || p.Size != q.Size || (p.Content != "" && p.Content != q.Content) {
			return fmt.Sprintf("%s holds %q in the source, %s holds %q in the restore", p, p.Content, q, q.Content)
		}
	}
	return ""
}
