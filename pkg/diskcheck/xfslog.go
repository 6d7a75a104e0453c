package diskcheck

import (
	"encoding/binary"
	"fmt"
	"io"
)

// XFS's log, as far as telling a log with work to replay from one
// without: the log is a ring of 512-byte basic blocks, each stamped with
// the cycle (lap) it was written in; the head is where the cycle drops.
// A log left clean ends, at its head, with a record holding one operation
// flagged XLOG_UNMOUNT_TRANS (unmount). A frozen (or long idle) XFS
// instead "covers" its log: everything checkpointed, the tail moved up to
// two transactions that log nothing but the superblock — the mount
// replays them, a no-op. Anything else between tail and head is metadata
// a crash left to replay. This is xlog_find_head and
// xlog_check_unmount_rec of the kernel's fs/xfs/xfs_log_recover.c without
// the repair of torn writes (which only ever mean recovery), and enough
// of the operation format to recognise the covering transactions.
// Written here: no Go library reads XFS's log.
const (
	xlogMagic        = 0xFEEDBABE
	xlogStartTrans   = 0x01
	xlogCommitTrans  = 0x02
	xlogContinue     = 0x04 | 0x08 // XLOG_CONTINUE_TRANS, XLOG_WAS_CONT_TRANS
	xlogUnmountTrans = 0x20
	transMagic       = 0x5452414e // XFS_TRANS_HEADER_MAGIC "TRAN"
	liBuf            = 0x123c     // XFS_LI_BUF
	xlogCycleSize    = 32 << 10   // XLOG_HEADER_CYCLE_SIZE
	bb               = 512
	maxRecordBBs     = (256<<10)/bb + 8*2 // the largest in-core log plus its headers
)

// xfsLogDirty reports whether the XFS filesystem on p has an internal log
// that needs recovery. An external log (not on this disk) is not judged.
func xfsLogDirty(r io.ReaderAt, p Partition) (bool, error) {
	sb := make([]byte, bb)
	if _, err := r.ReadAt(sb, p.Start); err != nil {
		return false, fmt.Errorf("read %s XFS superblock: %w", p, err)
	}
	be := binary.BigEndian
	blocksize := int64(be.Uint32(sb[4:]))
	logstart := be.Uint64(sb[48:])
	agblocks := int64(be.Uint32(sb[84:]))
	logblocks := int64(be.Uint32(sb[96:]))
	agblklog := sb[124]
	if logstart == 0 {
		return false, nil // external log
	}
	if blocksize < bb || blocksize > 65536 || agblklog > 31 || logblocks <= 0 {
		return false, fmt.Errorf("%s: implausible XFS superblock (block size %d, log %d blocks)", p, blocksize, logblocks)
	}
	agno, agbno := int64(logstart>>agblklog), int64(logstart&(1<<agblklog-1))
	logOff := p.Start + (agno*agblocks+agbno)*blocksize
	n := logblocks * blocksize / bb
	if logOff+n*bb > p.Start+p.Size {
		return false, fmt.Errorf("%s: the XFS log (%d blocks at %d) lies beyond the partition", p, logblocks, logstart)
	}
	block := make([]byte, bb)
	read := func(i int64) ([]byte, error) {
		if _, err := r.ReadAt(block, logOff+((i%n)+n)%n*bb); err != nil {
			return nil, fmt.Errorf("read %s XFS log block %d: %w", p, i, err)
		}
		return block, nil
	}
	cycle := func(i int64) (uint32, error) {
		b, err := read(i)
		if err != nil {
			return 0, err
		}
		if be.Uint32(b) == xlogMagic {
			return be.Uint32(b[4:]), nil
		}
		return be.Uint32(b), nil // every other block carries its cycle in its first word
	}
	first, err := cycle(0)
	if err != nil {
		return false, err
	}
	last, err := cycle(n - 1)
	if err != nil {
		return false, err
	}
	head := n // one lap all in the same cycle: the head is at the end
	if first != last {
		// [c c … c c-1 … c-1]: the head is the first block of the older lap.
		lo, hi := int64(0), n-1
		for hi-lo > 1 {
			mid := (lo + hi) / 2
			c, err := cycle(mid)
			if err != nil {
				return false, err
			}
			if c == last {
				hi = mid
			} else {
				lo = mid
			}
		}
		head = hi
	}
	// The last record header before the head.
	for back := int64(1); back <= min(maxRecordBBs, n); back++ {
		b, err := read(head - back)
		if err != nil {
			return false, err
		}
		if be.Uint32(b) != xlogMagic {
			continue
		}
		version, length, ops, size := be.Uint32(b[8:]), int64(be.Uint32(b[12:])), be.Uint32(b[40:]), int64(be.Uint32(b[320:]))
		hblks := int64(1)
		if version&2 != 0 && size > xlogCycleSize {
			hblks = (size + xlogCycleSize - 1) / xlogCycleSize
		}
		if back != hblks+(length+bb-1)/bb {
			return true, nil // the head record is torn
		}
		if ops == 1 {
			data, err := read(head - back + hblks)
			if err != nil {
				return false, err
			}
			if data[9]&xlogUnmountTrans != 0 { // xlog_op_header.oh_flags
				return false, nil
			}
		}
		tail := int64(uint32(be.Uint64(b[24:]))) // h_tail_lsn: cycle<<32 | block
		return xfsReplaysWork(read, tail, head, n)
	}
	return true, nil // no record header near the head: a torn log
}

