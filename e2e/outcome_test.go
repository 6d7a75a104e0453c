package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
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
	// The VM is meant to be protected (a policy, never due in the test):
	// its failed newest backup makes the repository unhealthy.
	st.mustCLI("policy", "set", "--vm", vm, "--source", src, "--schedule", "0 0 1 1 *")
	var ps []struct {
		VM      string     `json:"vm"`
		NextRun *time.Time `json:"next_run"`
	}
	if err := json.Unmarshal([]byte(st.mustCLI("policy", "ls", "--json")), &ps); err != nil || len(ps) != 1 || ps[0].NextRun == nil ||
		ps[0].NextRun.Month() != time.January || ps[0].NextRun.Day() != 1 || !ps[0].NextRun.After(time.Now()) {
		t.Fatalf("policy ls: %+v %v", ps, err)
	}
	if ls := st.mustCLI("policy", "ls"); !strings.Contains(ls, "NEXT RUN") || !strings.Contains(ls, "-01-01 00:00:00") {
		t.Fatalf("policy ls shows no next run:\n%s", ls)
	}
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
	// Without the policy it is a one-off attempt that never worked: listed
	// as ignored, and the repository is healthy.
	st.mustCLI("policy", "rm", "--vm", vm)
	out, _, code = st.cli("check", "--json")
	health = contracts.CheckReply{}
	if err := json.Unmarshal([]byte(out), &health); err != nil || code != 0 || !health.Healthy ||
		len(health.FailedIgnored) != 1 || health.FailedIgnored[0].BackupID != id {
		t.Fatalf("check with no policy: exit %d %s", code, out)
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

// What a user meets in the first ten minutes: help and version exit 0, a
// size with a unit, a backup of a missing source fails without --wait too,
// a running backup can be cancelled and a failed one removed, usage
// errors exit 2.
func TestCLIFirstTenMinutes(t *testing.T) {
	st := startStack(t, stackOptions{chunkSize: 64 << 10, extraEnv: map[string][]string{"transfer": {"STRATA_TRANSFER_RATE_LIMIT=4000000"}}})
	for _, args := range [][]string{{"--help"}, {"backup", "--help"}, {"restore", "--help"}, {"--version"}, {"version"}} {
		if out, errOut, code := st.cli(args...); code != 0 || out == "" {
			t.Errorf("strata %v: exit %d\n%s%s", args, code, out, errOut)
		}
	}
	if out, _, _ := st.cli("restore", "--help"); !strings.Contains(out, "--force") || !strings.Contains(out, "--parallel") {
		t.Errorf("restore --help does not list its flags:\n%s", out)
	}
	for _, args := range [][]string{{"nosuch"}, {"backup", "--bogus"}, {"mkdisk"}, {"mkdisk", "--size", "lots", "x"}, {"restore", "--vm", "a", "--to", "/tmp/x", "--parallel", "0"}} {
		if _, errOut, code := st.cli(args...); code != 2 {
			t.Errorf("strata %v: exit %d, want 2 (%s)", args, code, errOut)
		}
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	st.mustCLI("mkdisk", "--size", "48M", img)
	if fi, err := os.Stat(img); err != nil || fi.Size() != 48<<20 {
		t.Fatalf("mkdisk --size 48M: %v %v", fi, err)
	}

	// No --wait, missing source: exit 1 with the reason, not 0.
	if out, errOut, code := st.cli("backup", "--vm", "ghost", "--source", "file:///no/such.img"); code != 1 || !strings.Contains(errOut, "no such file") {
		t.Fatalf("backup of a missing source without --wait: exit %d\n%s%s", code, out, errOut)
	}
	if _, errOut, code := st.cli("backup", "--vm", "ghost", "--source", "/no/such.img"); code != 2 || !strings.Contains(errOut, "file:///no/such.img") {
		t.Fatalf("plain path: exit %d, %s", code, errOut)
	}

	// Cancel a running backup (4 MB/s: 48 MiB takes seconds).
	id := strings.TrimSpace(st.mustCLI("backup", "--vm", "slow", "--source", "file://"+img))
	out := st.mustCLI("cancel", "--vm", "slow", "--backup", id)
	if !strings.Contains(out, "cancelled") {
		t.Fatalf("cancel: %s", out)
	}
	rec := st.record("slow", id)
	if rec.State != contracts.StateFailed || !strings.Contains(rec.Error, "cancelled") {
		t.Fatalf("cancelled backup: %s %q", rec.State, rec.Error)
	}
	if out := st.mustCLI("cancel", "--vm", "slow", "--backup", id); !strings.Contains(out, "already ended") {
		t.Fatalf("second cancel: %s", out)
	}

	// A good backup cannot be removed with rm; failed ones can.
	good := strings.TrimSpace(strings.Split(st.mustCLI("backup", "--vm", "slow", "--source", "file://"+img, "--wait"), "\n")[0])
	if _, errOut, code := st.cli("rm", "--vm", "slow", "--backup", good); code == 0 || !strings.Contains(errOut, "only failed") {
		t.Fatalf("rm of a verified backup: exit %d %s", code, errOut)
	}
	var removed contracts.RemoveReply
	if err := json.Unmarshal([]byte(st.mustCLI("rm", "--vm", "slow", "--failed", "--json")), &removed); err != nil || len(removed.Removed) != 1 || removed.Removed[0] != id {
		t.Fatalf("rm --failed: %+v %v", removed, err)
	}
	if recs := st.records("slow"); len(recs) != 1 || recs[0].ID != good {
		t.Fatalf("after rm: %+v", recs)
	}
	st.mustCLI("rm", "--vm", "ghost", "--failed")
	if out, _, code := st.cli("check"); code != 0 {
		t.Fatalf("check after removing the failed backups: exit %d\n%s", code, out)
	}
}

// Disaster recovery of the catalog: the KV bucket is lost with NATS;
// `strata catalog rebuild` restores every backup from the record copies
// in S3 (verified ones restorable bit for bit, an unfinished one recorded
// failed), and a second rebuild changes nothing.
func TestCatalogRebuildFromRepository(t *testing.T) {
	st := startStack(t, stackOptions{chunkSize: 64 << 10})
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	if err := demodisk.Write(img, 16<<20, 31); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for range 2 {
		ids = append(ids, strings.TrimSpace(strings.Split(st.mustCLI("backup", "--vm", "dr", "--source", "file://"+img, "--wait"), "\n")[0]))
	}
	before := st.records("dr")
	ctx := ctxT(t, time.Minute)
	if err := st.jetstream().DeleteKeyValue(ctx, contracts.BucketCatalog); err != nil {
		t.Fatal(err)
	}
	if _, _, code := st.cli("ls", "--vm", "dr"); code == 0 {
		t.Fatal("ls succeeded with the catalog gone")
	}
	var rep struct {
		Records, Restored, Present, Failed int
		Refused                            []string
	}
	if err := json.Unmarshal([]byte(st.mustCLI("catalog", "rebuild", "--json")), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Records != 2 || rep.Restored != 2 || rep.Present != 0 || len(rep.Refused) != 0 {
		t.Fatalf("rebuild: %+v", rep)
	}
	after := st.records("dr")
	if len(after) != 2 {
		t.Fatalf("%d backups after rebuild", len(after))
	}
	for i := range after {
		if after[i].ID != before[i].ID || after[i].State != contracts.StateVerified || len(after[i].Disks) != 1 || after[i].Disks[0].Manifest != before[i].Disks[0].Manifest {
			t.Fatalf("rebuilt record %d differs: %+v vs %+v", i, after[i], before[i])
		}
	}
	out := filepath.Join(dir, "restored.img")
	st.mustCLI("restore", "--vm", "dr", "--backup", ids[1], "--to", out)
	if sha256File(t, out) != sha256File(t, img) {
		t.Fatal("restore after rebuild differs")
	}
	if err := json.Unmarshal([]byte(st.mustCLI("catalog", "rebuild", "--json")), &rep); err != nil || rep.Restored != 0 || rep.Present != 2 {
		t.Fatalf("second rebuild: %+v %v", rep, err)
	}
	// Backups go on after the rebuild, deduplicated against what is stored.
	next := strings.TrimSpace(strings.Split(st.mustCLI("backup", "--vm", "dr", "--source", "file://"+img, "--wait"), "\n")[0])
	if rec := st.record("dr", next); rec.State != contracts.StateVerified || rec.StoredBytes() != 0 {
		t.Fatalf("backup after rebuild: %s, %d bytes newly stored", rec.State, rec.StoredBytes())
	}
}

// NATS goes away for a few seconds while `backup --wait` waits: the CLI
// says it is waiting for NATS (no raw client error), the services carry
// on once it is back, and the command ends with the backup verified.
func TestWaitRidesOutANATSOutage(t *testing.T) {
	st := startStack(t, stackOptions{chunkSize: 64 << 10, extraEnv: map[string][]string{"transfer": {"STRATA_TRANSFER_RATE_LIMIT=4000000"}}})
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := demodisk.WriteAllocated(img, 48<<20, 31); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, "strata"), "backup", "--vm", "outage", "--source", "file://"+img, "--wait")
	cmd.Env = st.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if recs := st.records("outage"); len(recs) == 1 && recs[0].State == contracts.StateTransferring {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("backup did not start transferring")
		}
	}
	st.natsSrv.Stop()
	time.Sleep(3 * time.Second)
	st.natsSrv.Start()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("backup --wait across the outage: %v\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
		}
	case <-time.After(4 * time.Minute):
		cmd.Process.Kill()
		t.Fatalf("backup --wait did not end within 4 minutes of NATS coming back\nstderr: %s", stderr.String())
	}
	if !strings.Contains(stderr.String(), "waiting for NATS") || strings.Contains(stderr.String(), "consumer not active") {
		t.Fatalf("stderr during the outage:\n%s", stderr.String())
	}
	id := strings.TrimSpace(strings.Split(stdout.String(), "\n")[0])
	if rec := st.record("outage", id); rec.State != contracts.StateVerified {
		t.Fatalf("backup across the outage: %s %s", rec.State, rec.Error)
	}
	st.checkRestore("outage", id, []string{img})
	t.Logf("stderr of backup --wait across the outage:\n%s", stderr.String())
}
