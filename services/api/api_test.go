package api

import (
	"cmp"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/bus"
	"github.com/strata-backup/strata/pkg/catalog"
	"github.com/strata-backup/strata/pkg/fleet"
	"github.com/strata-backup/strata/pkg/notify"
)

const (
	viewerToken   = "viewer-token-0123456789"
	operatorToken = "operator-token-0123456789"
	adminToken    = "admin-token-0123456789"
)

func tokenFile(t *testing.T, text string) string {
	p := filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(p, []byte(text), 0o600)
	return p
}

// fakes of the API's ports
type fakeRecords struct{ recs []*contracts.BackupRecord }

func (f *fakeRecords) Get(_ context.Context, vm, id string) (*contracts.BackupRecord, uint64, error) {
	for _, r := range f.recs {
		if r.VM == vm && r.ID == id {
			return r, 1, nil
		}
	}
	return nil, 0, catalog.ErrNotFound
}

func (f *fakeRecords) List(_ context.Context, vm string) ([]*contracts.BackupRecord, error) {
	var out []*contracts.BackupRecord
	for _, r := range f.recs {
		if r.VM == vm {
			out = append(out, r)
		}
	}
	return out, nil
}

type fakePolicies struct {
	mu sync.Mutex
	by map[string]contracts.Policy
}

func (f *fakePolicies) List(context.Context) ([]contracts.Policy, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []contracts.Policy
	for _, p := range f.by {
		out = append(out, p)
	}
	return out, nil
}
func (f *fakePolicies) Get(_ context.Context, vm string) (contracts.Policy, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.by[vm]
	return p, ok, nil
}
func (f *fakePolicies) Put(_ context.Context, p *contracts.Policy) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.by[p.VM] = *p
	return nil
}
func (f *fakePolicies) Delete(_ context.Context, vm string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.by, vm)
	return nil
}

type fakeFleet struct{ vms []fleet.VM }

func (f fakeFleet) VMs() []fleet.VM { return f.vms }

type fakeBad struct{}

func (fakeBad) List(context.Context) ([]contracts.BadChunk, error) {
	return []contracts.BadChunk{{ID: strings.Repeat("ab", 32), Reason: "missing", FoundAt: time.Now()}}, nil
}

type fakeDLQ struct{}

func (fakeDLQ) Last(_ context.Context, n int) (*DeadLetters, error) {
	return &DeadLetters{Count: 1, Messages: []DeadLetter{{Seq: 1, Subject: "strata.backup.requested", Reason: "decode: bad"}}}, nil
}

type fakeTargets struct {
	by map[string]contracts.NotifyTarget
}

func (f *fakeTargets) List(context.Context) ([]contracts.NotifyTarget, []string, error) {
	var out []contracts.NotifyTarget
	for _, t := range f.by {
		out = append(out, t)
	}
	return out, nil, nil
}

func (f *fakeTargets) Put(_ context.Context, t *contracts.NotifyTarget) error {
	t.Normalize()
	if err := t.Validate(); err != nil {
		return err
	}
	f.by[t.Name] = *t
	return nil
}

func (f *fakeTargets) Delete(_ context.Context, name string) error {
	if _, ok := f.by[name]; !ok {
		return notify.ErrNotFound
	}
	delete(f.by, name)
	return nil
}

type fakeRuns struct{}

func (fakeRuns) Recent(context.Context, time.Time, int) ([]Run, error) {
	return []Run{{VM: "web", BackupID: "b1", State: "verified", At: time.Now()}}, nil
}

func (fakeRuns) Started(context.Context, time.Time, int) ([]Run, error) {
	return []Run{{VM: "web", BackupID: "b1", State: "requested"}, {VM: "web", BackupID: "b2", State: "requested"}}, nil
}

