package api

import (
	"cmp"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/bus"
	"github.com/strata-backup/strata/pkg/catalog"
	"github.com/strata-backup/strata/pkg/notify"
	"github.com/strata-backup/strata/pkg/schedule"
)

//go:embed openapi.json
var openapiDoc []byte

// route is one operation: the OpenAPI document describes exactly these
// (a test holds the two together).
type route struct {
	method, path string // path in OpenAPI form: /v1/vms/{vm}
	role         Role   // the least role allowed; 0: no token needed
	h            func(w http.ResponseWriter, r *http.Request) error
}

func (a *api) routes() []route {
	return []route{
		{"GET", "/healthz", 0, a.health},
		{"GET", "/v1/openapi.json", 0, a.openapi},
		{"GET", "/v1/whoami", Viewer, a.whoami},
		{"GET", "/v1/vms", Viewer, a.listVMs},
		{"GET", "/v1/vms/{vm}", Viewer, a.getVM},
		{"GET", "/v1/vms/{vm}/backups", Viewer, a.listBackups},
		{"GET", "/v1/vms/{vm}/backups/{id}", Viewer, a.getBackup},
		{"GET", "/v1/vms/{vm}/backups/{id}/files", Viewer, a.listFiles},
		{"GET", "/v1/vms/{vm}/backups/{id}/download", Viewer, a.downloadFile},
		{"POST", "/v1/vms/{vm}/backups/{id}/restore", Operator, a.restoreFile},
		{"GET", "/v1/runs", Viewer, a.listRuns},
		{"GET", "/v1/running", Viewer, a.listRunning},
		{"POST", "/v1/vms/{vm}/backups/{id}/exports", Operator, a.startExport},
		{"GET", "/v1/exports", Viewer, a.listExports},
		{"DELETE", "/v1/exports/{id}", Operator, a.deleteExport},
		{"POST", "/v1/vms/{vm}/backups/{id}/cancel", Operator, a.cancel},
		{"POST", "/v1/backups", Operator, a.startBackup},
		{"GET", "/v1/policies", Viewer, a.listPolicies},
		{"GET", "/v1/policies/{vm}", Viewer, a.getPolicy},
		{"PUT", "/v1/policies/{vm}", Admin, a.putPolicy},
		{"DELETE", "/v1/policies/{vm}", Admin, a.deletePolicy},
		{"GET", "/v1/repository", Viewer, a.repository},
		{"POST", "/v1/verify", Operator, a.verify},
		{"POST", "/v1/prune", Operator, a.prune},
		{"POST", "/v1/gc", Operator, a.gc},
		{"GET", "/v1/bad-chunks", Viewer, a.badChunks},
		{"GET", "/v1/notify", Viewer, a.listTargets},
		{"PUT", "/v1/notify/{name}", Admin, a.putTarget},
		{"DELETE", "/v1/notify/{name}", Admin, a.deleteTarget},
		{"GET", "/v1/dead-letters", Viewer, a.deadLetters},
	}
}

// httpError is an error with its status code.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func fail(code int, format string, args ...any) error {
	return &httpError{code: code, msg: fmt.Sprintf(format, args...)}
}

func (a *api) handler() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range a.routes() {
		mux.HandleFunc(rt.method+" "+rt.path, func(w http.ResponseWriter, r *http.Request) {
			if rt.role > 0 {
				role, who := a.tokens.Role(r)
				if role == 0 {
					w.Header().Set("WWW-Authenticate", `Bearer realm="strata"`)
					writeJSON(w, http.StatusUnauthorized, errorBody{"a valid bearer token is required (Authorization: Bearer …)"})
					return
				}
				if role < rt.role {
					a.log.WarnContext(r.Context(), "api: refused for its role", "token", who, "role", role, "needs", rt.role, "op", rt.method+" "+rt.path)
					writeJSON(w, http.StatusForbidden, errorBody{fmt.Sprintf("%s needs the %s role; this token is a %s", rt.method+" "+rt.path, rt.role, role)})
					return
				}
				if rt.method != "GET" {
					a.log.InfoContext(r.Context(), "api action", "token", who, "role", role, "op", rt.method+" "+r.URL.Path)
				}
			}
			if err := rt.h(w, r); err != nil {
				a.writeError(w, r, err)
			}
		})
	}
	a.consoleRoutes(mux)
	// Anything else under /v1 is a JSON 404, not the mux's text.
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, errorBody{fmt.Sprintf("no operation %s %s (GET /v1/openapi.json lists them)", r.Method, r.URL.Path)})
	})
	return mux
}

