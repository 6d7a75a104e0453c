package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/testserver"
)

// The api service as its own process on real NATS and S3: an operator
// starts a backup over HTTP and follows it to verified; the fleet shows
// the VM green; an admin sets a policy; a viewer reads but its POST is
// refused; the dead letters and the repository answer.
func TestAPIService(t *testing.T) {
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	const viewer, operator, admin = "viewer-e2e-0123456789", "operator-e2e-0123456789", "admin-e2e-0123456789"
	os.WriteFile(tokens, []byte("# role token name\nviewer "+viewer+" dashboard\noperator "+operator+"\nadmin "+admin+"\n"), 0o600)
	restores := filepath.Join(dir, "restores")
	os.Mkdir(restores, 0o755)
	st := startStack(t, stackOptions{chunkSize: 256 << 10, extraEnv: map[string][]string{"api": {"STRATA_API_TOKEN_FILE=" + tokens, "STRATA_API_RESTORE_DIR=" + restores},
		"transfer": {"STRATA_TRANSFER_RATE_LIMIT=16000000"}}}) // a few seconds to watch it run
	// A GPT disk with an ext4 filesystem holding a file to browse.
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	want := testserver.RandomBytes(5, 300<<10)
	os.WriteFile(filepath.Join(tree, "etc", "app.conf"), want, 0o644)
	img := filepath.Join(dir, "disk.img")
	testserver.PartitionedImageFrom(t, img, tree)
	call := func(method, path, token, body string, out any) int {
		t.Helper()
		req, _ := http.NewRequest(method, st.http+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if out != nil && resp.StatusCode < 300 {
			if err := json.Unmarshal(b, out); err != nil {
				t.Fatalf("%s %s: %v: %s", method, path, err, b)
			}
		}
		return resp.StatusCode
	}

	trigger := `{"schema":1,"vm":"api-vm","source":"file://` + img + `"}`
	if code := call("POST", "/v1/backups", viewer, trigger, nil); code != http.StatusForbidden {
		t.Fatalf("viewer's POST: %d", code)
	}
	if code := call("POST", "/v1/backups", "", trigger, nil); code != http.StatusUnauthorized {
		t.Fatalf("POST without a token: %d", code)
	}
	var acc contracts.BackupAccepted
	if code := call("POST", "/v1/backups", operator, trigger, &acc); code != http.StatusAccepted || acc.BackupID == "" {
		t.Fatalf("operator's POST: %d %+v", code, acc)
	}
	var running []struct {
		BackupID     string `json:"backup_id"`
		Segments     int    `json:"segments"`
		SegmentsDone int    `json:"segments_done"`
	}
	waitUntil(t, 30*time.Second, "the backup listed as running", func() bool {
		call("GET", "/v1/running", viewer, "", &running)
		return len(running) == 1 && running[0].BackupID == acc.BackupID
	})
	var rec contracts.BackupRecord
	waitUntil(t, 2*time.Minute, "the backup verified", func() bool {
		call("GET", "/v1/vms/api-vm/backups/"+acc.BackupID, viewer, "", &rec)
		return rec.State.Final()
	})
	if rec.State != contracts.StateVerified {
		t.Fatalf("backup %s: %s %s", rec.ID, rec.State, rec.Error)
	}
	if call("GET", "/v1/running", viewer, "", &running); len(running) != 0 {
		t.Fatalf("still running after it ended: %+v", running)
	}
	var vm struct {
		Name, Health string
		Status       contracts.VMStatus
	}
	waitUntil(t, 30*time.Second, "the VM in the fleet", func() bool {
		return call("GET", "/v1/vms/api-vm", viewer, "", &vm) == 200 && vm.Status.LastVerified == rec.ID
	})
	if vm.Health != "green" { // verified, nothing failed since (no policy: no RPO to age against)
		t.Errorf("health of a VM verified without a policy: %s", vm.Health)
	}
	policy := `{"source":"file://` + img + `","schedule":"@every 24h","rpo":172800000000000}`
	if code := call("PUT", "/v1/policies/api-vm", operator, policy, nil); code != http.StatusForbidden {
		t.Fatalf("operator's policy edit: %d", code)
	}
	var p contracts.Policy
	if code := call("PUT", "/v1/policies/api-vm", admin, policy, &p); code != 200 || p.RPO != 48*time.Hour {
		t.Fatalf("admin's policy edit: %d %+v", code, p)
	}
	waitUntil(t, 30*time.Second, "the VM green under its policy", func() bool {
		return call("GET", "/v1/vms/api-vm", viewer, "", &vm) == 200 && vm.Health == "green"
	})
	var dl struct{ Count uint64 }
	if code := call("GET", "/v1/dead-letters", viewer, "", &dl); code != 200 {
		t.Fatalf("dead letters: %d", code)
	}
	var stats contracts.RepoStatsReply
	if code := call("GET", "/v1/repository", viewer, "", &stats); code != 200 || stats.Backups != 1 {
		t.Fatalf("repository: %d %+v", code, stats)
	}
	// Its files, straight from the repository: the volumes, a directory,
	// one file downloaded bit for bit.
	var vols struct{ Volumes []struct{ Name, FS string } }
	if code := call("GET", "/v1/vms/api-vm/backups/"+rec.ID+"/files?path=/", viewer, "", &vols); code != 200 {
		t.Fatalf("volumes: %d", code)
	}
	ext := ""
	for _, v := range vols.Volumes {
		if v.FS == "ext4" {
			ext = v.Name
		}
	}
	var dirList struct{ Entries []struct{ Name string } }
	if code := call("GET", "/v1/vms/api-vm/backups/"+rec.ID+"/files?path=/"+ext+"/etc", viewer, "", &dirList); code != 200 || len(dirList.Entries) != 1 || dirList.Entries[0].Name != "app.conf" {
		t.Fatalf("/%s/etc of %v: %d %+v", ext, vols, code, dirList)
	}
	req, _ := http.NewRequest("GET", st.http+"/v1/vms/api-vm/backups/"+rec.ID+"/download?path=/"+ext+"/etc/app.conf", nil)
	req.Header.Set("Authorization", "Bearer "+viewer)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(got, want) {
		t.Fatalf("download: %d, %d bytes (want %d, equal %v)", resp.StatusCode, len(got), len(want), bytes.Equal(got, want))
	}
	if code := call("GET", "/v1/vms/api-vm/backups/"+rec.ID+"/download?path=/"+ext+"/../../etc/passwd", viewer, "", nil); code < 400 {
		t.Fatalf("download of a path leaving the volume: %d", code)
	}
	// A restore to a path: inside the restore directory only, bit for bit.
	for _, bad := range []string{"../escape.img", "/etc/strata.img", ""} {
		if code := call("POST", "/v1/vms/api-vm/backups/"+rec.ID+"/restore", operator, `{"disk":0,"path":"`+bad+`"}`, nil); code != 400 {
			t.Fatalf("restore to %q: %d", bad, code)
		}
	}
	if code := call("POST", "/v1/vms/api-vm/backups/"+rec.ID+"/restore", viewer, `{"path":"r.img"}`, nil); code != 403 {
		t.Fatalf("viewer's restore: %d", code)
	}
	var res struct{ Path string }
	if code := call("POST", "/v1/vms/api-vm/backups/"+rec.ID+"/restore", operator, `{"disk":0,"path":"vm/r.img"}`, &res); code != 200 || res.Path != filepath.Join(restores, "vm", "r.img") {
		t.Fatalf("restore: %d %+v", code, res)
	}
	if sha256File(t, res.Path) != sha256File(t, img) {
		t.Fatal("restored disk differs")
	}
	if code := call("POST", "/v1/vms/api-vm/backups/"+rec.ID+"/restore", operator, `{"disk":0,"path":"vm/r.img"}`, nil); code != 409 {
		t.Fatalf("restore over an existing file: %d", code)
	}
	// Instant recovery: the backup served over NBD by the api, read back
	// with qemu-img bit for bit; a writable one needs an overlay directory.
	if code := call("POST", "/v1/vms/api-vm/backups/"+rec.ID+"/exports", operator, `{"writable":true}`, nil); code != 403 {
		t.Fatalf("writable export without STRATA_API_EXPORT_DIR: %d", code)
	}
	if code := call("POST", "/v1/vms/api-vm/backups/"+rec.ID+"/exports", viewer, `{}`, nil); code != 403 {
		t.Fatalf("viewer's export: %d", code)
	}
	var ex struct {
		ID    string
		Disks []struct{ URL string }
	}
	if code := call("POST", "/v1/vms/api-vm/backups/"+rec.ID+"/exports", operator, `{}`, &ex); code != 201 || len(ex.Disks) != 1 {
		t.Fatalf("export: %d %+v", code, ex)
	}
	served := filepath.Join(dir, "served.raw")
	testserver.Qemu(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", ex.Disks[0].URL, served)
	if sha256File(t, served) != sha256File(t, img) {
		t.Fatal("the NBD export differs from the source")
	}
	var exs []struct{ ID string }
	if call("GET", "/v1/exports", viewer, "", &exs); len(exs) != 1 || exs[0].ID != ex.ID {
		t.Fatalf("exports: %+v", exs)
	}
	if code := call("DELETE", "/v1/exports/"+ex.ID, operator, "", nil); code != 204 {
		t.Fatalf("stop export: %d", code)
	}
	if call("GET", "/v1/exports", viewer, "", &exs); len(exs) != 0 {
		t.Fatalf("exports after the stop: %+v", exs)
	}
	var runs []struct {
		VM       string
		BackupID string `json:"backup_id"`
	}
	if code := call("GET", "/v1/runs", viewer, "", &runs); code != 200 || len(runs) == 0 || runs[0].BackupID != rec.ID {
		t.Fatalf("runs: %d %+v", code, runs)
	}
	var who map[string]string
	if call("GET", "/v1/whoami", viewer, "", &who); who["role"] != "viewer" || who["token"] != "dashboard" {
		t.Fatalf("whoami: %v", who)
	}
}
