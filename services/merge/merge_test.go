package merge

import (
	"testing"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
)

// An untouched segment's chunks come from the parent; a parent of another
// size or a range appended out of order is refused.
func TestInheritRange(t *testing.T) {
	ids := make([]chunk.ID, 10)
	for i := range ids {
		if i%3 != 0 { // chunks 0, 3, 6, 9 are zero
			ids[i] = chunk.Hash([]byte{byte(i)})
		}
	}
	parent, err := manifest.FromIDs("p", 0, 64<<10, 10*64<<10, ids, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]int64{{0, 10}, {4, 8}, {9, 10}} {
		man := manifest.New("b", 0, 64<<10, 10*64<<10)
		if err := inheritRange(man, parent, r[0], r[1]); err != nil {
			t.Fatal(err)
		}
		for i := range int64(10) {
			want := chunk.Zero
			if i >= r[0] && i < r[1] {
				want = ids[i]
			}
			if man.ID(i) != want {
				t.Errorf("%v: chunk %d not inherited", r, i)
			}
		}
	}
	man := manifest.New("b", 0, 64<<10, 10*64<<10)
	man.Append(8, chunk.Ref{ID: chunk.Hash([]byte("own"))})
	if err := inheritRange(man, parent, 0, 10); err == nil {
		t.Error("a range before what the manifest holds was appended")
	}
	small, _ := manifest.FromIDs("p", 0, 64<<10, 4*64<<10, ids[:4], nil)
	if err := inheritRange(manifest.New("b", 0, 64<<10, 10*64<<10), small, 0, 4); err == nil {
		t.Error("a parent of another size was inherited from")
	}
}
