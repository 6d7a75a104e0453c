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
	tests := []struct {
		name      string
		data      []byte
		wantCodec byte
	}{
		{"text compresses", bytes.Repeat([]byte("the quick brown fox "), 50000), codecZstd},
		{"random gives up", random, codecRaw},
		{"short tail chunk", []byte("x"), codecRaw},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			obj := Encode(tc.data)
			if obj[4] != tc.wantCodec {
				t.Fatalf("codec %d, want %d", obj[4], tc.wantCodec)
			}
			got, err := Decode(obj, Hash(tc.data))
			if err != nil || !bytes.Equal(got, tc.data) {
				t.Fatalf("round trip: %v", err)
			}
		})
	}
}

func TestDecodeRejectsCorruption(t *testing.T) {
	data := bytes.Repeat([]byte("abcdefgh"), 8192)
	id := Hash(data)
	obj := Encode(data)
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
