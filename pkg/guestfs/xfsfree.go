package guestfs

import (
	"errors"
	"fmt"
)

// xfsFree reads the free-space B+trees (one "by block number" tree per
// allocation group) into free byte ranges of the volume. Only for a
// filesystem whose log ends in an unmount record: otherwise blocks that
// logged transactions allocated may still be free in the trees on disk.
// Each AG's records must add up to the free count its AGF keeps, or the
// volume is refused. Blocks on the AG free lists are not in the trees
// and count as used.
func xfsFree(s section) ([]Extent, error) {
	x, err := openXFS(s)
	if err != nil {
		return nil, err
	}
	sb := make([]byte, 512)
	if _, err := s.ReadAt(sb, 0); err != nil {
		return nil, fmt.Errorf("superblock: %w", err)
	}
	if sb[126] != 0 {
		return nil, errors.New("mkfs did not finish (sb_inprogress)")
	}
	agCount, sectSize := int64(be.Uint32(sb[88:])), int64(be.Uint16(sb[102:]))
	dblocks := int64(be.Uint64(sb[8:]))
	if agCount <= 0 || agCount*x.agBlocks < dblocks || dblocks*x.blockSize > s.len || sectSize < 512 || sectSize > x.blockSize {
		return nil, fmt.Errorf("superblock: %d AGs of %d blocks, %d blocks, sector %d on %d bytes: damaged", agCount, x.agBlocks, dblocks, sectSize, s.len)
	}
	if x.v5 && be.Uint32(sb[220:]) != 0 {
		return nil, errors.New("log incompat features in use: the filesystem was not unmounted")
	}
	logStart, logBlocks := be.Uint64(sb[48:]), int64(be.Uint32(sb[96:]))
	if logStart == 0 {
		return nil, errors.New("external log device")
	}
	if err := xfsLogClean(section{s, x.fsbOffset(logStart), logBlocks * x.blockSize}); err != nil {
		return nil, err
	}
	var free []Extent
	agf := make([]byte, 512)
	for ag := int64(0); ag < agCount; ag++ {
		base := ag * x.agBlocks * x.blockSize
		if _, err := s.ReadAt(agf, base+sectSize); err != nil {
			return nil, fmt.Errorf("AG %d header: %w", ag, err)
		}
		if string(agf[:4]) != "XAGF" || int64(be.Uint32(agf[8:])) != ag {
			return nil, fmt.Errorf("AG %d: bad AGF", ag)
		}
		length := int64(be.Uint32(agf[12:]))
		if length <= 0 || length > x.agBlocks || ag*x.agBlocks+length > dblocks {
			return nil, fmt.Errorf("AG %d: %d blocks", ag, length)
		}
		w := &bnoWalk{x: x, ag: ag, length: length}
		if err := w.visit(be.Uint32(agf[16:]), int(be.Uint32(agf[28:]))-1); err != nil {
			return nil, fmt.Errorf("AG %d free-space tree: %w", ag, err)
		}
		if want := int64(be.Uint32(agf[52:])); w.blocks != want {
			return nil, fmt.Errorf("AG %d: free-space tree holds %d blocks, its AGF says %d", ag, w.blocks, want)
		}
		for _, e := range w.free {
			free = addExtent(free, Extent{base + e.Offset, e.Length})
		}
	}
	return free, nil
}

// bnoWalk collects the records of one AG's free-space-by-block B+tree,
// checking that they come in order and stay inside the AG.
type bnoWalk struct {
	x          *xfsFS
	ag, length int64
	next       int64 // first block the next record may start at
	blocks     int64 // free blocks found
	visited    int64
	free       []Extent // AG-relative byte ranges
}

func (w *bnoWalk) visit(bno uint32, level int) error {
	if level < 0 || level > 8 {
		return fmt.Errorf("%d levels", level+1)
	}
	if int64(bno) <= 0 || int64(bno) >= w.length {
		return fmt.Errorf("block %d outside the AG", bno)
	}
	// A tree cannot have more blocks than its AG: a pointer loop or a
	// block shared by several parents stops here, not in a blow-up.
	if w.visited++; w.visited > w.length {
		return errors.New("more tree blocks than the AG holds")
	}
	bs := w.x.blockSize
	b := make([]byte, bs)
	if _, err := w.x.s.ReadAt(b, (w.ag*w.x.agBlocks+int64(bno))*bs); err != nil {
		return fmt.Errorf("block %d: %w", bno, err)
	}
	hdr, magic := int64(16), "ABTB"
	if w.x.v5 {
		hdr, magic = 56, "AB3B"
	}
	if string(b[:4]) != magic || int(be.Uint16(b[4:])) != level {
		return fmt.Errorf("block %d: not a free-space tree block of level %d", bno, level)
	}
	if w.x.v5 && int64(be.Uint32(b[48:])) != w.ag {
		return fmt.Errorf("block %d: owned by AG %d", bno, be.Uint32(b[48:]))
	}
	n := int64(be.Uint16(b[6:]))
	if level == 0 {
		if hdr+n*8 > bs {
			return fmt.Errorf("block %d: %d records", bno, n)
		}
		for i := int64(0); i < n; i++ {
			r := b[hdr+i*8:]
			start, count := int64(be.Uint32(r)), int64(be.Uint32(r[4:]))
			if start < w.next || count <= 0 || start+count > w.length {
				return fmt.Errorf("block %d: free extent %d+%d out of order or outside the AG", bno, start, count)
			}
			w.next = start + count
			w.blocks += count
			w.free = addExtent(w.free, Extent{start * bs, count * bs})
		}
		return nil
	}
	maxRecs := (bs - hdr) / 12 // a key (start, count) and a pointer each
	if n > maxRecs {
		return fmt.Errorf("block %d: %d pointers", bno, n)
	}
	for i := int64(0); i < n; i++ {
		if err := w.visit(be.Uint32(b[hdr+maxRecs*8+i*4:]), level-1); err != nil {
			return err
		}
	}
	return nil
}

