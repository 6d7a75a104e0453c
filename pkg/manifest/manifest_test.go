package manifest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/strata-backup/strata/pkg/chunk"
)

func dense(t testing.TB, backupID string, disk, chunkSize int, size int64, ids []chunk.ID, locs []chunk.Loc) *Manifest {
	t.Helper()
	m, err := FromIDs(backupID, disk, chunkSize, size, ids, locs)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func sample(t testing.TB) *Manifest {
	return dense(t, "0193-b", 1, 1<<20, 3<<20+5, []chunk.ID{chunk.Hash([]byte("a")), chunk.Zero, chunk.Hash([]byte("b")), chunk.Hash([]byte("c"))}, nil)
}

// located is sample with locations: two chunks in one pack, one on its own.
func located(t testing.TB) *Manifest {
	p := chunk.PackID{1, 2, 3}
	return dense(t, "0193-b", 1, 1<<20, 3<<20+5, []chunk.ID{chunk.Hash([]byte("a")), chunk.Zero, chunk.Hash([]byte("b")), chunk.Hash([]byte("c"))},
		[]chunk.Loc{{Pack: p, Off: 0, Len: 100}, {}, {}, {Pack: p, Off: 100, Len: 7}})
}

// encodeLegacy writes version 1 (no locations) or 2, as earlier builds did.
func encodeLegacy(m *Manifest) []byte {
	v := uint16(1)
	if m.HasLocs() {
		v = 2
	}
	b := bytes.NewBuffer(m.header(v))
	for i := range m.Count() {
		r := m.Ref(i)
		b.Write(r.ID[:])
		if v == 2 {
			b.Write(r.Loc.Pack[:])
			binary.Write(b, binary.BigEndian, r.Loc.Off)
			binary.Write(b, binary.BigEndian, r.Loc.Len)
		}
	}
	sum := sha256.Sum256(b.Bytes())
	b.Write(sum[:])
	return b.Bytes()
}

// big is a sparse disk: every tag of the location encoding, runs across
// block boundaries, long zero runs, a short last chunk.
func big(t testing.TB, chunks int64) *Manifest {
	m := New("0193-big", 0, 64<<10, chunks*(64<<10)-3)
	rng := rand.New(rand.NewPCG(1, 2))
	var pack chunk.PackID
	off := uint32(0)
	for i := int64(0); i < chunks; i++ {
		if rng.IntN(3) == 0 && i != chunks-1 { // zero chunks, and sometimes a long run of them
			if rng.IntN(50) == 0 {
				i += int64(rng.IntN(5000))
			}
			continue
		}
		r := chunk.Ref{ID: chunk.Hash(binary.BigEndian.AppendUint64(nil, uint64(i)))}
		switch rng.IntN(6) {
		case 0: // loose
		case 1:
			pack = chunk.PackID{byte(i), byte(i >> 8), byte(i >> 16), 1}
			off = 0
			fallthrough
		default:
			r.Loc = chunk.Loc{Pack: pack, Off: off, Len: uint32(1 + rng.IntN(70000))}
			if pack.IsZero() {
				r.Loc = chunk.Loc{}
			}
			off += r.Loc.Len
			if rng.IntN(4) == 0 {
				off += 9 // a gap: tag 3
			}
		}
		if err := m.Append(i, r); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

func TestRoundTrip(t *testing.T) {
	for _, m := range []*Manifest{sample(t), located(t), big(t, 30000), New("empty", 0, 64<<10, 1<<40)} {
		b, err := m.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if b[9] != Version {
			t.Fatalf("encoded as version %d", b[9])
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("round trip of %s differs", m.BackupID)
		}
		if got, err = DecodeFrom(bytes.NewReader(b), int64(len(b))); err != nil || !reflect.DeepEqual(got, m) {
			t.Fatalf("DecodeFrom of %s differs: %v", m.BackupID, err)
		}
	}
}

func TestOlderVersionsRead(t *testing.T) {
	for _, m := range []*Manifest{sample(t), located(t), big(t, 3000)} {
		b := encodeLegacy(m)
		got, err := Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("version %d of %s read differently", b[9], m.BackupID)
		}
		if got, err = DecodeFrom(bytes.NewReader(b), int64(len(b))); err != nil || !reflect.DeepEqual(got, m) {
			t.Fatalf("DecodeFrom of version %d of %s differs: %v", b[9], m.BackupID, err)
		}
	}
}

func TestSizeFollowsData(t *testing.T) {
	// 16 TiB of 256 KiB chunks with a few MiB at the start, middle and end:
	// version 2 took 3.5 GB for this.
	m := New("0193-16t", 0, 256<<10, 16<<40)
	p := chunk.PackID{7}
	off := uint32(0)
	for _, at := range []int64{0, m.Count() / 2, m.Count() - 8} {
		for i := at; i < at+8; i++ {
			if err := m.Append(i, chunk.Ref{ID: chunk.Hash(binary.BigEndian.AppendUint64(nil, uint64(i))), Loc: chunk.Loc{Pack: p, Off: off, Len: 1000}}); err != nil {
				t.Fatal(err)
			}
			off += 1000
		}
	}
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 4096 {
		t.Fatalf("%d bytes for 24 chunks of a 16 TiB disk", len(b))
	}
	if m.DataBytes() != 24*256<<10 || m.ZeroChunks() != m.Count()-24 {
		t.Fatalf("data %d bytes, %d zero chunks", m.DataBytes(), m.ZeroChunks())
	}
	got, err := Decode(b)
	if err != nil || !reflect.DeepEqual(got, m) {
		t.Fatalf("decode: %v", err)
	}
}

func TestAccessors(t *testing.T) {
	m := big(t, 20000)
	ids := make([]chunk.ID, m.Count())
	locs := make([]chunk.Loc, m.Count())
	var n int64
	for i, r := range m.Data() {
		ids[i], locs[i] = r.ID, r.Loc
		n++
	}
	if n != m.DataChunks() {
		t.Fatalf("Data yielded %d of %d", n, m.DataChunks())
	}
	for i := range m.Count() {
		if m.ID(i) != ids[i] || m.Loc(i) != locs[i] || m.Ref(i) != (chunk.Ref{ID: ids[i], Loc: locs[i]}) {
			t.Fatalf("chunk %d differs", i)
		}
	}
	for _, r := range [][2]int64{{0, 1}, {5, 9000}, {12345, 12346}, {19990, 20000}, {0, 20000}} {
		prev := r[0] - 1
		for i, ref := range m.DataIn(r[0], r[1]) {
			if i <= prev || i >= r[1] || ref.ID != ids[i] {
				t.Fatalf("DataIn%v yielded %d", r, i)
			}
			for k := prev + 1; k < i; k++ {
				if !ids[k].IsZero() {
					t.Fatalf("DataIn%v skipped chunk %d", r, k)
				}
			}
			prev = i
		}
	}
	var bytesHeld int64
	for i := range m.Count() {
		if !ids[i].IsZero() {
			bytesHeld += int64(m.ChunkLen(i))
		}
	}
	if m.DataBytes() != bytesHeld {
		t.Fatalf("DataBytes %d, want %d", m.DataBytes(), bytesHeld)
	}
	d := NewDigester()
	for _, id := range ids {
		d.Add(id)
	}
	if d.Sum() != m.Digest() {
		t.Fatal("the digest of the runs differs from the digest of every id")
	}
}

func TestReadSlice(t *testing.T) {
	m := big(t, 20000)
	v3, _ := m.Encode()
	for _, b := range [][]byte{v3, encodeLegacy(m)} {
		reads := 0
		get := func(off, n int64) ([]byte, error) {
			reads++
			if off >= int64(len(b)) {
				return nil, fmt.Errorf("read at %d of %d", off, len(b))
			}
			return b[off:min(off+n, int64(len(b)))], nil
		}
		for _, r := range [][2]int64{{0, 256}, {4000, 256}, {8100, 256}, {19744, 256}, {0, 20000}} {
			reads = 0
			_, ids, locs, err := ReadSlice(get, r[0], r[1])
			if err != nil {
				t.Fatal(err)
			}
			for k := range ids {
				i := r[0] + int64(k)
				var l chunk.Loc
				if locs != nil {
					l = locs[k]
				}
				if ids[k] != m.ID(i) || l != m.Loc(i) {
					t.Fatalf("version %d, slice %v: chunk %d differs", b[9], r, i)
				}
			}
			if r[1] == 256 && reads > 4 {
				t.Fatalf("version %d: %d reads for one segment", b[9], reads)
			}
		}
		if _, _, _, err := ReadSlice(get, 19900, 200); err == nil {
			t.Fatal("a slice past the end was read")
		}
	}
	// a damaged block is refused, not read as other ids
	h, _ := DecodeHeader(v3[:MaxHeaderLen])
	bad := append([]byte(nil), v3...)
	bad[h.IndexAt+int64(h.Blocks)*indexEntry+20] ^= 1
	get := func(off, n int64) ([]byte, error) { return bad[off:min(off+n, int64(len(bad)))], nil }
	if _, _, _, err := ReadSlice(get, 0, 256); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged block read: %v", err)
	}
}

func TestAppendRefuses(t *testing.T) {
	p := chunk.PackID{1}
	for name, f := range map[string]func(m *Manifest) error{
		"out of order": func(m *Manifest) error {
			m.Append(2, chunk.Ref{ID: chunk.Hash([]byte("x"))})
			return m.Append(1, chunk.Ref{ID: chunk.Hash([]byte("y"))})
		},
		"twice": func(m *Manifest) error {
			m.Append(2, chunk.Ref{ID: chunk.Hash([]byte("x"))})
			return m.Append(2, chunk.Ref{ID: chunk.Hash([]byte("y"))})
		},
		"past the end":      func(m *Manifest) error { return m.Append(4, chunk.Ref{ID: chunk.Hash([]byte("x"))}) },
		"negative":          func(m *Manifest) error { return m.Append(-1, chunk.Ref{ID: chunk.Hash([]byte("x"))}) },
		"zero chunk packed": func(m *Manifest) error { return m.Append(0, chunk.Ref{Loc: chunk.Loc{Pack: p, Len: 1}}) },
		"empty range": func(m *Manifest) error {
			return m.Append(0, chunk.Ref{ID: chunk.Hash([]byte("x")), Loc: chunk.Loc{Pack: p}})
		},
		"offset, no pack": func(m *Manifest) error {
			return m.Append(0, chunk.Ref{ID: chunk.Hash([]byte("x")), Loc: chunk.Loc{Off: 9}})
		},
	} {
		if err := f(sample(t)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := FromIDs("b", 0, 1<<20, 3<<20, make([]chunk.ID, 2), nil); err == nil {
		t.Fatal("wrong entry count accepted")
	}
}

func TestChunkLen(t *testing.T) {
	if m := sample(t); m.ChunkLen(3) != 5 || m.ChunkLen(0) != 1<<20 {
		t.Fatalf("chunk lengths %d %d", m.ChunkLen(3), m.ChunkLen(0))
	}
}

func TestDecodeRejectsEveryFlippedBitAndTruncation(t *testing.T) {
	var all [][]byte
	for _, m := range []*Manifest{sample(t), located(t), big(t, 9000)} {
		b, _ := m.Encode()
		all = append(all, b, encodeLegacy(m))
	}
	for _, b := range all {
		step := 1 + len(b)/1000
		for i := 0; i < len(b); i += step {
			bad := append([]byte(nil), b...)
			bad[i] ^= 0x80
			if _, err := Decode(bad); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("flip at %d accepted: %v", i, err)
			}
			if _, err := DecodeFrom(bytes.NewReader(bad), int64(len(bad))); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("DecodeFrom: flip at %d accepted: %v", i, err)
			}
		}
		for n := 0; n < len(b); n += 13 * step {
			if _, err := Decode(b[:n]); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("truncated to %d accepted: %v", n, err)
			}
			if _, err := DecodeFrom(bytes.NewReader(b[:n]), int64(n)); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("DecodeFrom: truncated to %d accepted: %v", n, err)
			}
		}
	}
}

