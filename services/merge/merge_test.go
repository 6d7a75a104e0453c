package merge

import (
	"errors"
	"testing"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
)

// An untouched segment's ids come from the parent, zero chunks counted; a
// range off the disk is refused before the parent is even loaded.
func TestInheritRange(t *testing.T) {
	parent := &manifest.Manifest{IDs: make([]chunk.ID, 10)}
	for i := range parent.IDs {
		if i%3 != 0 { // chunks 0, 3, 6, 9 are zero
			parent.IDs[i] = chunk.Hash([]byte{byte(i)})
		}
	}
	tests := []struct {
		from, to int64
		zero     int64
		fails    bool
	}{
		{0, 10, 4, false},
		{4, 8, 1, false},
		{9, 10, 1, false},
		{8, 11, 0, true},
		{5, 5, 0, true},
		{-1, 3, 0, true},
	}
	for _, tc := range tests {
		man := &manifest.Manifest{IDs: make([]chunk.ID, 10)}
		man.IDs[2] = chunk.Hash([]byte("own")) // outside or overwritten
		loads := 0
		zero, err := inheritRange(man, tc.from, tc.to, func() (*manifest.Manifest, error) { loads++; return parent, nil })
		if tc.fails {
			if err == nil || loads != 0 {
				t.Errorf("[%d, %d): err %v after %d parent loads, want a refusal before loading", tc.from, tc.to, err, loads)
			}
			continue
		}
		if err != nil || zero != tc.zero {
			t.Errorf("[%d, %d): zero %d err %v, want %d", tc.from, tc.to, zero, err, tc.zero)
		}
		for i := range man.IDs {
			inside := int64(i) >= tc.from && int64(i) < tc.to
			if inside && man.IDs[i] != parent.IDs[i] {
				t.Errorf("[%d, %d): chunk %d not inherited", tc.from, tc.to, i)
			}
			if !inside && i == 2 && man.IDs[i] != chunk.Hash([]byte("own")) {
				t.Errorf("[%d, %d): chunk 2 outside the range was overwritten", tc.from, tc.to)
			}
		}
	}
	if _, err := inheritRange(&manifest.Manifest{IDs: make([]chunk.ID, 4)}, 0, 4, func() (*manifest.Manifest, error) {
		return nil, errors.New("no parent")
	}); err == nil {
		t.Error("a parent that cannot be loaded must fail the range")
	}
}
