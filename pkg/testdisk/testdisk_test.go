package testdisk

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestDeterministic(t *testing.T) {
	dir := t.TempDir()
	a, b, c := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "c")
	for _, p := range []string{a, b} {
		if err := Write(p, 40<<20+123, 7); err != nil {
			t.Fatal(err)
		}
	}
	Write(c, 40<<20+123, 8)
	da, _ := os.ReadFile(a)
	db, _ := os.ReadFile(b)
	dc, _ := os.ReadFile(c)
	if !bytes.Equal(da, db) || bytes.Equal(da, dc) || len(da) != 40<<20+123 {
		t.Fatal("same seed must give the same image, another seed another one")
	}
}