type errorBody struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// writeError answers with the status an error stands for: refused input
// 400, absent 404, a service's refusal 400, a service that failed 500, no
// service answering 503.
func (a *api) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var he *httpError
	var re *bus.RemoteError
	code := http.StatusInternalServerError
	switch {
	case errors.As(err, &he):
		code = he.code
	case errors.Is(err, catalog.ErrNotFound):
		code = http.StatusNotFound
	case errors.As(err, &re) && re.Code == "400":
		code = http.StatusBadRequest
	case bus.IsPermanent(err):
		code = http.StatusBadRequest
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		code = http.StatusServiceUnavailable
	}
	if code >= 500 {
		a.log.ErrorContext(r.Context(), "api request failed", "op", r.Method+" "+r.URL.Path, "err", err)
	} else {
		a.log.WarnContext(r.Context(), "api request refused", "op", r.Method+" "+r.URL.Path, "remote", r.RemoteAddr, "code", code, "reason", err)
	}
	writeJSON(w, code, errorBody{err.Error()})
}

// decode reads a JSON body into m: unknown fields, trailing data and an
// invalid message are refused with the reason.
func decode(r *http.Request, m contracts.Message) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return fail(http.StatusBadRequest, "read body: %v", err)
	}
	if err := contracts.Decode(body, m); err != nil {
		return fail(http.StatusBadRequest, "%v", err)
	}
	return nil
}

// ask sends a request to a service's endpoint on behalf of r, its trace
// context carried on, bounded by timeout.
func (a *api) ask(r *http.Request, timeout time.Duration, subject string, req, reply contracts.Message) error {
	ctx := otel.GetTextMapPropagator().Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return a.request(ctx, subject, req, reply)
}

func (a *api) health(w http.ResponseWriter, r *http.Request) error {
	if !a.connected() {
		return fail(http.StatusServiceUnavailable, "nats disconnected")
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	return nil
}

func (a *api) openapi(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Content-Type", "application/json")
	w.Write(openapiDoc)
	return nil
}

func (a *api) whoami(w http.ResponseWriter, r *http.Request) error {
	role, name := a.tokens.Role(r)
	writeJSON(w, http.StatusOK, map[string]string{"role": role.String(), "token": name})
	return nil
}

// VM is a VM's protection as the API shows it.
type VM struct {
	Name string `json:"name"`
	// Health: green (verified within the RPO), amber (verified, but the
	// newest outcome failed or half the RPO has passed), red (nothing
	// verified within the RPO), none (no policy, no backup).
	Health     string              `json:"health"`
	RPOSeconds float64             `json:"rpo_seconds,omitempty"`
	AgeSeconds float64             `json:"age_seconds,omitempty"` // of the newest verified backup
	NextRun    *time.Time          `json:"next_run,omitempty"`
	Policy     *contracts.Policy   `json:"policy,omitempty"`
	Status     *contracts.VMStatus `json:"status,omitempty"`
}

func (a *api) vms() []VM {
	now := time.Now()
	var out []VM
	for _, v := range a.fleet.VMs() {
		vm := VM{Name: v.Name, Health: v.Health(now), RPOSeconds: v.RPO(now).Seconds(), Policy: v.Policy, Status: v.Status}
		if v.Status != nil && v.Status.LastVerifiedAt != nil {
			vm.AgeSeconds = now.Sub(*v.Status.LastVerifiedAt).Seconds()
		}
		if p := v.Policy; p != nil {
			if _, run, err := schedule.NextRun(p.VM, p.Schedule, p.Jitter, now); err == nil {
				vm.NextRun = &run
			}
		}
		out = append(out, vm)
	}
	return out
}

func (a *api) listVMs(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, append([]VM{}, a.vms()...))
	return nil
}

func (a *api) getVM(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("vm")
	for _, v := range a.vms() {
		if v.Name == name {
			writeJSON(w, http.StatusOK, v)
			return nil
		}
	}
	return fail(http.StatusNotFound, "no VM %q: it has no policy and no finished backup", name)
}

