package snapshotter

import "testing"

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
