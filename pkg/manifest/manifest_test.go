package manifest

import (
	"errors"
	"reflect"
	"testing"

	"github.com/strata-backup/strata/pkg/chunk"
)

func sample() *Manifest {
	m := &Manifest{BackupID: "0193-b", Disk: 1, ChunkSize: 1 << 20, DiskSize: 3<<20 + 5}
	m.IDs = []chunk.ID{chunk.Hash([]byte("a")), chunk.Zero, chunk.Hash([]byte("b")), chunk.Hash([]byte("c"))}
	return m
}

// located is sample with locations: two chunks in one pack, one on its own.
func located() *Manifest {
	m := sample()
	p := chunk.PackID{1, 2, 3}
	m.Locs = []chunk.Loc{{Pack: p, Off: 0, Len: 100}, {}, {}, {Pack: p, Off: 100, Len: 7}}
	return m
}

func TestRoundTrip(t *testing.T) {
	for _, m := range []*Manifest{sample(), located()} {
		b, err := m.Encode()
		if err != nil {
			t.Fatal(err)
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("got %+v, want %+v", got, m)
		}
		want := byte(1)
		if m.Locs != nil {
			want = 2
		}
		if b[9] != want {
			t.Fatalf("encoded as version %d, want %d", b[9], want)
		}
	}
}

func TestLocationsChecked(t *testing.T) {
	for name, edit := range map[string]func(m *Manifest){
		"count":           func(m *Manifest) { m.Locs = m.Locs[:3] },
		"zero chunk":      func(m *Manifest) { m.Locs[1] = m.Locs[0] },
		"empty range":     func(m *Manifest) { m.Locs[0].Len = 0 },
		"offset, no pack": func(m *Manifest) { m.Locs[2].Off = 9 },
	} {
		m := located()
		edit(m)
		if _, err := m.Encode(); err == nil {
			t.Errorf("%s: inconsistent locations encoded", name)
		}
	}
}

func TestChunkLen(t *testing.T) {
	if m := sample(); m.ChunkLen(3) != 5 || m.ChunkLen(0) != 1<<20 {
		t.Fatalf("chunk lengths %d %d", m.ChunkLen(3), m.ChunkLen(0))
	}
}

func TestDecodeRejectsEveryFlippedBitAndTruncation(t *testing.T) {
	b, _ := sample().Encode()
	b2, _ := located().Encode()
	for _, b := range [][]byte{b, b2} {
		for i := range b {
			bad := append([]byte(nil), b...)
			bad[i] ^= 0x80
			if _, err := Decode(bad); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("flip at %d accepted: %v", i, err)
			}
		}
		for n := 0; n < len(b); n += 13 {
			if _, err := Decode(b[:n]); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("truncated to %d accepted: %v", n, err)
			}
		}
	}
}

func TestEncodeRefusesInconsistent(t *testing.T) {
	m := sample()
	m.IDs = m.IDs[:2]
	if _, err := m.Encode(); err == nil {
		t.Fatal("wrong entry count encoded")
	}
}

// FuzzDecode: no input may panic or decode to an inconsistent manifest.
func FuzzDecode(f *testing.F) {
	b, _ := sample().Encode()
	f.Add(b)
	b, _ = located().Encode()
	f.Add(b)
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
		if err != nil || string(again) != string(data) {
			t.Fatalf("decoded manifest does not re-encode to its input")
		}
	})
}

func TestDecodeHeaderLocatesIDs(t *testing.T) {
	m := &Manifest{BackupID: "0190e1a0-0000-7000-8000-000000000001", Disk: 2, ChunkSize: 64 << 10, DiskSize: 5*64<<10 + 7}
	for i := 0; i < 6; i++ {
		m.IDs = append(m.IDs, chunk.Hash([]byte{byte(i)}))
	}
	for _, locs := range [][]chunk.Loc{nil, {{Pack: chunk.PackID{9}, Len: 1}, {}, {Pack: chunk.PackID{9}, Off: 1, Len: 2}, {}, {}, {Pack: chunk.PackID{8}, Len: 3}}} {
		m.Locs = locs
		b, err := m.Encode()
		if err != nil {
			t.Fatal(err)
		}
		h, err := DecodeHeader(b[:min(len(b), MaxHeaderLen)])
		if err != nil {
			t.Fatal(err)
		}
		if h.Count != 6 || h.Disk != 2 || h.BackupID != m.BackupID || h.ChunkSize != m.ChunkSize || h.DiskSize != m.DiskSize {
			t.Fatalf("header %+v", h)
		}
		// entries 2..4 from their byte range alone
		at := h.IDsAt + int64(h.EntryLen)*2
		ids, gotLocs, err := h.DecodeEntries(b[at:at+int64(h.EntryLen)*3], 3)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(ids, m.IDs[2:5]) {
			t.Fatalf("entries 2..4 at the header's offset differ")
		}
		if locs == nil && gotLocs != nil || locs != nil && !reflect.DeepEqual(gotLocs, locs[2:5]) {
			t.Fatalf("locations %v, want %v", gotLocs, locs)
		}
		for _, bad := range [][]byte{b[:10], []byte("NOTAMANIFEST...."), append([]byte("STRATAMF\x00\x09"), b[10:]...)} {
			if _, err := DecodeHeader(bad); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("bad header accepted: %v", err)
			}
		}
	}
}
