package source

import (
	"fmt"
	"testing"
)

func TestWhollyInsideAndSubtractRuns(t *testing.T) {
	const cs = 100
	// [50, 420) holds chunks 1..3 whole; [420, 500) touches it: chunk 4 too.
	got := WhollyInside([]Extent{{50, 370}, {420, 80}, {1000, 99}, {1200, 300}}, cs)
	if fmt.Sprint(got) != "[[1 5] [12 15]]" {
		t.Fatalf("WhollyInside: %v", got)
	}
	runs := [][2]int64{{0, 3}, {4, 20}, {30, 31}}
	out, removed := SubtractRuns(runs, got)
	if fmt.Sprint(out) != "[[0 1] [5 12] [15 20] [30 31]]" || removed != 2+1+3 {
		t.Fatalf("SubtractRuns: %v, %d removed", out, removed)
	}
	if out, n := SubtractRuns(runs, nil); fmt.Sprint(out) != fmt.Sprint(runs) || n != 0 {
		t.Fatalf("SubtractRuns without a cut: %v %d", out, n)
	}
}
