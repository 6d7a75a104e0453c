package guestfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"unicode"
)

// LVM2: physical volumes are found by their label, the volume group's
// text metadata is read from a PV's metadata area, and each logical
// volume becomes a volume named VG/LV whose bytes are mapped through its
// segments (linear and striped). Written here: there is no Go reader of
// LVM2, and the format (label, metadata area header, the text format of
// lvm.conf) is documented and small.

// pvInfo is a physical volume found on the disk.
type pvInfo struct {
	uuid     string // 32 characters, no dashes
	r        io.ReaderAt
	size     int64
	metadata []byte // the newest metadata text of its area, if any
}

// readPV reads the label and the newest metadata text of the PV at r.
func readPV(r io.ReaderAt, size int64) (*pvInfo, error) {
	head := make([]byte, 4*sector)
	if _, err := r.ReadAt(head, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	for i := 0; i < 4; i++ {
		l := head[i*sector : (i+1)*sector]
		if string(l[:8]) != "LABELONE" || string(l[24:32]) != "LVM2 001" {
			continue
		}
		off := int(binary.LittleEndian.Uint32(l[20:]))
		if off < 32 || off+32+8 > sector {
			return nil, fmt.Errorf("LVM2 label: header at %d", off)
		}
		pv := &pvInfo{uuid: string(l[off : off+32]), r: r, size: size}
		// Data areas, then metadata areas, each list ended by a zero entry.
		p := off + 40
		next := func() (uint64, uint64, bool) {
			if p+16 > sector {
				return 0, 0, false
			}
			o, s := binary.LittleEndian.Uint64(l[p:]), binary.LittleEndian.Uint64(l[p+8:])
			p += 16
			return o, s, o != 0
		}
		for _, _, ok := next(); ok; _, _, ok = next() {
		}
		for mo, ms, ok := next(); ok; mo, ms, ok = next() {
			text, err := readMDA(r, int64(mo), int64(ms))
			if err != nil {
				return pv, fmt.Errorf("metadata area at %d: %w", mo, err)
			}
			if text != nil {
				pv.metadata = text
				break
			}
		}
		return pv, nil
	}
	return nil, errors.New("no LVM2 label")
}

// readMDA reads the current metadata text of a metadata area (a ring
// buffer after a 512-byte header).
func readMDA(r io.ReaderAt, off, size int64) ([]byte, error) {
	if size < 2*sector || size > 1<<30 {
		return nil, fmt.Errorf("area of %d bytes", size)
	}
	h := make([]byte, sector)
	if _, err := r.ReadAt(h, off); err != nil {
		return nil, err
	}
	if string(h[4:20]) != " LVM2 x[5A%r0N*>" {
		return nil, errors.New("no metadata area header")
	}
	loc := h[40:]
	textOff, textSize := int64(binary.LittleEndian.Uint64(loc)), int64(binary.LittleEndian.Uint64(loc[8:]))
	if textOff == 0 || textSize == 0 {
		return nil, nil
	}
	if textOff < sector || textOff >= size || textSize > size-sector || textSize > 16<<20 {
		return nil, fmt.Errorf("metadata text [%d, +%d) outside its %d-byte area", textOff, textSize, size)
	}
	text := make([]byte, textSize)
	first := min(textSize, size-textOff)
	if _, err := r.ReadAt(text[:first], off+textOff); err != nil {
		return nil, err
	}
	if first < textSize { // wrapped around the ring
		if _, err := r.ReadAt(text[first:], off+sector); err != nil {
			return nil, err
		}
	}
	return bytes.TrimRight(text, "\x00"), nil
}

// lvmVolumes turns the PVs found into the logical volumes of their
// volume groups. Volumes that cannot be mapped carry a note.
func lvmVolumes(pvs []*pvInfo) []Volume {
	byUUID := map[string]*pvInfo{}
	var newest vgChoice
	for _, pv := range pvs {
		byUUID[pv.uuid] = pv
		if pv.metadata == nil {
			continue
		}
		md, err := parseLVMConfig(pv.metadata)
		if err != nil {
			newest.err = fmt.Errorf("LVM2 metadata: %w", err)
			continue
		}
		for name, v := range md {
			vg, ok := v.(lvmSection)
			if !ok {
				continue
			}
			if seq := vg.num("seqno"); newest.vg == nil || seq > newest.seqno {
				newest = vgChoice{vg: vg, name: name, seqno: seq}
			}
		}
	}
	if newest.vg == nil {
		if newest.err != nil {
			return []Volume{{Name: "lvm", FS: "LVM2", Note: newest.err.Error()}}
		}
		return nil
	}
	return newest.volumes(byUUID)
}

type vgChoice struct {
	vg    lvmSection
	name  string
	seqno int64
	err   error
}

func (s vgChoice) volumes(byUUID map[string]*pvInfo) []Volume {
	vgName, vg := s.name, s.vg
	extent := vg.num("extent_size") * sector
	pvsec, _ := vg["physical_volumes"].(lvmSection)
	type pvLoc struct {
		pv      *pvInfo
		peStart int64
	}
	pvs := map[string]pvLoc{}
	for name, v := range pvsec {
		p, ok := v.(lvmSection)
		if !ok {
			continue
		}
		if pv := byUUID[strings.ReplaceAll(p.str("id"), "-", "")]; pv != nil {
			pvs[name] = pvLoc{pv, p.num("pe_start") * sector}
		}
	}
	lvsec, _ := vg["logical_volumes"].(lvmSection)
	var names []string
	for name := range lvsec {
		names = append(names, name)
	}
	sort.Strings(names)
	var vols []Volume
	for _, name := range names {
		lv, ok := lvsec[name].(lvmSection)
		if !ok {
			continue
		}
		vname := vgName + "/" + name
		if !lv.hasStatus("VISIBLE") {
			continue // thin pool data, mirror legs, …: internal volumes
		}
		m := &lvMap{}
		var note string
		for i := int64(1); i <= lv.num("segment_count") && note == ""; i++ {
			seg, ok := lv[fmt.Sprintf("segment%d", i)].(lvmSection)
			if !ok {
				note = fmt.Sprintf("segment %d missing from the metadata", i)
				break
			}
			typ := seg.str("type")
			if typ != "striped" {
				note = fmt.Sprintf("%s segments are not supported (linear and striped are)", typ)
				break
			}
			s := lvSeg{start: seg.num("start_extent") * extent, length: seg.num("extent_count") * extent, stripe: seg.num("stripe_size") * sector}
			stripes, _ := seg["stripes"].([]any)
			for j := 0; j+1 < len(stripes); j += 2 {
				pvName, _ := stripes[j].(string)
				pe, _ := stripes[j+1].(int64)
				loc, ok := pvs[pvName]
				if !ok {
					note = fmt.Sprintf("physical volume %s is not on this disk", pvName)
					break
				}
				s.legs = append(s.legs, lvLeg{r: loc.pv.r, off: loc.peStart + pe*extent})
			}
			if note == "" && (len(s.legs) == 0 || len(s.legs) > 1 && s.stripe <= 0 || s.length <= 0) {
				note = fmt.Sprintf("segment %d: %d stripes of %d bytes", i, len(s.legs), s.stripe)
			}
			m.segs = append(m.segs, s)
			m.size = max(m.size, s.start+s.length)
		}
		if note != "" {
			vols = append(vols, Volume{Name: vname, FS: "", Note: "LVM2 logical volume: " + note})
			continue
		}
		v := detect(section{m, 0, m.size})
		v.Name, v.Size, v.PartType, v.r = vname, m.size, "lvm2", m
		vols = append(vols, v)
	}
	return vols
}

// lvMap reads a logical volume through its segments.
type lvMap struct {
	segs []lvSeg
	size int64
}

type lvSeg struct {
	start, length, stripe int64
	legs                  []lvLeg
}

type lvLeg struct {
	r   io.ReaderAt
	off int64 // where the segment's part on this PV starts
}

// locate finds where the volume's byte off lies: the leg (physical
// volume), the offset there, and how many bytes from off stay contiguous
// on it (at most max).
func (m *lvMap) locate(off, max int64) (lvLeg, int64, int64, error) {
	i := sort.Search(len(m.segs), func(i int) bool { return m.segs[i].start+m.segs[i].length > off })
	if i == len(m.segs) || m.segs[i].start > off {
		return lvLeg{}, 0, 0, fmt.Errorf("LVM2: no segment maps offset %d", off)
	}
	s := m.segs[i]
	in := off - s.start
	k := min(max, s.length-in)
	leg, at := s.legs[0], s.legs[0].off+in
	if len(s.legs) > 1 {
		unit := in / s.stripe
		leg = s.legs[unit%int64(len(s.legs))]
		at = leg.off + (unit/int64(len(s.legs)))*s.stripe + in%s.stripe
		k = min(k, s.stripe-in%s.stripe)
	}
	return leg, at, k, nil
}

func (m *lvMap) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for len(p) > 0 {
		if off >= m.size {
			return n, io.EOF
		}
		leg, at, k, err := m.locate(off, int64(len(p)))
		if err != nil {
			return n, err
		}
		got, err := leg.r.ReadAt(p[:k], at)
		n += got
		if err != nil {
			return n, err
		}
		p, off = p[k:], off+k
	}
	return n, nil
}

