package notify

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/natstest"
	"github.com/strata-backup/strata/internal/testserver"
	"github.com/strata-backup/strata/pkg/bus"
	"github.com/strata-backup/strata/pkg/catalog"
)

type fakeRecords map[string]*contracts.BackupRecord

func (f fakeRecords) Get(_ context.Context, vm, id string) (*contracts.BackupRecord, uint64, error) {
	if r, ok := f[id]; ok {
		return r, 1, nil
	}
	return nil, 0, catalog.ErrNotFound
}

type fakeTargets []contracts.NotifyTarget

func (f fakeTargets) List(context.Context) ([]contracts.NotifyTarget, []string, error) {
	return f, nil, nil
}

func records() fakeRecords {
	start := time.Now().Add(-time.Minute).UTC()
	end := start.Add(42 * time.Second)
	return fakeRecords{
		"ok": {Schema: 1, ID: "ok", VM: "web-01", State: contracts.StateVerified, Kind: "incremental", Parent: "p0", ChainDepth: 3,
			Verify: contracts.VerifyCertify, CreatedAt: start, FinishedAt: &end, TraceID: "4bf92f3577b34da6a3ce929d0e0e4736",
			Disks: []contracts.DiskRecord{{Index: 0, Name: "disk0", Size: 1 << 30, ReadBytes: 8 << 20, UploadedBytes: 3 << 20, Digest: "ab12"}}},
		"bad": {Schema: 1, ID: "bad", VM: "db-01", State: contracts.StateFailed, Error: "open source: no such file", CreatedAt: start, FinishedAt: &end},
	}
}

func sentKV(t *testing.T) jetstream.KeyValue {
	nc := natstest.Start(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := (&bus.Bus{NC: nc, JS: js}).EnsureStreams(ctx, 1); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, contracts.BucketNotifySent)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// A webhook gets each report once, signed, after a failed attempt is
// retried; a redelivered outcome sends nothing again; matchers pick the
// outcomes and VMs; a receiver that refuses is an error to retry later.
func TestWebhookOncePerBackupAndTarget(t *testing.T) {
	dir := t.TempDir()
	key := []byte("hook-secret-0123456789")
	os.WriteFile(filepath.Join(dir, "hook.key"), key, 0o600)
	var mu sync.Mutex
	var got []Report
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == 1 {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		body, _ := io.ReadAll(r.Body)
		if r.Header.Get("X-Strata-Signature") != Sign(key, body) {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var rep Report
		json.Unmarshal(body, &rep)
		if r.Header.Get("X-Strata-Delivery") != rep.Delivery || rep.Delivery == "" {
			http.Error(w, "delivery id", http.StatusBadRequest)
			return
		}
		got = append(got, rep)
	}))
	defer srv.Close()
	targets := fakeTargets{
		{Schema: 1, Name: "hook", Kind: "webhook", URL: srv.URL, SecretFile: "hook.key", On: []string{"failure", "success", "warning"}},
		{Schema: 1, Name: "web-only", Kind: "webhook", URL: srv.URL, SecretFile: "hook.key", On: []string{"failure"}, VMs: "web-*"},
	}
	s := &Senders{SecretsDir: dir, Attempts: 3}
	n := &Notifier{Records: records(), Targets: targets, Sent: sentKV(t), Send: s.Send, Links: Links{Console: "http://console:8080", Jaeger: "http://jaeger:16686"},
		Log: slog.New(slog.DiscardHandler)}
	ctx := context.Background()
	for _, id := range []string{"ok", "bad", "ok", "bad"} { // each twice: redeliveries
		vm := map[string]string{"ok": "web-01", "bad": "db-01"}[id]
		if err := n.Handle(ctx, &contracts.BackupOutcome{Schema: 1, VM: vm, BackupID: id}); err != nil {
			t.Fatal(err)
		}
	}
	if len(got) != 2 {
		t.Fatalf("%d reports, want 2 (one per backup to hook; web-only wants failures of web-*): %+v", len(got), got)
	}
	ok, bad := got[0], got[1]
	if ok.Severity != "success" || ok.VerificationResult != "passed" || ok.Verification != "certify" || ok.ChainDepth != 3 ||
		ok.ConsoleURL != "http://console:8080/ui/vms/web-01/backups/ok" || ok.TraceURL != "http://jaeger:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736" ||
		ok.Disks[0].Digest != "ab12" || ok.DurationSeconds != 42 {
		t.Errorf("verified report: %+v", ok)
	}
	if bad.Severity != "failure" || bad.Reason != "open source: no such file" || bad.Event != "backup.failed" {
		t.Errorf("failed report: %+v", bad)
	}
	// A receiver that refuses: an error, retried by the outcome's next
	// delivery (and dead-lettered at last by the consumer).
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", http.StatusForbidden) }))
	defer refusing.Close()
	n.Targets = fakeTargets{{Schema: 1, Name: "refuses", Kind: "webhook", URL: refusing.URL, SecretFile: "hook.key", On: []string{"success"}}}
	if err := n.Handle(ctx, &contracts.BackupOutcome{Schema: 1, VM: "web-01", BackupID: "ok"}); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("refusing receiver: %v", err)
	}
	if err := n.Handle(ctx, &contracts.BackupOutcome{Schema: 1, VM: "x", BackupID: "unknown"}); !bus.IsPermanent(err) {
		t.Fatalf("outcome of an unknown backup: %v", err)
	}
}

// An e-mail through a real SMTP server (mailpit): STARTTLS, AUTH, the
// report's subject and body; a wrong password is refused.
func TestMailThroughMailpit(t *testing.T) {
	m := testserver.StartMailpit(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "smtp.pw"), []byte(m.Password+"\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "wrong.pw"), []byte("nope\n"), 0o600)
	pem, _ := os.ReadFile(m.CAFile)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	s := &Senders{SecretsDir: dir, RootCAs: pool}
	target := &contracts.NotifyTarget{Schema: 1, Name: "ops", Kind: "smtp", SMTP: m.SMTP, TLS: "starttls", User: m.User, PasswordFile: "smtp.pw",
		From: "strata@example.org", To: []string{"ops@example.org"}, On: []string{"failure"}}
	rep := NewReport(records()["bad"], "ops", Links{Console: "http://console:8080"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Send(ctx, target, rep); err != nil {
		t.Fatal(err)
	}
	wrong := *target
	wrong.PasswordFile = "wrong.pw"
	if err := s.Send(ctx, &wrong, rep); err == nil || !strings.Contains(err.Error(), "auth") {
		t.Fatalf("wrong password: %v", err)
	}
	var list struct {
		Messages []struct {
			ID, Subject string
			MessageID   string `json:"MessageID"`
		} `json:"messages"`
	}
	getJSON(t, m.API+"/api/v1/messages", &list)
	if len(list.Messages) != 1 || !strings.Contains(list.Messages[0].Subject, "FAILED: backup of db-01") || list.Messages[0].MessageID != "bad.ops@strata" {
		t.Fatalf("messages: %+v", list.Messages)
	}
	var msg struct{ Text string }
	getJSON(t, m.API+"/api/v1/message/"+list.Messages[0].ID, &msg)
	for _, want := range []string{"Reason:", "open source: no such file", "http://console:8080/ui/vms/db-01/backups/bad"} {
		if !strings.Contains(msg.Text, want) {
			t.Errorf("mail body lacks %q:\n%s", want, msg.Text)
		}
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}
