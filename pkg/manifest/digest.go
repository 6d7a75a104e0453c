package manifest

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"

	"github.com/strata-backup/strata/pkg/chunk"
)

// Digester computes the certify digest of a disk: SHA-256 over its chunk
// ids in disk order, all-zero chunks as the zero id — the root of a
// one-level hash tree over the chunk map. Computed the same way from a
// source re-read and from a manifest whose chunks all read back good, it
// proves both hold the same bytes at every offset.
type Digester struct{ h hash.Hash }

// NewDigester starts a digest.
func NewDigester() *Digester { return &Digester{h: sha256.New()} }

// Add adds the next chunk's id.
func (d *Digester) Add(id chunk.ID) { d.h.Write(id[:]) }

// zeroIDs is a run of zero ids written at once: a zero run of a big disk
// costs hashing, not a call per chunk.
var zeroIDs = make([]byte, 1024*len(chunk.Zero))

// AddZeros adds n all-zero chunks.
func (d *Digester) AddZeros(n int64) {
	for n > 0 {
		k := min(n, int64(len(zeroIDs)/len(chunk.Zero)))
		d.h.Write(zeroIDs[:k*int64(len(chunk.Zero))])
		n -= k
	}
}

// Sum is the digest, in hex.
func (d *Digester) Sum() string { return hex.EncodeToString(d.h.Sum(nil)) }

// Digest is the certify digest of the chunk map (see Digester); it says
// something about the disk only once every chunk was read back good.
func (m *Manifest) Digest() string {
	d := NewDigester()
	next := int64(0)
	for i, r := range m.Data() {
		d.AddZeros(i - next)
		d.Add(r.ID)
		next = i + 1
	}
	d.AddZeros(m.Count() - next)
	return d.Sum()
}
