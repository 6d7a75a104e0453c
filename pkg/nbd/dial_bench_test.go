package nbd

import (
	"os"
	"testing"
)

func BenchmarkDial(b *testing.B) {
	addr := os.Getenv("NBD_BENCH_ADDR")
	if addr == "" {
		b.Skip("NBD_BENCH_ADDR not set")
	}
	for b.Loop() {
		c, err := Dial(addr, "disk", "base:allocation", "qemu:dirty-bitmap:b1")
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}
