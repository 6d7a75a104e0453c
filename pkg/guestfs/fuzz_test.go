package guestfs

import (
	"encoding/binary"
	"io"
	"testing"
)

type memDisk []byte

func (m memDisk) Size() int64 { return int64(len(m)) }
func (m memDisk) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m)) {
		return 0, io.EOF
	}
	n := copy(p, m[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

const lvmSample = `vg0 {
id = "udKkMk-2w8e-wAkv-baub-ZMFy-9suA-LX1dUu"
seqno = 3
extent_size = 2048 # 1 MiB
status = ["RESIZEABLE", "READ", "WRITE"]
physical_volumes {
pv0 {
id = "SRYpKi-icMt-B2Vq-QtZR-UGhu-Nfgm-LpAZGL"
pe_start = 2048
pe_count = 23
}
}
logical_volumes {
root {
status = ["READ", "WRITE", "VISIBLE"]
segment_count = 1
segment1 {
start_extent = 0
extent_count = 4
type = "striped"
stripe_count = 1
stripes = [
"pv0", 0
]
}
}
}
}
`

// FuzzLVMConfig: any metadata text parses or is refused, never panics.
func FuzzLVMConfig(f *testing.F) {
	f.Add([]byte(lvmSample))
	f.Add([]byte("a { b = [ 1, \"x\", 2.5 ] c { } }"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := parseLVMConfig(b); err != nil {
			return
		}
		pv := &pvInfo{uuid: "SRYpKiicMtB2VqQtZRUGhuNfgmLpAZGL", r: memDisk(make([]byte, 1<<20)), size: 1 << 20, metadata: b}
		for _, v := range lvmVolumes([]*pvInfo{pv}) {
			if v.r != nil {
				v.r.ReadAt(make([]byte, 4096), v.Size/2)
			}
		}
	})
}

// FuzzDisk: whatever bytes a disk holds — partition tables, extended
// boot records, LVM2 labels and metadata areas — opening it, listing its
// volumes and reading their files errors or succeeds, and never panics.
// (Filesystem images are too large for the fuzzer's mutator: damaged
// filesystems are TestDamagedFilesystemsNeverPanicOrHang's.)
func FuzzDisk(f *testing.F) {
	// A logical partition chain.
	mbrDisk := make([]byte, 64<<10)
	entry := func(b []byte, typ byte, start, size uint32) {
		b[4] = typ
		binary.LittleEndian.PutUint32(b[8:], start)
		binary.LittleEndian.PutUint32(b[12:], size)
	}
	entry(mbrDisk[446:], 0x05, 8, 100)
	mbrDisk[510], mbrDisk[511] = 0x55, 0xaa
	ebr := mbrDisk[8*512:]
	entry(ebr[446:], 0x83, 2, 20)
	entry(ebr[462:], 0x05, 30, 40)
	ebr[510], ebr[511] = 0x55, 0xaa
	f.Add(mbrDisk)
	// An LVM2 label with a metadata area holding the sample metadata.
	pv := make([]byte, 48<<10)
	copy(pv[512:], "LABELONE")
	copy(pv[512+24:], "LVM2 001")
	binary.LittleEndian.PutUint32(pv[512+20:], 32)
	copy(pv[512+32:], "SRYpKiicMtB2VqQtZRUGhuNfgmLpAZGL")
	binary.LittleEndian.PutUint64(pv[512+72+16:], 4096)  // metadata area at 4096
	binary.LittleEndian.PutUint64(pv[512+72+24:], 16384) // of 16 KiB
	copy(pv[4096+4:], " LVM2 x[5A%r0N*>")
	binary.LittleEndian.PutUint64(pv[4096+40:], 512)
	binary.LittleEndian.PutUint64(pv[4096+48:], uint64(len(lvmSample)))
	copy(pv[4096+512:], lvmSample)
	f.Add(pv)
	f.Fuzz(func(t *testing.T, b []byte) { readAll(memDisk(b)) })
}
