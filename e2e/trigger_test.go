package e2e

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/demodisk"
)

// Event triggers: a strata.trigger.backup message on NATS and a POST to the
// scheduler's HTTP endpoint each start a backup; a malformed trigger is
// refused with a reason.
func TestEventTriggers(t *testing.T) {
	st := startStack(t, stackOptions{})
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := demodisk.Write(img, 40<<20, 9); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, time.Minute)
	js := st.jetstream()
	trigger := `{"schema":1,"vm":"evt-nats","source":"file://` + img + `"}`
	if _, err := js.Publish(ctx, contracts.SubjectTrigger, []byte(trigger)); err != nil {
		t.Fatal(err)
	}

	resp, err := http.Post(st.http+"/v1/backups", "application/json", strings.NewReader(strings.Replace(trigger, "evt-nats", "evt-http", 1)))
	if err != nil {
		t.Fatal(err)
	}
	var acc contracts.BackupAccepted
	json.NewDecoder(resp.Body).Decode(&acc)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || acc.BackupID == "" {
		t.Fatalf("POST trigger: %d %+v", resp.StatusCode, acc)
	}

	bad, err := http.Post(st.http+"/v1/backups", "application/json", strings.NewReader(`{"schema":1,"vm":""}`))
	if err != nil {
		t.Fatal(err)
	}
	var refusal map[string]string
	json.NewDecoder(bad.Body).Decode(&refusal)
	bad.Body.Close()
	if bad.StatusCode != http.StatusBadRequest || !strings.Contains(refusal["error"], "vm") {
		t.Fatalf("malformed POST trigger: %d %v", bad.StatusCode, refusal)
	}

	for _, vm := range []string{"evt-nats", "evt-http"} {
		var rec contracts.BackupRecord
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if recs := st.records(vm); len(recs) == 1 && recs[0].State.Final() {
				rec = recs[0]
				break
			}
		}
		if rec.State != contracts.StateVerified {
			t.Fatalf("backup of %s triggered by event: %q %s", vm, rec.State, rec.Error)
		}
		out := filepath.Join(t.TempDir(), vm+".img")
		st.mustCLI("restore", "--vm", vm, "--to", out)
		if sha256File(t, out) != sha256File(t, img) {
			t.Fatalf("restore of %s differs", vm)
		}
	}
	if !strings.Contains(st.procs["api"][0].Output(), "api request refused") {
		t.Fatal("the refused trigger was not logged")
	}
}

// A backup that cannot finish in time fails cleanly at its deadline
// (STRATA_BACKUP_DEADLINE), with the reason in its record, instead of
// holding its VM (and snapshot) forever.
func TestBackupDeadline(t *testing.T) {
	st := startStack(t, stackOptions{extraEnv: map[string][]string{
		"scheduler": {"STRATA_BACKUP_DEADLINE=3s"},
		"transfer":  {"STRATA_TRANSFER_RATE_LIMIT=2000000", "STRATA_TRANSFER_CONCURRENCY=1"},
	}})
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := demodisk.Write(img, 128<<20, 3); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, _, code := st.cli("backup", "--vm", "slow", "--source", "file://"+img, "--wait")
	rec := st.record("slow", strings.TrimSpace(strings.Split(out, "\n")[0]))
	if code != 1 || rec.State != contracts.StateFailed || !strings.Contains(rec.Error, "deadline") {
		t.Fatalf("backup past its deadline: exit %d, %s: %s", code, rec.State, rec.Error)
	}
	t.Logf("failed after %s: %s", time.Since(start).Round(time.Millisecond), rec.Error)
}
