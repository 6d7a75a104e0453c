// Package demodisk generates deterministic raw disk images (`strata mkdisk`,
// the demo disks, benchmarks and tests) that look like real ones to a backup:
// holes, zero runs, incompressible data, text-like data and repeated blocks,
// at offsets that do not line up with chunks.
package demodisk

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
)

// Write creates a sparse image of size bytes at path from seed. Same size
// and seed, same bytes.
func Write(path string, size int64, seed uint64) error { return write(path, size, seed, false) }

// WriteAllocated is Write without holes or zero runs: every block holds
// data (incompressible, text-like or repeated), as on a disk that has
// been in use for a while.
func WriteAllocated(path string, size int64, seed uint64) error { return write(path, size, seed, true) }

func write(path string, size int64, seed uint64, allocated bool) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return err
	}
	rng := rand.New(rand.NewChaCha8(seedBytes(seed)))
	words := []string{"kernel", "backup", "strata", "block", "inode", "journal", "the", "of", "and", "error", "ok", "0x1f", "vm"}
	repeated := make([]byte, 1<<20)
	fillRandom(rng, repeated)
	buf := make([]byte, 4<<20)
	for off := int64(0); off < size; {
		n := min(int64(1<<20+rng.IntN(3<<20)), size-off)
		b := buf[:n]
		kind := rng.IntN(5)
		if allocated && (kind == 0 || kind == 4) {
			kind = 1 + rng.IntN(3)
		}
		switch kind {
		case 0: // hole: never written
			off += n
			continue
		case 1: // incompressible
			fillRandom(rng, b)
		case 2: // text-like: compresses well
			var t bytes.Buffer
			for int64(t.Len()) < n {
				t.WriteString(words[rng.IntN(len(words))])
				if rng.IntN(8) == 0 {
					t.WriteByte('\n')
				} else {
					t.WriteByte(' ')
				}
			}
			copy(b, t.Bytes())
		case 3: // repeated block: deduplicates
			for i := int64(0); i < n; i += int64(len(repeated)) {
				copy(b[i:], repeated)
			}
		case 4: // written zeros: not a hole, but must not be stored
			clear(b)
		}
		if _, err := f.WriteAt(b, off); err != nil {
			return fmt.Errorf("write test disk: %w", err)
		}
		off += n
	}
	return f.Close()
}

func seedBytes(seed uint64) [32]byte {
	var s [32]byte
	for i := 0; i < 8; i++ {
		s[i] = byte(seed >> (8 * i))
	}
	return s
}

func fillRandom(rng *rand.Rand, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
}
