package snapshotter

import (
	"fmt"
	"testing"

	"github.com/strata-backup/strata/contracts"
)

func TestPlan(t *testing.T) {
	tests := []struct {
		size         int64
		chunk        int
		perSeg, segs int
	}{
		{1 << 30, 1 << 20, 64, 16},
		{1<<30 + 1, 1 << 20, 64, 17},
		{100, 64 << 10, 1024, 1},
		{64 << 20, 16 << 20, 4, 1},
	}
	for _, tc := range tests {
		perSeg, segs := Plan(tc.size, tc.chunk)
		if perSeg != tc.perSeg || segs != tc.segs {
			t.Errorf("Plan(%d, %d) = %d, %d; want %d, %d", tc.size, tc.chunk, perSeg, segs, tc.perSeg, tc.segs)
		}
	}
}

func TestSegmentRuns(t *testing.T) {
	runs := [][2]int64{{0, 2}, {60, 70}, {100, 101}, {200, 300}}
	next := 0
	var got [][]int
	for seg := int64(0); seg < 5; seg++ {
		var r []contracts.ChunkRun
		r, next = SegmentRuns(runs, next, seg*64, 64)
		var flat []int
		for _, x := range r {
			flat = append(flat, x.Start, x.Count)
		}
		got = append(got, flat)
	}
	want := "[[0 2 60 4] [0 6 36 1] [] [8 56] [0 44]]"
	if fmt.Sprint(got) != want {
		t.Fatalf("got %v, want %s", got, want)
	}
}