// testAPI is an API on fakes; requests records the subjects asked.
func testAPI(t *testing.T, addr, tokens string, allow []string) (*api, *[]string) {
	t.Helper()
	cfg := Config{Addr: addr, SourceAllow: allow}
	if tokens != "" {
		cfg.TokenFile = tokenFile(t, tokens)
	}
	a, err := newAPI(cfg)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	rec := &contracts.BackupRecord{Schema: contracts.SchemaVersion, ID: "b1", VM: "web", Source: "file:///x.img", State: contracts.StateVerified,
		ChunkSize: 1 << 18, CreatedAt: now, FinishedAt: &now}
	a.records = &fakeRecords{recs: []*contracts.BackupRecord{rec}}
	a.policies = &fakePolicies{by: map[string]contracts.Policy{"web": {Schema: 1, VM: "web", Source: "file:///x.img", Schedule: "@every 1h", UpdatedAt: now}}}
	a.fleet = fakeFleet{vms: []fleet.VM{{Name: "web", Status: &contracts.VMStatus{Schema: 1, VM: "web", LastVerified: "b1", LastVerifiedAt: &now}}}}
	a.bad, a.dlq, a.runs = fakeBad{}, fakeDLQ{}, fakeRuns{}
	a.targets = &fakeTargets{by: map[string]contracts.NotifyTarget{"ops": {Schema: 1, Name: "ops", Kind: "webhook", URL: "https://hooks.example/x", SecretFile: "k", On: []string{"failure"}, UpdatedAt: now}}}
	a.connected = func() bool { return true }
	a.exports, _ = newExports("127.0.0.1", "", slog.New(slog.DiscardHandler))
	a.log = slog.New(slog.DiscardHandler)
	var mu sync.Mutex
	asked := &[]string{}
	a.request = func(_ context.Context, subject string, req, reply contracts.Message) error {
		mu.Lock()
		*asked = append(*asked, subject)
		mu.Unlock()
		switch r := reply.(type) {
		case *contracts.BackupAccepted:
			r.Schema, r.BackupID = 1, "new-backup"
		case *contracts.CancelReply:
			r.Schema = 1
		}
		if req, ok := req.(*contracts.PruneRequest); ok && req.VM == "unknown" {
			return &bus.RemoteError{Subject: subject, Code: "400", Message: "no backups of unknown"}
		}
		return nil
	}
	return a, asked
}

type call struct {
	method, path, token, body string
}

func do(t *testing.T, h http.Handler, c call) (int, string) {
	t.Helper()
	req := httptest.NewRequest(c.method, c.path, strings.NewReader(c.body))
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	b, _ := io.ReadAll(w.Result().Body)
	return w.Code, string(b)
}