func (a *api) listBackups(w http.ResponseWriter, r *http.Request) error {
	recs, err := a.records.List(r.Context(), r.PathValue("vm"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, append([]*contracts.BackupRecord{}, recs...))
	return nil
}

func (a *api) getBackup(w http.ResponseWriter, r *http.Request) error {
	rec, _, err := a.records.Get(r.Context(), r.PathValue("vm"), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, rec)
	return nil
}

func (a *api) cancel(w http.ResponseWriter, r *http.Request) error {
	req := &contracts.CancelRequest{Schema: contracts.SchemaVersion, VM: r.PathValue("vm"), BackupID: r.PathValue("id")}
	if err := req.Validate(); err != nil {
		return fail(http.StatusBadRequest, "%v", err)
	}
	var reply contracts.CancelReply
	if err := a.ask(r, 30*time.Second, contracts.SubjectSchedulerCancel, req, &reply); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, &reply)
	return nil
}

// startBackup is the trigger that was the scheduler's: a BackupTrigger →
// 202 with the backup's id.
func (a *api) startBackup(w http.ResponseWriter, r *http.Request) error {
	var t contracts.BackupTrigger
	if err := decode(r, &t); err != nil {
		return err
	}
	if err := a.sourceAllowed(t.Source); err != nil {
		return err
	}
	var accepted contracts.BackupAccepted
	if err := a.ask(r, 30*time.Second, contracts.SubjectSchedulerRun, &t, &accepted); err != nil {
		return err
	}
	writeJSON(w, http.StatusAccepted, &accepted)
	return nil
}

// sourceAllowed: over a listener beyond loopback, file sources need an
// allow list (anyone holding a token could otherwise have the workers read
// any file on their hosts); with one, every source must be under it.
func (a *api) sourceAllowed(src string) error {
	if len(a.allow) == 0 {
		if !a.loopback && strings.HasPrefix(src, "file:") {
			return fail(http.StatusForbidden, "source %q refused: file sources over a non-loopback API need STRATA_SOURCE_ALLOW", src)
		}
		return nil
	}
	if !contracts.SourceUnder(a.allow, src) {
		return fail(http.StatusForbidden, "source %q refused: not under STRATA_SOURCE_ALLOW (%s)", src, strings.Join(a.allow, ", "))
	}
	return nil
}

func (a *api) listPolicies(w http.ResponseWriter, r *http.Request) error {
	list, err := a.policies.List(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, append([]contracts.Policy{}, list...))
	return nil
}

func (a *api) getPolicy(w http.ResponseWriter, r *http.Request) error {
	p, ok, err := a.policies.Get(r.Context(), r.PathValue("vm"))
	if err != nil {
		return err
	}
	if !ok {
		return fail(http.StatusNotFound, "no policy for VM %q", r.PathValue("vm"))
	}
	writeJSON(w, http.StatusOK, &p)
	return nil
}

// putPolicy sets a VM's policy: the body is a Policy whose vm is the
// path's; updated_at is set here.
func (a *api) putPolicy(w http.ResponseWriter, r *http.Request) error {
	var p contracts.Policy
	if err := decodeStrict(r, &p); err != nil {
		return err
	}
	if p.VM == "" {
		p.VM = r.PathValue("vm")
	}
	if p.VM != r.PathValue("vm") {
		return fail(http.StatusBadRequest, "policy names VM %q, the path %q", p.VM, r.PathValue("vm"))
	}
	if p.Schema == 0 {
		p.Schema = contracts.SchemaVersion
	}
	p.UpdatedAt = time.Now().UTC()
	if err := a.setPolicy(r.Context(), &p); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, &p)
	return nil
}

// setPolicy stores a policy that validates and whose schedule parses.
func (a *api) setPolicy(ctx context.Context, p *contracts.Policy) error {
	if err := p.Validate(); err != nil {
		return fail(http.StatusBadRequest, "invalid policy: %v", err)
	}
	if _, err := schedule.Parse(p.Schedule); err != nil {
		return fail(http.StatusBadRequest, "%v", err)
	}
	return a.policies.Put(ctx, p)
}

func (a *api) deletePolicy(w http.ResponseWriter, r *http.Request) error {
	if _, ok, err := a.policies.Get(r.Context(), r.PathValue("vm")); err != nil {
		return err
	} else if !ok {
		return fail(http.StatusNotFound, "no policy for VM %q", r.PathValue("vm"))
	}
	if err := a.policies.Delete(r.Context(), r.PathValue("vm")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *api) repository(w http.ResponseWriter, r *http.Request) error {
	var reply contracts.RepoStatsReply
	if err := a.ask(r, 10*time.Minute, contracts.SubjectDedupStats, &contracts.RepoStatsRequest{Schema: contracts.SchemaVersion}, &reply); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, &reply)
	return nil
}