// xfsReplaysWork reports whether the records from tail to head hold more
// than transactions logging only the superblock (a covered log).
func xfsReplaysWork(read func(int64) ([]byte, error), tail, head, n int64) (bool, error) {
	be, le := binary.BigEndian, binary.LittleEndian
	span := ((head-tail)%n + n) % n
	if span > 64 {
		return true, nil // more than a few small records: work to replay
	}
	for b := tail; b != tail+span; {
		h, err := read(b)
		if err != nil {
			return false, err
		}
		hdr := append([]byte(nil), h...)
		if be.Uint32(hdr) != xlogMagic {
			return true, nil
		}
		length, ops := int64(be.Uint32(hdr[12:])), int(be.Uint32(hdr[40:]))
		if hdr[8+3]&2 != 0 && be.Uint32(hdr[320:]) > xlogCycleSize {
			return true, nil // extended headers: never a covering record
		}
		nb := (length + bb - 1) / bb
		data := make([]byte, 0, nb*bb)
		for i := int64(0); i < nb; i++ {
			d, err := read(b + 1 + i)
			if err != nil {
				return false, err
			}
			d = append([]byte(nil), d...)
			copy(d, hdr[44+4*i:48+4*i]) // the word the cycle stamp replaced (h_cycle_data)
			data = append(data, d...)
		}
		data = data[:length]
		// Operations: a transaction header, then items (a format
		// operation and its regions); only the superblock's buffer
		// (block 0, one basic block) may be logged.
		skip := 0
		for k, off := 0, 0; k < ops; k++ {
			if off+12 > len(data) {
				return true, nil
			}
			olen, flags := int(be.Uint32(data[off+4:])), data[off+9]
			p := data[off+12 : min(len(data), off+12+olen)]
			off += 12 + olen
			switch {
			case flags&xlogContinue != 0:
				return true, nil // a transaction spanning records: not a covering one
			case flags&(xlogStartTrans|xlogCommitTrans) != 0 || olen == 0:
			case skip > 0:
				skip--
			case len(p) >= 4 && le.Uint32(p) == transMagic:
			case len(p) >= 16 && le.Uint16(p) == liBuf && le.Uint64(p[8:]) == 0 && le.Uint16(p[6:]) == 1:
				skip = int(le.Uint16(p[2:])) - 1 // the superblock's regions
			default:
				return true, nil
			}
		}
		b += 1 + nb
	}
	return false, nil
}
