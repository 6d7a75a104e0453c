package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/objstore"
)

// packOf fills a pack with n distinct chunks and stores it.
func packOf(t *testing.T, r *Repository, n int) (*Pack, [][]byte) {
	t.Helper()
	p := NewPack()
	var datas [][]byte
	for i := range n {
		data := bytes.Repeat([]byte(fmt.Sprintf("chunk %d ", i)), 100+i)
		id := r.ChunkID(data)
		if _, err := r.AddChunk(p, id, data, chunk.Zstd); err != nil {
			t.Fatal(err)
		}
		datas = append(datas, data)
	}
	if err := r.PutPack(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	return p, datas
}

func TestPackRoundTrip(t *testing.T) {
	for _, keys := range []*Keys{nil, testKeys(t, 7)} {
		t.Run(fmt.Sprint("encrypted=", keys != nil), func(t *testing.T) {
			ctx := context.Background()
			store := objstore.NewMem()
			r, err := Open(ctx, store, 64<<10, keys)
			if err != nil {
				t.Fatal(err)
			}
			p, datas := packOf(t, r, 5)
			for i, e := range p.Entries() {
				got, err := r.ReadChunk(ctx, e.ID, e.Loc)
				if err != nil || !bytes.Equal(got, datas[i]) {
					t.Fatalf("chunk %d at %s: %v", i, e.Loc, err)
				}
			}
			// The trailer alone says what the pack holds.
			info, err := store.Stat(ctx, PackKey(p.ID))
			if err != nil {
				t.Fatal(err)
			}
			for _, size := range []int64{0, info.Size} {
				index, err := r.PackIndex(ctx, p.ID, size)
				if err != nil {
					t.Fatal(err)
				}
				if fmt.Sprint(index) != fmt.Sprint(p.Entries()) {
					t.Fatalf("index %v, want %v", index, p.Entries())
				}
			}
			var listed []chunk.PackID
			if err := r.ListPacks(ctx, 0, 256, func(id chunk.PackID, _ objstore.Info) error {
				listed = append(listed, id)
				return nil
			}); err != nil || len(listed) != 1 || listed[0] != p.ID {
				t.Fatalf("ListPacks = %v %v", listed, err)
			}
			// A range that is not the chunk, or a chunk asked for by
			// another id, is corrupt, never other bytes.
			e := p.Entries()[1]
			wrong := e.Loc
			wrong.Off++
			if _, err := r.ReadChunk(ctx, e.ID, wrong); !errors.Is(err, chunk.ErrCorrupt) {
				t.Fatalf("read at a wrong offset: %v", err)
			}
			if _, err := r.ReadChunk(ctx, p.Entries()[0].ID, e.Loc); !errors.Is(err, chunk.ErrCorrupt) {
				t.Fatalf("read of another chunk's range: %v", err)
			}
			gone := e.Loc
			gone.Pack = NewPack().ID
			if _, err := r.ReadChunk(ctx, e.ID, gone); !errors.Is(err, objstore.ErrNotFound) {
				t.Fatalf("read from a missing pack: %v", err)
			}
		})
	}
}

func TestPackIndexLargeTrailer(t *testing.T) {
	// More entries than the first tail read holds: a second read.
	ctx := context.Background()
	r, _ := Open(ctx, objstore.NewMem(), 64<<10, nil)
	p, _ := packOf(t, r, 2000)
	index, err := r.PackIndex(ctx, p.ID, 0)
	if err != nil || len(index) != 2000 || index[1999] != p.Entries()[1999] {
		t.Fatalf("index of %d entries: %v", len(index), err)
	}
}

func TestPackIndexRefusesDamage(t *testing.T) {
	ctx := context.Background()
	store := objstore.NewMem()
	r, _ := Open(ctx, store, 64<<10, nil)
	p, _ := packOf(t, r, 3)
	key := PackKey(p.ID)
	good, _ := store.Get(ctx, key)
	for name, obj := range map[string][]byte{
		"truncated":        good[:len(good)-3],
		"no trailer":       good[:len(good)/2],
		"flipped index":    flip(good, len(good)-packTailLen-sha256Len-5),
		"tiny":             []byte("STRATAPK"),
		"huge index claim": append(append([]byte{}, good[:len(good)-packTailLen]...), 0xff, 0xff, 0xff, 0xff, 'S', 'T', 'R', 'A', 'T', 'A', 'P', 'K'),
	} {
		if err := store.Put(ctx, key, obj); err != nil {
			t.Fatal(err)
		}
		if _, err := r.PackIndex(ctx, p.ID, 0); !errors.Is(err, ErrCorruptPack) {
			t.Errorf("%s: %v, want ErrCorruptPack", name, err)
		}
	}
}

const sha256Len = 32

func flip(b []byte, at int) []byte {
	c := append([]byte{}, b...)
	c[at] ^= 0x40
	return c
}

// FuzzPackIndex: whatever a pack object holds, reading its index returns
// entries inside it or an error, never a panic.
func FuzzPackIndex(f *testing.F) {
	ctx := context.Background()
	store := objstore.NewMem()
	r, _ := Open(ctx, store, 64<<10, nil)
	p := NewPack()
	for i := range 3 {
		data := []byte(fmt.Sprint("seed chunk ", i))
		id := r.ChunkID(data)
		r.AddChunk(p, id, data, chunk.S2)
	}
	r.PutPack(ctx, p)
	seed, _ := store.Get(ctx, PackKey(p.ID))
	f.Add(seed)
	f.Add([]byte("STRATAPK"))
	f.Fuzz(func(t *testing.T, obj []byte) {
		store.Put(ctx, PackKey(p.ID), obj)
		entries, err := r.PackIndex(ctx, p.ID, 0)
		if err != nil {
			return
		}
		for _, e := range entries {
			if int(e.Loc.Off)+int(e.Loc.Len) > len(obj) {
				t.Fatalf("entry %s outside a %d-byte pack", e.Loc, len(obj))
			}
			r.ReadChunk(ctx, e.ID, e.Loc)
		}
	})
}

// A run of chunks read with one request; a bad chunk in it sends the run
// chunk by chunk, where a repair stored on its own is found.
func TestReadRun(t *testing.T) {
	ctx := context.Background()
	store := objstore.NewMem()
	r, _ := Open(ctx, store, 64<<10, nil)
	p, datas := packOf(t, r, 6)
	refs := make([]chunk.Ref, 0, 6)
	for _, e := range p.Entries() {
		refs = append(refs, chunk.Ref{ID: e.ID, Loc: e.Loc})
	}
	got, err := r.ReadRun(ctx, refs[1:5])
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range got {
		if !bytes.Equal(b, datas[1+i]) {
			t.Fatalf("chunk %d of the run differs", i)
		}
	}
	if _, err := r.ReadRun(ctx, []chunk.Ref{refs[1], refs[3]}); err == nil {
		t.Fatal("a run with a gap was read")
	}
	key := PackKey(p.ID)
	obj, _ := store.Get(ctx, key)
	store.Put(ctx, key, flip(obj, int(refs[3].Loc.Off)+int(refs[3].Loc.Len)/2))
	if _, err := r.ReadRun(ctx, refs); !errors.Is(err, chunk.ErrCorrupt) || !strings.Contains(err.Error(), refs[3].ID.String()) {
		t.Fatalf("run through a corrupt chunk: %v", err)
	}
	// the repair, on its own
	if err := r.Chunks.PutChunk(ctx, refs[3].ID, r.AppendChunk(nil, refs[3].ID, datas[3], chunk.Zstd)); err != nil {
		t.Fatal(err)
	}
	got, err = r.ReadRun(ctx, refs)
	if err != nil || !bytes.Equal(got[3], datas[3]) || !bytes.Equal(got[5], datas[5]) {
		t.Fatalf("run after the repair: %v", err)
	}
}

// PackChunks encodes straight into the pack: every codec, compressible and
// incompressible chunks (stored raw), plaintext and sealed, a pack reused
// after Reset and one already holding a chunk; every chunk reads back
// bit-exact from where its entry says, entries lie back to back, and the
// trailer agrees with them.
func TestPackChunks(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var datas [][]byte
	for i := range 12 {
		d := make([]byte, 1000+rng.IntN(70000))
		switch i % 3 {
		case 0:
			for j := range d {
				d[j] = byte(rng.Uint32())
			}
		case 1:
			copy(d, bytes.Repeat([]byte(fmt.Sprintf("line %d of a log\n", i)), len(d)))
		}
		datas = append(datas, d)
	}
	for _, keys := range []*Keys{nil, testKeys(t, 9)} {
		for _, c := range []chunk.Codec{chunk.Zstd, chunk.S2, chunk.Raw} {
			t.Run(fmt.Sprintf("encrypted=%v/%s", keys != nil, c), func(t *testing.T) {
				ctx := context.Background()
				store := objstore.NewMem()
				r, err := Open(ctx, store, 64<<10, keys)
				if err != nil {
					t.Fatal(err)
				}
				p := NewPack()
				for round := range 2 {
					p.Reset()
					first := []byte("already in the pack")
					firstID := r.ChunkID(first)
					if _, err := r.AddChunk(p, firstID, first, c); err != nil {
						t.Fatal(err)
					}
					ids := make([]chunk.ID, len(datas))
					for i, d := range datas {
						ids[i] = r.ChunkID(d)
					}
					if err := r.PackChunks(p, ids, datas, c, 3); err != nil {
						t.Fatal(err)
					}
					if err := r.PutPack(ctx, p); err != nil {
						t.Fatal(err)
					}
					want := append([][]byte{first}, datas...)
					end := uint32(0)
					for i, e := range p.Entries() {
						if e.Loc.Off != end {
							t.Fatalf("round %d: entry %d at %d, the one before ends at %d", round, i, e.Loc.Off, end)
						}
						end += e.Loc.Len
						got, err := r.ReadChunk(ctx, e.ID, e.Loc)
						if err != nil || !bytes.Equal(got, want[i]) {
							t.Fatalf("round %d: chunk %d at %v: %v", round, i, e.Loc, err)
						}
					}
					index, err := r.PackIndex(ctx, p.ID, 0)
					if err != nil || fmt.Sprint(index) != fmt.Sprint(p.Entries()) {
						t.Fatalf("round %d: trailer %v, %v; entries %v", round, index, err, p.Entries())
					}
				}
			})
		}
	}
}