// relay is an operation that is a service's endpoint: the body decoded
// strictly into the request, check may refuse it, the service's reply
// written back.
func relay[Req, Reply any, PReq interface {
	*Req
	contracts.Message
}, PReply interface {
	*Reply
	contracts.Message
}](a *api, w http.ResponseWriter, r *http.Request, subject string, timeout time.Duration, check func(PReq) error) error {
	var req PReq = new(Req)
	if err := decode(r, req); err != nil {
		return err
	}
	if check != nil {
		if err := check(req); err != nil {
			return err
		}
	}
	var reply PReply = new(Reply)
	if err := a.ask(r, timeout, subject, req, reply); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, reply)
	return nil
}

func (a *api) verify(w http.ResponseWriter, r *http.Request) error {
	return relay[contracts.VerifyRequest, contracts.VerifyReply](a, w, r, contracts.SubjectVerify, 6*time.Hour, nil)
}

// prune: a dry run is an operator's; deleting backups is an admin's.
func (a *api) prune(w http.ResponseWriter, r *http.Request) error {
	return relay[contracts.PruneRequest, contracts.PruneReply](a, w, r, contracts.SubjectMergePrune, time.Hour, func(req *contracts.PruneRequest) error {
		if req.DryRun {
			return nil
		}
		return a.need(r, Admin, "prune without dry_run deletes backups")
	})
}

// gc: a dry run is an operator's; collecting is an admin's.
func (a *api) gc(w http.ResponseWriter, r *http.Request) error {
	return relay[contracts.GCRequest, contracts.GCReply](a, w, r, contracts.SubjectDedupGC, 24*time.Hour, func(req *contracts.GCRequest) error {
		if req.DryRun {
			return nil
		}
		return a.need(r, Admin, "gc without dry_run deletes objects")
	})
}

func (a *api) need(r *http.Request, role Role, why string) error {
	if got, _ := a.tokens.Role(r); got < role {
		return fail(http.StatusForbidden, "%s: needs the %s role; this token is a %s", why, role, got)
	}
	return nil
}

func (a *api) badChunks(w http.ResponseWriter, r *http.Request) error {
	list, err := a.bad.List(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, append([]contracts.BadChunk{}, list...))
	return nil
}

func (a *api) deadLetters(w http.ResponseWriter, r *http.Request) error {
	n := 20
	if s := r.URL.Query().Get("limit"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > 1000 {
			return fail(http.StatusBadRequest, "limit %q: want 1 to 1000", s)
		}
		n = v
	}
	d, err := a.dlq.Last(r.Context(), n)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, d)
	return nil
}

func (a *api) listFiles(w http.ResponseWriter, r *http.Request) error {
	rec, disk, err := a.backupDisk(r)
	if err != nil {
		return err
	}
	l, err := a.list(r.Context(), rec, disk, cmp.Or(r.URL.Query().Get("path"), "/"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, l)
	return nil
}

func (a *api) downloadFile(w http.ResponseWriter, r *http.Request) error {
	rec, disk, err := a.backupDisk(r)
	if err != nil {
		return err
	}
	return a.download(w, r, rec, disk, r.URL.Query().Get("path"))
}

// RestoreRequest restores one disk of a backup to a file inside the API's
// restore directory.
type RestoreRequest struct {
	Disk int    `json:"disk"`
	Path string `json:"path,omitempty"`
	// Target: a hypervisor URL instead (vsphere://HOST/NEW-VM[?datastore=…],
	// libvirt+unix:///system/NEW-NAME): a new VM from every disk.
	Target string `json:"target,omitempty"`
}

func (a *api) restoreFile(w http.ResponseWriter, r *http.Request) error {
	var req RestoreRequest
	if err := decodeStrict(r, &req); err != nil {
		return err
	}
	if (req.Path == "") == (req.Target == "") {
		return fail(http.StatusBadRequest, "restore to a path or to a target (a hypervisor), one of them")
	}
	rec, err := a.restorable(r.Context(), r.PathValue("vm"), r.PathValue("id"), req.Disk)
	if err != nil {
		return err
	}
	if req.Target != "" {
		res, err := a.restoreToHypervisor(r.Context(), rec, req.Target)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, res)
		return nil
	}
	res, err := a.restoreTo(r.Context(), rec, req.Disk, req.Path)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

func (a *api) listRuns(w http.ResponseWriter, r *http.Request) error {
	hours := 24
	if s := r.URL.Query().Get("hours"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > 24*31 {
			return fail(http.StatusBadRequest, "hours %q: want 1 to 744", s)
		}
		hours = v
	}
	runs, err := a.runs.Recent(r.Context(), time.Now().Add(-time.Duration(hours)*time.Hour), 1000)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, append([]Run{}, runs...))
	return nil
}

