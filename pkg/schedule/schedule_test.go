package schedule

import (
	"testing"
	"time"
)

func TestParseAndSlots(t *testing.T) {
	s, err := Parse("*/2 * * * * *")
	if err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 1, 1, 0, 0, 1, 0, time.UTC)
	if n := s.Next(base); !n.Equal(base.Add(time.Second)) {
		t.Fatalf("next after %v = %v", base, n)
	}
	if _, err := Parse("61 * * * *"); err == nil {
		t.Fatal("bad schedule accepted")
	}
	if _, err := Parse("@every 90m"); err != nil {
		t.Fatal(err)
	}
	a, b := SlotBackupID("vm", base), SlotBackupID("vm", base)
	if a != b || a == SlotBackupID("vm2", base) || a == SlotBackupID("vm", base.Add(time.Second)) {
		t.Fatal("slot ids must be deterministic per vm and slot")
	}
	j := Jitter("vm", base, time.Minute)
	if j < 0 || j >= time.Minute || j != Jitter("vm", base, time.Minute) {
		t.Fatalf("jitter %v", j)
	}
}
