package snapshotter

import (
	"fmt"
	"strings"
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

// A backup publishes only the segments with something to read (an
// incremental's changes, a full's allocated extents); an unchanged or
// empty disk still publishes one (its last) so the backup reaches merge.
// A full read without extents (the source cannot list them) publishes
// every segment.
func TestMarkUntouched(t *testing.T) {
	const cs = 1 << 20 // 64 chunks a segment
	tests := []struct {
		name    string
		sizes   []int64
		runs    [][][2]int64 // per disk, chunk runs
		inherit bool
		want    []string // per disk: one letter a segment, U untouched, P published
	}{
		{"changes in two windows", []int64{256 << 20}, [][][2]int64{{{3, 5}, {200, 201}}}, true, []string{"PUUP"}},
		{"a run across a boundary", []int64{256 << 20}, [][][2]int64{{{60, 70}}}, true, []string{"PPUU"}},
		{"unchanged disk", []int64{256 << 20}, [][][2]int64{nil}, true, []string{"UUUP"}},
		{"unchanged disks", []int64{128 << 20, 100 << 20}, [][][2]int64{nil, nil}, true, []string{"UU", "UP"}},
		{"second disk changed", []int64{128 << 20, 100 << 20}, [][][2]int64{nil, {{0, 1}}}, true, []string{"UU", "PU"}},
		{"sparse full", []int64{256 << 20}, [][][2]int64{{{3, 5}}}, false, []string{"PUUU"}},
		{"empty full", []int64{256 << 20}, [][][2]int64{nil}, false, []string{"UUUP"}},
		{"whole full", []int64{256 << 20}, [][][2]int64{nil}, false, []string{"PPPP"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := &contracts.BackupRecord{ChunkSize: cs}
			var plans []readPlan
			for i, size := range tc.sizes {
				p := readPlan{sparse: true, inherit: tc.inherit, runs: tc.runs[i]}
				if tc.name == "whole full" {
					p = readPlan{}
				}
				p.cut(size, cs)
				plans = append(plans, p)
				rec.Disks = append(rec.Disks, contracts.DiskRecord{Index: i, Size: size, Segments: len(p.segRuns)})
			}
			markUntouched(rec, plans)
			for i, d := range rec.Disks {
				got := ""
				for seg := 0; seg < d.Segments; seg++ {
					if d.IsUntouched(seg) {
						got += "U"
					} else {
						got += "P"
					}
				}
				if got != tc.want[i] {
					t.Errorf("disk %d: %s, want %s", i, got, tc.want[i])
				}
				if u := strings.Count(got, "U"); d.SegmentsDone != u {
					t.Errorf("disk %d: %d segments done before any transfer, want the %d untouched", i, d.SegmentsDone, u)
				}
			}
		})
	}
}
