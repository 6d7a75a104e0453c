package directio

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestBufferIsAligned(t *testing.T) {
	for _, n := range []int{1, Align, 3*Align + 17, 1 << 20} {
		b := Buffer(n)
		if len(b) != n || cap(b) != n || !Aligned(b) {
			t.Fatalf("Buffer(%d): len %d cap %d aligned %v", n, len(b), cap(b), Aligned(b))
		}
	}
	if Aligned(Buffer(2 * Align)[1:]) {
		t.Fatal("an offset of one byte counted as aligned")
	}
}

// Whole blocks direct, then the tail through the cache after Stop: the
// file holds every byte.
func TestOpenWriteStop(t *testing.T) {
	name := filepath.Join(t.TempDir(), "f")
	f, direct, err := Open(name, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	data := Buffer(5*Align + 123)
	for i := range data {
		data[i] = byte(i * 13)
	}
	n := len(data) &^ (Align - 1)
	if _, err := f.Write(data[:n]); err != nil {
		t.Fatalf("direct %v: %v", direct, err)
	}
	if err := Stop(f); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data[n:]); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got, err := os.ReadFile(name)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v, equal %v", err, bytes.Equal(got, data))
	}
}