// onDisk maps the volume's range e to the byte ranges of the disk that
// hold it (striped segments give one range per stripe unit). Physical
// volumes are sections of the disk the volume was found on.
func (m *lvMap) onDisk(e Extent) ([]Extent, error) {
	var out []Extent
	for off, end := e.Offset, min(e.Offset+e.Length, m.size); off < end; {
		leg, at, k, err := m.locate(off, end-off)
		if err != nil {
			return nil, err
		}
		pv, ok := leg.r.(section)
		if !ok {
			return nil, errors.New("a physical volume is not on this disk")
		}
		out = addExtent(out, Extent{pv.off + at, k})
		off += k
	}
	return out, nil
}

// lvmSection is a section of LVM2's text format: values are int64,
// string, []any or lvmSection.
type lvmSection map[string]any

func (s lvmSection) num(k string) int64  { v, _ := s[k].(int64); return v }
func (s lvmSection) str(k string) string { v, _ := s[k].(string); return v }
func (s lvmSection) hasStatus(flag string) bool {
	st, _ := s["status"].([]any)
	for _, f := range st {
		if f == flag {
			return true
		}
	}
	return false
}

// parseLVMConfig parses LVM2's text metadata format.
func parseLVMConfig(b []byte) (lvmSection, error) {
	p := &lvmParser{b: b}
	s, err := p.section(0)
	if err != nil {
		return nil, fmt.Errorf("%w (at byte %d)", err, p.i)
	}
	return s, nil
}

