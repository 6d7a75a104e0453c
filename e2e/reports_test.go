package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/testserver"
	"github.com/strata-backup/strata/pkg/demodisk"
	"github.com/strata-backup/strata/pkg/notify"
)

// hookReceiver is a webhook endpoint that checks every signature and
// keeps the reports by delivery id; hold makes it take the next report
// and not answer until released (a sender killed mid-send).
type hookReceiver struct {
	mu       sync.Mutex
	key      []byte
	requests int
	bad      int
	reports  map[string]notify.Report // delivery → report
	hold     bool
	held     chan string // the delivery held
	release  chan struct{}
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	h.requests++
	if r.Header.Get("X-Strata-Signature") != notify.Sign(h.key, body) {
		h.bad++
		h.mu.Unlock()
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	var rep notify.Report
	json.Unmarshal(body, &rep)
	h.reports[rep.Delivery] = rep
	hold := h.hold
	h.hold = false
	h.mu.Unlock()
	if hold {
		h.held <- rep.Delivery
		select {
		case <-h.release:
		case <-r.Context().Done():
		}
		return
	}
}

func (h *hookReceiver) report(delivery string) (notify.Report, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r, ok := h.reports[delivery]
	return r, ok
}

// Job reports on the real stack: a real SMTP server (mailpit, STARTTLS
// and AUTH) and a signed webhook each get exactly one report for a
// verified backup and one for a failed one (its source removed before
// its certify verification) with the reason; the api process killed
// while a webhook is being delivered leaves one report per backup and
// target, resent under the same delivery id, none lost.
func TestJobReports(t *testing.T) {
	mail := testserver.StartMailpit(t)
	dir := t.TempDir()
	secrets := filepath.Join(dir, "secrets")
	os.Mkdir(secrets, 0o700)
	key := []byte("webhook-key-0123456789")
	os.WriteFile(filepath.Join(secrets, "hook.key"), key, 0o600)
	os.WriteFile(filepath.Join(secrets, "smtp.pw"), []byte(mail.Password), 0o600)
	hook := &hookReceiver{key: key, reports: map[string]notify.Report{}, held: make(chan string, 1), release: make(chan struct{})}
	srv := httptest.NewServer(hook)
	defer srv.Close()
	apiEnv := []string{"STRATA_NOTIFY_SECRETS_DIR=" + secrets, "STRATA_NOTIFY_CA_FILE=" + mail.CAFile,
		"STRATA_CONSOLE_URL=http://console.example:18080", "STRATA_NOTIFY_ACK_WAIT=5s"}
	st := startStack(t, stackOptions{extraEnv: map[string][]string{"api": apiEnv}})
	st.mustCLI("notify", "set", "ops-mail", "--smtp", mail.SMTP, "--user", mail.User, "--password-file", "smtp.pw",
		"--from", "strata@example.org", "--to", "ops@example.org", "--on", "always")
	st.mustCLI("notify", "set", "chat", "--webhook", srv.URL+"/strata", "--secret-file", "hook.key", "--on", "always")
	var targets []contracts.NotifyTarget
	if err := json.Unmarshal([]byte(st.mustCLI("notify", "ls", "--json")), &targets); err != nil || len(targets) != 2 {
		t.Fatalf("notify ls: %v %+v", err, targets)
	}
	if _, errOut, code := st.cli("notify", "set", "bad", "--webhook", "http://x/", "--secret-file", "../etc/passwd"); code != 2 || !strings.Contains(errOut, "no directory") {
		t.Fatalf("a secret file outside the secrets directory: exit %d %s", code, errOut)
	}

	// One verified backup.
	img := filepath.Join(dir, "web.img")
	if err := demodisk.Write(img, 16<<20, 21); err != nil {
		t.Fatal(err)
	}
	ok := strings.TrimSpace(strings.Split(st.mustCLI("backup", "--vm", "web-01", "--source", "file://"+img, "--wait"), "\n")[0])
	waitUntil(t, time.Minute, "the verified backup's reports", func() bool {
		_, h := hook.report(ok + "/chat")
		return h && len(mails(t, mail, ok)) == 1
	})
	rep, _ := hook.report(ok + "/chat")
	if rep.Event != "backup.verified" || rep.Severity != "success" || rep.VM != "web-01" || rep.VerificationResult != "passed" ||
		rep.ConsoleURL != "http://console.example:18080/ui/vms/web-01/backups/"+ok || rep.ReadBytes == 0 {
		t.Fatalf("webhook report of the verified backup: %+v", rep)
	}
	m := mails(t, mail, ok)[0]
	if !strings.Contains(m.Subject, "OK: backup of web-01 verified") {
		t.Fatalf("mail subject %q", m.Subject)
	}
	for _, want := range []string{"Verification:", "passed", "Read:", "Stored:", "Console:", ok} {
		if !strings.Contains(m.Text, want) {
			t.Errorf("mail lacks %q:\n%s", want, m.Text)
		}
	}

	// One failed backup: its source removed before certify reads it.
	gone := filepath.Join(dir, "gone.img")
	if err := demodisk.Write(gone, 16<<20, 22); err != nil {
		t.Fatal(err)
	}
	sourceGoneBeforeCertify(t, st, "gone", gone, "file://"+gone,
		func() { st.procs["verifier"][len(st.procs["verifier"])-1].Stop() },
		func() { st.waitReady(st.startService("verifier")) })
	recs := st.records("gone")
	failed := recs[len(recs)-1].ID
	waitUntil(t, time.Minute, "the failed backup's reports", func() bool {
		_, h := hook.report(failed + "/chat")
		return h && len(mails(t, mail, failed)) == 1
	})
	if rep, _ := hook.report(failed + "/chat"); rep.Event != "backup.failed" || rep.Severity != "failure" || !strings.Contains(rep.Reason, "cannot read the source") {
		t.Fatalf("webhook report of the failed backup: %+v", rep)
	}
	if m := mails(t, mail, failed)[0]; !strings.Contains(m.Subject, "FAILED: backup of gone") || !strings.Contains(m.Text, "cannot read the source") {
		t.Fatalf("mail of the failed backup: %q\n%s", m.Subject, m.Text)
	}

	// The sender killed while the webhook holds its report: the report is
	// delivered again after the restart, under the same id.
	hook.mu.Lock()
	hook.hold = true
	before := hook.requests
	hook.mu.Unlock()
	third := strings.TrimSpace(strings.Split(st.mustCLI("backup", "--vm", "web-01", "--source", "file://"+img, "--wait"), "\n")[0])
	var held string
	select {
	case held = <-hook.held:
	case <-time.After(time.Minute):
		t.Fatal("the webhook was not called for the third backup")
	}
	if held != third+"/chat" {
		t.Fatalf("held delivery %s, want %s/chat", held, third)
	}
	api := st.procs["api"][0]
	api.Stop() // SIGKILL mid-send
	close(hook.release)
	st.procs["api"] = nil
	st.waitReady(st.startService("api", append([]string{"STRATA_API_ADDR=" + strings.TrimPrefix(st.http, "http://")}, apiEnv...)...))
	waitUntil(t, time.Minute, "the report resent after the restart", func() bool {
		hook.mu.Lock()
		defer hook.mu.Unlock()
		return hook.requests >= before+2 && len(mails(t, mail, third)) == 1
	})
	time.Sleep(3 * time.Second) // nothing more comes
	hook.mu.Lock()
	defer hook.mu.Unlock()
	if hook.bad != 0 {
		t.Errorf("%d webhook requests with a bad signature", hook.bad)
	}
	for _, id := range []string{ok, failed, third} {
		if _, h := hook.reports[id+"/chat"]; !h {
			t.Errorf("no webhook report of %s", id)
		}
		if n := len(mails(t, mail, id)); n != 1 {
			t.Errorf("%d mails about %s, want 1", n, id)
		}
	}
	if len(hook.reports) != 3 {
		t.Errorf("webhook reports %d, want one per backup: %v", len(hook.reports), hook.reports)
	}
	if hook.requests != before+2 {
		t.Errorf("%d webhook requests for the third backup, want 2 (the one cut off, the one resent)", hook.requests-before)
	}
}

type mailMsg struct{ ID, Subject, Text string }

// mails are the messages mailpit holds about a backup.
func mails(t *testing.T, m testserver.Mailpit, backupID string) []mailMsg {
	t.Helper()
	var list struct {
		Messages []struct{ ID, Subject string } `json:"messages"`
	}
	resp, err := http.Get(m.API + "/api/v1/search?query=" + url.QueryEscape(backupID))
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	var out []mailMsg
	for _, l := range list.Messages {
		var msg struct{ Text string }
		resp, err := http.Get(m.API + "/api/v1/message/" + l.ID)
		if err != nil {
			t.Fatal(err)
		}
		json.NewDecoder(resp.Body).Decode(&msg)
		resp.Body.Close()
		out = append(out, mailMsg{l.ID, l.Subject, msg.Text})
	}
	return out
}