func (a *api) listTargets(w http.ResponseWriter, r *http.Request) error {
	list, _, err := a.targets.List(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, append([]contracts.NotifyTarget{}, list...))
	return nil
}

// putTarget sets a notification target: the body is a NotifyTarget whose
// name is the path's (schema and name may be left out).
func (a *api) putTarget(w http.ResponseWriter, r *http.Request) error {
	var t contracts.NotifyTarget
	if err := decodeStrict(r, &t); err != nil {
		return err
	}
	if t.Name == "" {
		t.Name = r.PathValue("name")
	}
	if t.Name != r.PathValue("name") {
		return fail(http.StatusBadRequest, "target named %q, the path %q", t.Name, r.PathValue("name"))
	}
	if t.Schema == 0 {
		t.Schema = contracts.SchemaVersion
	}
	t.UpdatedAt = time.Now().UTC()
	if err := a.targets.Put(r.Context(), &t); err != nil {
		return fail(http.StatusBadRequest, "%v", err)
	}
	writeJSON(w, http.StatusOK, &t)
	return nil
}

func (a *api) deleteTarget(w http.ResponseWriter, r *http.Request) error {
	if err := a.targets.Delete(r.Context(), r.PathValue("name")); err != nil {
		if errors.Is(err, notify.ErrNotFound) {
			return fail(http.StatusNotFound, "%v", err)
		}
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// Running is a backup under way, with its progress.
type Running struct {
	VM           string    `json:"vm"`
	BackupID     string    `json:"backup_id"`
	State        string    `json:"state"`
	Kind         string    `json:"kind,omitempty"`
	StartedAt    time.Time `json:"started_at"`
	SegmentsDone int       `json:"segments_done"`
	Segments     int       `json:"segments"`
	ReadBytes    int64     `json:"read_bytes"`
	StoredBytes  int64     `json:"stored_bytes"`
	TraceID      string    `json:"trace_id,omitempty"`
}

// runningWindow: how far back the backups still running are looked for
// (longer than any backup's deadline).
const runningWindow = 48 * time.Hour

// running lists the backups requested in the window that have no outcome
// yet, each as its record now says (one read per running backup).
func (a *api) running(ctx context.Context) ([]Running, error) {
	ended, err := a.runs.Recent(ctx, time.Now().Add(-runningWindow), maxRunsRead)
	if err != nil {
		return nil, err
	}
	return a.runningFrom(ctx, ended)
}

// runningFrom is running given the window's outcomes (newest first).
func (a *api) runningFrom(ctx context.Context, ended []Run) ([]Running, error) {
	started, err := a.runs.Started(ctx, time.Now().Add(-runningWindow), 5000)
	if err != nil {
		return nil, err
	}
	done := map[string]bool{}
	for _, e := range ended {
		done[e.BackupID] = true
	}
	out := []Running{}
	for _, s := range started {
		if done[s.BackupID] {
			continue
		}
		rec, _, err := a.records.Get(ctx, s.VM, s.BackupID)
		if err != nil || rec.State.Final() {
			continue // never planned, or ended after the outcomes were read
		}
		out = append(out, Running{VM: rec.VM, BackupID: rec.ID, State: string(rec.State), Kind: string(rec.Kind), StartedAt: rec.CreatedAt,
			SegmentsDone: rec.SegmentsDone(), Segments: rec.Segments(), ReadBytes: rec.ReadBytes(), StoredBytes: rec.StoredBytes(), TraceID: rec.TraceID})
	}
	return out, nil
}

func (a *api) listRunning(w http.ResponseWriter, r *http.Request) error {
	list, err := a.running(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, list)
	return nil
}

func jsonDecoder(r *http.Request) *json.Decoder {
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	return dec
}