// The OpenAPI document describes exactly the routes served, each with the
// role it requires; every one of them answers here as documented.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]struct {
			Role      string                     `json:"x-strata-role"`
			Responses map[string]json.RawMessage `json:"responses"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(openapiDoc, &doc); err != nil {
		t.Fatal(err)
	}
	a, _ := testAPI(t, "127.0.0.1:0", "viewer "+viewerToken+"\noperator "+operatorToken+"\nadmin "+adminToken+"\n", nil)
	documented := map[string]string{}
	for path, ops := range doc.Paths {
		for m, op := range ops {
			documented[strings.ToUpper(m)+" "+path] = op.Role
		}
	}
	served := map[string]bool{}
	for _, r := range a.routes() {
		key := r.method + " " + r.path
		served[key] = true
		role, ok := documented[key]
		if !ok {
			t.Errorf("%s is served but not in the OpenAPI document", key)
			continue
		}
		want := ""
		if r.role > 0 {
			want = r.role.String()
		}
		if role != want {
			t.Errorf("%s: document says role %q, served with %q", key, role, want)
		}
	}
	for key := range documented {
		if !served[key] {
			t.Errorf("%s is documented but not served", key)
		}
	}

	// Every operation, called as documented by a token of its role.
	h := a.handler()
	calls := map[string]call{
		"GET /healthz":                          {path: "/healthz"},
		"GET /v1/openapi.json":                  {path: "/v1/openapi.json"},
		"GET /v1/whoami":                        {path: "/v1/whoami"},
		"GET /v1/vms":                           {path: "/v1/vms"},
		"GET /v1/vms/{vm}":                      {path: "/v1/vms/web"},
		"GET /v1/vms/{vm}/backups":              {path: "/v1/vms/web/backups"},
		"GET /v1/vms/{vm}/backups/{id}":         {path: "/v1/vms/web/backups/b1"},
		"POST /v1/vms/{vm}/backups/{id}/cancel": {path: "/v1/vms/web/backups/b1/cancel"},
		"POST /v1/backups":                      {path: "/v1/backups", body: `{"schema":1,"vm":"web","source":"file:///x.img"}`},
		"GET /v1/policies":                      {path: "/v1/policies"},
		"GET /v1/policies/{vm}":                 {path: "/v1/policies/web"},
		"PUT /v1/policies/{vm}":                 {path: "/v1/policies/db", body: `{"source":"nbd://kvm1:10809/db","schedule":"0 2 * * *","rpo":3600000000000}`},
		"DELETE /v1/policies/{vm}":              {path: "/v1/policies/web"},
		"GET /v1/repository":                    {path: "/v1/repository"},
		"POST /v1/verify":                       {path: "/v1/verify", body: `{"schema":1,"vm":"web","backup_id":"b1","mode":"stored"}`},
		"POST /v1/prune":                        {path: "/v1/prune", body: `{"schema":1,"vm":"web","keep_last":3,"dry_run":true}`},
		"POST /v1/gc":                           {path: "/v1/gc", body: `{"schema":1,"dry_run":true}`},
		"GET /v1/bad-chunks":                    {path: "/v1/bad-chunks"},
		"GET /v1/dead-letters":                  {path: "/v1/dead-letters?limit=5"},
		"GET /v1/runs":                          {path: "/v1/runs?hours=2"},
		"GET /v1/notify":                        {path: "/v1/notify"},
		"GET /v1/running":                       {path: "/v1/running"},
		"GET /v1/exports":                       {path: "/v1/exports"},
		"PUT /v1/notify/{name}":                 {path: "/v1/notify/chat", body: `{"kind":"webhook","url":"https://hooks.example/strata","secret_file":"hook.key","on":["always"]}`},
		"DELETE /v1/notify/{name}":              {path: "/v1/notify/ops"},
	}
	// Reading a disk's files and restoring it need a repository:
	// TestAPIService (e2e) calls these on a real backup.
	elsewhere := map[string]bool{"GET /v1/vms/{vm}/backups/{id}/files": true, "GET /v1/vms/{vm}/backups/{id}/download": true,
		"POST /v1/vms/{vm}/backups/{id}/restore": true, "POST /v1/vms/{vm}/backups/{id}/exports": true, "DELETE /v1/exports/{id}": true}
	tokenOf := map[string]string{"": "", "viewer": viewerToken, "operator": operatorToken, "admin": adminToken}
	keys := slices.Sorted(maps.Keys(documented))
	slices.SortStableFunc(keys, func(x, y string) int { // deletes last: the others read what they remove
		last := func(k string) int {
			if strings.HasPrefix(k, "DELETE") {
				return 1
			}
			return 0
		}
		return cmp.Compare(last(x), last(y))
	})
	for _, key := range keys {
		role := documented[key]
		c, ok := calls[key]
		if !ok && elsewhere[key] {
			continue
		}
		if !ok {
			t.Errorf("%s is not exercised by this test", key)
			continue
		}
		c.method, c.token = strings.Fields(key)[0], tokenOf[role]
		code, body := do(t, h, c)
		var okCodes []string
		for k := range doc.Paths[strings.Fields(key)[1]][strings.ToLower(c.method)].Responses {
			if strings.HasPrefix(k, "2") {
				okCodes = append(okCodes, k)
			}
		}
		if !slices.Contains(okCodes, http.StatusText(code)) && !slices.Contains(okCodes, itoa(code)) {
			t.Errorf("%s as %s: %d %s, want one of %v", key, role, code, body, okCodes)
		}
		if c.method == "GET" && !json.Valid([]byte(body)) {
			t.Errorf("%s: not JSON: %s", key, body)
		}
		if role == "" {
			continue
		}
		// No token: 401; a token of the role below: 403.
		c.token = ""
		if code, body := do(t, h, c); code != http.StatusUnauthorized || !strings.Contains(body, `"error"`) {
			t.Errorf("%s without a token: %d %s", key, code, body)
		}
		c.token = "not-a-token-0123456789"
		if code, _ := do(t, h, c); code != http.StatusUnauthorized {
			t.Errorf("%s with an unknown token: %d", key, code)
		}
		if below := map[string]string{"operator": viewerToken, "admin": operatorToken}[role]; below != "" {
			c.token = below
			if code, body := do(t, h, c); code != http.StatusForbidden || !strings.Contains(body, "role") {
				t.Errorf("%s with a lesser role: %d %s", key, code, body)
			}
		}
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// Bodies are strict: malformed JSON, an unknown field, trailing data and
// an invalid message are 400 with the reason, and reach no service.
func TestMalformedBodiesRefused(t *testing.T) {
	a, asked := testAPI(t, "127.0.0.1:0", "admin "+adminToken, nil)
	h := a.handler()
	for _, c := range []struct{ path, method, body, says string }{
		{"/v1/backups", "POST", `{"schema":1,"vm":"web"`, "decode"},
		{"/v1/backups", "POST", `{"schema":1,"vm":"web","source":"file:///x.img","colour":"red"}`, "unknown field"},
		{"/v1/backups", "POST", `{"schema":1,"vm":"web","source":"file:///x.img"} {}`, "trailing"},
		{"/v1/backups", "POST", `{"schema":1,"vm":"web","source":"/x.img"}`, "source"},
		{"/v1/backups", "POST", `{"schema":2,"vm":"web","source":"file:///x.img"}`, "schema"},
		{"/v1/verify", "POST", `{"schema":1,"mode":"sideways"}`, "mode"},
		{"/v1/prune", "POST", `[]`, "decode"},
		{"/v1/gc", "POST", ``, "decode"},
		{"/v1/policies/web", "PUT", `{"source":"file:///x.img","schedule":"every tuesday"}`, "schedule"},
		{"/v1/policies/web", "PUT", `{"source":"file:///x.img","schedule":"@daily","keep_forever":true}`, "unknown field"},
		{"/v1/policies/web", "PUT", `{"vm":"db","source":"file:///x.img","schedule":"@daily"}`, "path"},
		{"/v1/dead-letters?limit=0", "GET", ``, "limit"},
		{"/v1/notify/x", "PUT", `{"kind":"webhook","url":"ftp://x","secret_file":"k"}`, "url"},
		{"/v1/notify/x", "PUT", `{"kind":"webhook","url":"https://x/","secret_file":"../k"}`, "no directory"},
		{"/v1/notify/x", "PUT", `{"kind":"smtp","smtp":"mail:25","from":"a@b","to":["c@d"],"colour":1}`, "unknown field"},
	} {
		code, body := do(t, h, call{method: c.method, path: c.path, token: adminToken, body: c.body})
		var e errorBody
		if code != http.StatusBadRequest || json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e.Error, c.says) {
			t.Errorf("%s %s %s: %d %s, want 400 saying %q", c.method, c.path, c.body, code, body, c.says)
		}
	}
	if len(*asked) != 0 {
		t.Errorf("refused requests reached services: %v", *asked)
	}
	// A service's refusal is the caller's 400; an unknown path a JSON 404.
	if code, body := do(t, h, call{method: "POST", path: "/v1/prune", token: adminToken, body: `{"schema":1,"vm":"unknown","keep_last":1,"dry_run":true}`}); code != 400 || !strings.Contains(body, "no backups") {
		t.Errorf("prune of an unknown VM: %d %s", code, body)
	}
	if code, body := do(t, h, call{method: "GET", path: "/v1/nothing", token: adminToken}); code != 404 || !json.Valid([]byte(body)) {
		t.Errorf("unknown path: %d %s", code, body)
	}
	if code, _ := do(t, h, call{method: "GET", path: "/v1/vms/web/backups/nope", token: adminToken}); code != 404 {
		t.Errorf("unknown backup: %d", code)
	}
}

// Deleting is an admin's: an operator's prune or gc must be a dry run.
func TestDeletingNeedsAdmin(t *testing.T) {
	a, asked := testAPI(t, "127.0.0.1:0", "operator "+operatorToken+"\nadmin "+adminToken, nil)
	h := a.handler()
	for _, c := range []call{
		{method: "POST", path: "/v1/prune", body: `{"schema":1,"vm":"web","keep_last":1}`},
		{method: "POST", path: "/v1/gc", body: `{"schema":1}`},
	} {
		c.token = operatorToken
		if code, body := do(t, h, c); code != 403 {
			t.Errorf("%s by an operator: %d %s", c.path, code, body)
		}
		c.token = adminToken
		if code, body := do(t, h, c); code != 200 {
			t.Errorf("%s by an admin: %d %s", c.path, code, body)
		}
	}
	if len(*asked) != 2 {
		t.Errorf("services asked %v, want the admin's two", *asked)
	}
}

// The trigger that moved here from the scheduler: beyond loopback it needs
// tokens, and takes file sources only under STRATA_SOURCE_ALLOW.
func TestTriggerAccess(t *testing.T) {
	if _, err := newAPI(Config{Addr: ":8080"}); err == nil || !strings.Contains(err.Error(), "STRATA_API_TOKEN_FILE") {
		t.Fatalf("wildcard bind without tokens: %v", err)
	}
	for _, bad := range []string{"short", "operator", "superuser " + adminToken, adminToken + "\n" + adminToken, "# nothing\n"} {
		if _, err := newAPI(Config{Addr: ":8080", TokenFile: tokenFile(t, bad)}); err == nil {
			t.Errorf("token file %q accepted", bad)
		}
	}
	if _, err := newAPI(Config{Addr: "127.0.0.1:0", SourceAllow: []string{"ftp://x/"}}); err == nil {
		t.Fatal("allow prefix of an unsupported scheme accepted")
	}
	// A bare token (the former trigger's file) is an operator's.
	a, asked := testAPI(t, ":8080", operatorToken+"\n", nil)
	h := a.handler()
	post := func(src string) int {
		code, _ := do(t, h, call{method: "POST", path: "/v1/backups", token: operatorToken, body: `{"schema":1,"vm":"vm1","source":"` + src + `"}`})
		return code
	}
	if code := post("file:///etc/shadow"); code != 403 {
		t.Errorf("file source over a wildcard listener without an allow list: %d", code)
	}
	if code := post("nbd://kvm1:10809/vm1"); code != 202 {
		t.Errorf("nbd source: %d", code)
	}
	a, _ = testAPI(t, ":8080", operatorToken, []string{"file:///srv/images/"})
	a.request = func(context.Context, string, contracts.Message, contracts.Message) error {
		*asked = append(*asked, "x")
		return nil
	}
	h = a.handler()
	for src, want := range map[string]int{"file:///srv/images/a.img": 202, "file:///srv/images/../../etc/shadow": 400, "nbd://kvm1:10809/vm1": 403} {
		if code := post(src); code != want {
			t.Errorf("%s: %d, want %d", src, code, want)
		}
	}
	// Loopback without tokens: everything allowed.
	local, _ := testAPI(t, "127.0.0.1:0", "", nil)
	if code, body := do(t, local.handler(), call{method: "POST", path: "/v1/backups", body: `{"schema":1,"vm":"vm1","source":"file:///srv/a.img"}`}); code != 202 {
		t.Errorf("loopback trigger: %d %s", code, body)
	}
	if len(*asked) != 2 {
		t.Errorf("%d backups requested, want 2 (one per accepted trigger)", len(*asked))
	}
}
