package verifier

import (
	"fmt"
	"testing"

	"github.com/strata-backup/strata/contracts"
)

// A VM whose newest backup failed is unhealthy when it is meant to be
// protected (a policy, or a backup that worked before); a one-off failed
// attempt at a VM with neither is listed as ignored; a failure followed by
// a good backup, and a backup still running, are history.
func TestNewestFailed(t *testing.T) {
	var recs []*contracts.BackupRecord
	add := func(vm string, state contracts.State) {
		recs = append(recs, &contracts.BackupRecord{VM: vm, ID: fmt.Sprint(len(recs)), State: state, Error: "boom"})
	}
	add("recovered", contracts.StateFailed)
	add("recovered", contracts.StateVerified)
	add("was-good", contracts.StateVerified)
	add("was-good", contracts.StateFailed)
	add("scheduled", contracts.StateFailed)
	add("typo", contracts.StateFailed)
	add("typo", contracts.StateFailed)
	add("running", contracts.StateFailed)
	add("running", contracts.StateTransferring)
	failed, ignored := newestFailed(recs, func(vm string) bool { return vm == "scheduled" })
	names := func(fs []contracts.FailedBackup) (out []string) {
		for _, f := range fs {
			out = append(out, f.VM+"/"+f.BackupID)
		}
		return out
	}
	if got := fmt.Sprint(names(failed)); got != "[was-good/3 scheduled/4]" {
		t.Errorf("failed: %s", got)
	}
	if got := fmt.Sprint(names(ignored)); got != "[typo/6 running/7]" {
		t.Errorf("ignored: %s", got)
	}
}