// xfsLogClean says whether an internal XFS log ends with an unmount
// record — a clean unmount — the way log recovery finds its head: every
// 512-byte log block starts with the number of the pass (cycle) that
// wrote it, so the head is where the cycle number drops. Anything
// unexpected around the head (blocks of the current cycle past it, as
// log buffers written out of order by a crash leave, or a last record
// that is not the unmount record, or does not end at the head) means
// not clean.
func xfsLogClean(log section) error {
	const bb = 512
	const magic = 0xFEEDBABE
	n := log.len / bb
	if n < 64 {
		return fmt.Errorf("log of %d blocks", n)
	}
	blk := make([]byte, bb)
	cycle := func(i int64) (uint32, error) {
		if _, err := log.ReadAt(blk, i*bb); err != nil {
			return 0, fmt.Errorf("log block %d: %w", i, err)
		}
		if be.Uint32(blk) == magic {
			return be.Uint32(blk[4:]), nil
		}
		return be.Uint32(blk), nil
	}
	first, err := cycle(0)
	if err != nil {
		return err
	}
	last, err := cycle(n - 1)
	if err != nil {
		return err
	}
	// head: the first block not yet written in the current pass.
	head, cur := n, first
	switch {
	case first == last: // the current pass ends exactly at the log's end
	case first == last+1:
		lo, hi := int64(0), n-1 // cycle(lo) == first, cycle(hi) == last
		for hi-lo > 1 {
			mid := lo + (hi-lo)/2
			c, err := cycle(mid)
			if err != nil {
				return err
			}
			if c == first {
				lo = mid
			} else {
				hi = mid
			}
		}
		head = hi
	default:
		return fmt.Errorf("log cycles %d at its start and %d at its end", first, last)
	}
	// Up to 8 log buffers of 256 KiB may be in flight when a system
	// stops: read that much either side of the head.
	win := min(int64(4096), n/2)
	read := func(from, count int64) ([]byte, error) {
		b := make([]byte, count*bb)
		for i := int64(0); i < count; {
			at := ((from+i)%n + n) % n
			k := min(count-i, n-at)
			if _, err := log.ReadAt(b[i*bb:(i+k)*bb], at*bb); err != nil {
				return nil, fmt.Errorf("log blocks %d+%d: %w", at, k, err)
			}
			i += k
		}
		return b, nil
	}
	cyc := func(b []byte) uint32 {
		if be.Uint32(b) == magic {
			return be.Uint32(b[4:])
		}
		return be.Uint32(b)
	}
	before, err := read(head-win, win)
	if err != nil {
		return err
	}
	if head < n {
		after, err := read(head, min(win, n-head))
		if err != nil {
			return err
		}
		for i := 0; i < len(after); i += bb {
			if cyc(after[i:]) == cur {
				return errors.New("log blocks of the current cycle past its head: not shut down clean")
			}
		}
	}
	// The last record: the nearest header before the head.
	for i := win - 1; i >= 0; i-- {
		h := before[i*bb:]
		if be.Uint32(h) != magic {
			continue
		}
		if be.Uint32(h[4:]) != cur {
			return errors.New("log head record of an older cycle: not shut down clean")
		}
		hblks := int64(1)
		if size := int64(be.Uint32(h[320:])); be.Uint32(h[8:])&2 != 0 && size > 32<<10 {
			hblks = (size + 32<<10 - 1) / (32 << 10)
		}
		dataBlks := (int64(be.Uint32(h[12:])) + bb - 1) / bb
		if i+hblks+dataBlks != win {
			return errors.New("log does not end with its last record: not shut down clean")
		}
		if be.Uint32(h[40:]) != 1 || i+hblks >= win || before[(i+hblks)*bb+9]&0x20 == 0 {
			return errors.New("log does not end with an unmount record: not shut down clean")
		}
		return nil
	}
	return errors.New("no log record before the log head")
}