// FuzzDecode: no input may panic or decode to an inconsistent manifest.
func FuzzDecode(f *testing.F) {
	for _, m := range []*Manifest{sample(f), located(f), big(f, 300)} {
		b, _ := m.Encode()
		f.Add(b)
		f.Add(encodeLegacy(m))
	}
	f.Add([]byte("STRATAMF"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Decode(data)
		if err != nil {
			return
		}
		if err := m.Check(); err != nil {
			t.Fatalf("decoded an inconsistent manifest: %v", err)
		}
		again, err := m.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if m2, err := Decode(again); err != nil || !reflect.DeepEqual(m2, m) {
			t.Fatalf("decoded manifest does not survive a re-encoding: %v", err)
		}
	})
}

func TestDecodeHeader(t *testing.T) {
	m := located(t)
	b, _ := m.Encode()
	for _, b := range [][]byte{b, encodeLegacy(m)} {
		h, err := DecodeHeader(b[:min(len(b), MaxHeaderLen)])
		if err != nil {
			t.Fatal(err)
		}
		if h.Count != 4 || h.Disk != 1 || h.BackupID != m.BackupID || h.ChunkSize != m.ChunkSize || h.DiskSize != m.DiskSize {
			t.Fatalf("header %+v", h)
		}
		for _, bad := range [][]byte{b[:10], []byte("NOTAMANIFEST...."), append([]byte("STRATAMF\x00\x09"), b[10:]...)} {
			if _, err := DecodeHeader(bad); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("bad header accepted: %v", err)
			}
		}
	}
}

func BenchmarkEncodeDecode(b *testing.B) {
	m := big(b, 1<<20)
	for b.Loop() {
		enc, _ := m.Encode()
		if _, err := Decode(enc); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(len(enc))/float64(m.DataChunks()), "B/chunk")
	}
}
