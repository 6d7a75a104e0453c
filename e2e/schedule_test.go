package e2e

import (
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/demodisk"
)

// Two scheduler processes run one policy with a 2-second schedule; one is
// SIGKILLed mid-run. Every slot between the first and the last becomes
// exactly one backup (verified, or skipped when the previous one still
// ran): none lost, none doubled.
func TestScheduledSlotsTwoSchedulers(t *testing.T) {
	st := startStack(t, stackOptions{schedulers: 2})
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := demodisk.Write(img, 8<<20, 5); err != nil {
		t.Fatal(err)
	}
	st.mustCLI("policy", "set", "--vm", "cron-vm", "--source", "file://"+img, "--schedule", "*/2 * * * * *")
	time.Sleep(9 * time.Second)
	victim := st.procs["scheduler"][0]
	victim.Cmd.Process.Kill()
	victim.Cmd.Wait()
	time.Sleep(9 * time.Second)
	st.mustCLI("policy", "rm", "--vm", "cron-vm")

	var recs []contracts.BackupRecord
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		recs = st.records("cron-vm")
		done := true
		for _, r := range recs {
			done = done && r.State.Final()
		}
		if done {
			break
		}
	}
	var slots []time.Time
	seen := map[int64]bool{}
	for _, r := range recs {
		if r.Slot == nil {
			t.Fatalf("backup %s has no slot", r.ID)
		}
		if seen[r.Slot.Unix()] {
			t.Fatalf("slot %v fired twice", r.Slot)
		}
		seen[r.Slot.Unix()] = true
		slots = append(slots, *r.Slot)
		if r.State != contracts.StateVerified && r.State != contracts.StateSkipped {
			t.Fatalf("backup %s of slot %v: %s %s", r.ID, r.Slot, r.State, r.Error)
		}
	}
	sort.Slice(slots, func(i, j int) bool { return slots[i].Before(slots[j]) })
	if len(slots) < 7 {
		t.Fatalf("%d slots fired in ~18 s of a 2 s schedule", len(slots))
	}
	for i := 1; i < len(slots); i++ {
		if gap := slots[i].Sub(slots[i-1]); gap != 2*time.Second {
			t.Fatalf("slots %v and %v: a slot was lost (gap %v)", slots[i-1], slots[i], gap)
		}
	}
	t.Logf("%d consecutive slots, one backup each", len(slots))
}