type lvmParser struct {
	b []byte
	i int
}

func (p *lvmParser) skip() {
	for p.i < len(p.b) {
		switch c := p.b[p.i]; {
		case c == '#':
			for p.i < len(p.b) && p.b[p.i] != '\n' {
				p.i++
			}
		case unicode.IsSpace(rune(c)):
			p.i++
		default:
			return
		}
	}
}

func (p *lvmParser) word() string {
	start := p.i
	for p.i < len(p.b) {
		c := p.b[p.i]
		if !(c == '_' || c == '-' || c == '.' || c == '+' || unicode.IsLetter(rune(c)) || unicode.IsDigit(rune(c))) {
			break
		}
		p.i++
	}
	return string(p.b[start:p.i])
}

func (p *lvmParser) section(depth int) (lvmSection, error) {
	if depth > 16 {
		return nil, errors.New("sections nested too deep")
	}
	s := lvmSection{}
	for {
		p.skip()
		if p.i >= len(p.b) {
			if depth > 0 {
				return nil, errors.New("unterminated section")
			}
			return s, nil
		}
		if p.b[p.i] == '}' {
			if depth == 0 {
				return nil, errors.New("unexpected }")
			}
			p.i++
			return s, nil
		}
		key := p.word()
		if key == "" {
			return nil, fmt.Errorf("unexpected %q", p.b[p.i])
		}
		p.skip()
		if p.i >= len(p.b) {
			return nil, errors.New("unexpected end")
		}
		switch p.b[p.i] {
		case '{':
			p.i++
			sub, err := p.section(depth + 1)
			if err != nil {
				return nil, err
			}
			s[key] = sub
		case '=':
			p.i++
			v, err := p.value(true)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", key, err)
			}
			s[key] = v
		default:
			return nil, fmt.Errorf("%s: unexpected %q", key, p.b[p.i])
		}
	}
}

func (p *lvmParser) value(arrayOK bool) (any, error) {
	p.skip()
	if p.i >= len(p.b) {
		return nil, errors.New("missing value")
	}
	switch c := p.b[p.i]; {
	case c == '"':
		end := bytes.IndexByte(p.b[p.i+1:], '"')
		if end < 0 {
			return nil, errors.New("unterminated string")
		}
		v := string(p.b[p.i+1 : p.i+1+end])
		p.i += end + 2
		return v, nil
	case c == '[' && arrayOK:
		p.i++
		var arr []any
		for {
			p.skip()
			if p.i < len(p.b) && p.b[p.i] == ']' {
				p.i++
				return arr, nil
			}
			if len(arr) > 1<<16 {
				return nil, errors.New("array too long")
			}
			v, err := p.value(false)
			if err != nil {
				return nil, err
			}
			arr = append(arr, v)
			p.skip()
			if p.i < len(p.b) && p.b[p.i] == ',' {
				p.i++
			}
		}
	default:
		w := p.word()
		n, err := strconv.ParseInt(w, 10, 64)
		if err != nil {
			if f, ferr := strconv.ParseFloat(w, 64); ferr == nil {
				return int64(f), nil
			}
			return nil, fmt.Errorf("value %q", w)
		}
		return n, nil
	}
}
