package chunk

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"
)

func TestEncodeDecode(t *testing.T) {
	random := make([]byte, 1<<20)
	rand.Read(random)
	text := bytes.Repeat([]byte("the quick brown fox "), 50000)
	tests := []struct {
		name      string
		data      []byte
		codec     Codec
		wantCodec byte
	}{
		{"text compresses", text, Zstd, codecZstd},
		{"text compresses with s2", text, S2, codecS2},
		{"none stores raw", text, Raw, codecRaw},
		{"random gives up", random, Zstd, codecRaw},
		{"random gives up with s2", random, S2, codecRaw},
		{"short tail chunk", []byte("x"), Zstd, codecRaw},
		{"short tail chunk with s2", []byte("x"), S2, codecRaw},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, dst := range [][]byte{nil, make([]byte, 0, 16), make([]byte, 0, 4<<20)} {
				obj := AppendEncode(dst, tc.data, tc.codec)
				if obj[4] != tc.wantCodec {
					t.Fatalf("codec %d, want %d", obj[4], tc.wantCodec)
				}
				got, err := Decode(obj, Hash(tc.data))
				if err != nil || !bytes.Equal(got, tc.data) {
					t.Fatalf("round trip: %v", err)
				}
			}
		})
	}
	// Appending keeps what dst held.
	obj := AppendEncode([]byte("prefix"), text, S2)
	if string(obj[:6]) != "prefix" {
		t.Fatal("AppendEncode overwrote dst")
	}
	if got, err := Decode(obj[6:], Hash(text)); err != nil || !bytes.Equal(got, text) {
		t.Fatalf("appended round trip: %v", err)
	}
}

// Encoding into MaxStoredLen of room never leaves it: packs encode chunks
// straight into slots of that size, and a codec that outgrows one
// allocates and copies a buffer per chunk.
func TestMaxStoredLenHoldsEveryCodec(t *testing.T) {
	for _, n := range []int{1, 4096, 256 << 10, 1 << 20} {
		random := make([]byte, n)
		rand.Read(random)
		for _, c := range []Codec{Zstd, S2, Raw} {
			slot := make([]byte, 0, MaxStoredLen(n))
			AppendEncode(slot, random, c) // the zstd encoder's own state, once
			if allocs := testing.AllocsPerRun(10, func() { AppendEncode(slot, random, c) }); allocs >= 1 {
				t.Fatalf("%s of %d random bytes into MaxStoredLen (%d): %.0f allocations", c, n, cap(slot), allocs)
			}
		}
	}
}

func TestParseCodec(t *testing.T) {
	for _, c := range []Codec{Zstd, S2, Raw} {
		if got, err := ParseCodec(c.String()); err != nil || got != c {
			t.Fatalf("%s: %v %v", c, got, err)
		}
	}
	if _, err := ParseCodec("lz5"); err == nil {
		t.Fatal("unknown codec accepted")
	}
}

func TestDecodeRejectsCorruption(t *testing.T) {
	for _, c := range []Codec{Zstd, S2} {
		t.Run(c.String(), func(t *testing.T) { testDecodeRejectsCorruption(t, c) })
	}
}

func testDecodeRejectsCorruption(t *testing.T, c Codec) {
	data := bytes.Repeat([]byte("abcdefgh"), 8192)
	id := Hash(data)
	obj := AppendEncode(nil, data, c)
	for i := 0; i < len(obj); i += 7 {
		bad := append([]byte(nil), obj...)
		bad[i] ^= 0x01
		if got, err := Decode(bad, id); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("flipped bit at byte %d: got %d bytes, err %v", i, len(got), err)
		}
	}
	if _, err := Decode(obj[:len(obj)-1], id); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("truncated chunk accepted: %v", err)
	}
	if _, err := Decode(obj, Hash([]byte("other"))); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("wrong id accepted: %v", err)
	}
}

func TestAllZero(t *testing.T) {
	z := make([]byte, 200<<10)
	if !AllZero(z) {
		t.Fatal("zeros not detected")
	}
	z[len(z)-1] = 1
	if AllZero(z) {
		t.Fatal("last byte ignored")
	}
}

func BenchmarkEncodeText(b *testing.B) {
	data := bytes.Repeat([]byte("log line 42: all systems nominal\n"), 1<<20/33)
	b.SetBytes(int64(len(data)))
	for i := 0; i < b.N; i++ {
		Encode(data)
	}
}

func BenchmarkEncodeRandom(b *testing.B) {
	data := make([]byte, 256<<10)
	rand.Read(data)
	b.SetBytes(int64(len(data)))
	for i := 0; i < b.N; i++ {
		Encode(data)
	}
}

func BenchmarkHash(b *testing.B) {
	data := make([]byte, 256<<10)
	rand.Read(data)
	b.SetBytes(int64(len(data)))
	for i := 0; i < b.N; i++ {
		Hash(data)
	}
}

// BenchmarkEncodeParallel: compression from as many goroutines as a
// transfer worker runs uploads (text-like 256 KiB chunks).
func BenchmarkEncodeParallel(b *testing.B) {
	data := bytes.Repeat([]byte("kernel backup strata block inode journal "), 256<<10/41+1)[:256<<10]
	b.SetBytes(int64(len(data)))
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			Encode(data)
		}
	})
}

// FuzzDecode: whatever a stored object holds, Decode returns the bytes of
// the id or an error wrapping ErrCorrupt — never a panic, never other bytes.
func FuzzDecode(f *testing.F) {
	data := bytes.Repeat([]byte("strata chunk "), 3000)
	f.Add(AppendEncode(nil, data, Zstd))
	f.Add(AppendEncode(nil, data, S2))
	f.Add(AppendEncode(nil, data, Raw))
	id := Hash(data)
	f.Fuzz(func(t *testing.T, obj []byte) {
		got, err := Decode(obj, id)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error not wrapping ErrCorrupt: %v", err)
			}
			return
		}
		if !bytes.Equal(got, data) {
			t.Fatal("decoded bytes differ from the id's")
		}
	})
}
