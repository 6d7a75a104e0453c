package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/demodisk"
)

// sourceGoneBeforeCertify: a certify backup whose source disappears
// between commit and verification (the verifier stopped meanwhile, so
// the order is certain) must end failed with the reason, `backup --wait`
// must exit non-zero, and `strata check` and `strata ls` must say so.
// Shared by the process-level stack and the compose deployment.
func sourceGoneBeforeCertify(t *testing.T, st *stack, vm, img, src string, stopVerifier, startVerifier func()) {
	t.Helper()
	stopVerifier()
	type result struct {
		out, errOut string
		code        int
	}
	done := make(chan result, 1)
	go func() {
		out, errOut, code := st.cli("backup", "--vm", vm, "--source", src, "--verify", "certify", "--wait")
		done <- result{out, errOut, code}
	}()
	var id string
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		recs := st.records(vm)
		if len(recs) > 0 && recs[len(recs)-1].State == contracts.StateCommitted {
			id = recs[len(recs)-1].ID
			break
		}
		if len(recs) > 0 && recs[len(recs)-1].State.Final() {
			t.Fatalf("backup ended %s before verification: %s", recs[len(recs)-1].State, recs[len(recs)-1].Error)
		}
		if time.Now().After(deadline) {
			t.Fatal("backup not committed within 3 minutes")
		}
	}
	if err := os.Remove(img); err != nil {
		t.Fatal(err)
	}
	startVerifier()
	var res result
	select {
	case res = <-done:
	case <-time.After(3 * time.Minute):
		t.Fatal("backup --wait did not return within 3 minutes of the verifier losing its source")
	}
	if res.code == 0 || !strings.Contains(res.errOut, "cannot read the source") {
		t.Fatalf("backup --wait: exit %d\nstdout: %s\nstderr: %s", res.code, res.out, res.errOut)
	}
	rec := st.record(vm, id)
	if rec.State != contracts.StateFailed || !strings.Contains(rec.Error, "cannot read the source") {
		t.Fatalf("record: %s %q", rec.State, rec.Error)
	}
	if ls := st.mustCLI("ls", "--vm", vm); !strings.Contains(ls, "failed") || !strings.Contains(ls, "cannot read the source") {
		t.Fatalf("ls does not show the failure:\n%s", ls)
	}
	out, _, code := st.cli("check", "--json")
	var health contracts.CheckReply
	if err := json.Unmarshal([]byte(out), &health); err != nil || code != 1 || health.Healthy {
		t.Fatalf("check: exit %d %s", code, out)
	}
	found := false
	for _, f := range health.Failed {
		found = found || (f.VM == vm && f.BackupID == id && strings.Contains(f.Reason, "cannot read the source"))
	}
	if !found {
		t.Fatalf("check does not report the failed backup %s: %+v", id, health.Failed)
	}
	t.Logf("backup %s failed with: %s", id, rec.Error)
}

func TestVerifierLosesSourceFailsBackup(t *testing.T) {
	st := startStack(t, stackOptions{})
	img := filepath.Join(t.TempDir(), "gone.img")
	if err := demodisk.Write(img, 24<<20, 77); err != nil {
		t.Fatal(err)
	}
	sourceGoneBeforeCertify(t, st, "gone", img, "file://"+img,
		func() { st.procs["verifier"][len(st.procs["verifier"])-1].Stop() },
		func() { st.waitReady(st.startService("verifier")) })
}
