package api

// The web console: server-rendered pages (html/template, embedded
// assets, no JavaScript needed) over the same functions the REST
// operations use. Login stores the token in an HttpOnly, SameSite=Strict
// cookie; a form post must come from the console's own origin.

import (
	"cmp"
	"embed"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/strata-backup/strata/contracts"
)

//go:embed web
var webFS embed.FS

var funcs = template.FuncMap{
	"short": func(s string) string {
		if len(s) > 13 {
			return s[:13] + "…"
		}
		return s
	},
	"seconds": func(s float64) string { return (time.Duration(s) * time.Second).Round(time.Second).String() },
	"when": func(v any) string {
		var t time.Time
		switch x := v.(type) {
		case time.Time:
			t = x
		case *time.Time:
			if x == nil {
				return "—"
			}
			t = *x
		}
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05") + " UTC"
	},
	"bytes": humanBytes,
	"int64": func(n int) int64 { return int64(n) },
	"join":  func(dir, name string) string { return path.Join(dir, name) },
	"json": func(v any) string {
		b, _ := json.MarshalIndent(v, "", "  ")
		return string(b)
	},
}

var pages = map[string]*template.Template{}

func init() {
	for _, p := range []string{"login", "fleet", "vm", "backup", "files", "policies", "repository", "deadletters", "message", "notify"} {
		pages[p] = template.Must(template.New(p).Funcs(funcs).ParseFS(webFS, "web/layout.html", "web/"+p+".html"))
	}
}

// page is what every template gets.
type page struct {
	Title, Role, Who string
	Flash, FlashKind string
	Refresh          int
	CanAct, CanEdit  bool
	Message, Next    string
	Data             any
}

// view is one console page: its least role and its handler, which fills
// a page and names its template.
type view func(w http.ResponseWriter, r *http.Request, p *page) (string, error)

func (a *api) consoleRoutes(mux *http.ServeMux) {
	static, _ := fs.Sub(webFS, "web/static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /login", func(w http.ResponseWriter, r *http.Request) {
		a.render(w, r, http.StatusOK, "login", &page{Title: "Log in"})
	})
	mux.HandleFunc("POST /login", a.login)
	mux.HandleFunc("POST /logout", func(w http.ResponseWriter, r *http.Request) {
		http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
		http.Redirect(w, r, "/login", http.StatusSeeOther)
	})
	mux.Handle("GET /{$}", a.view(Viewer, a.fleetPage))
	mux.Handle("GET /ui/vms/{vm}", a.view(Viewer, a.vmPage))
	mux.Handle("GET /ui/vms/{vm}/backups/{id}", a.view(Viewer, a.backupPage))
	mux.Handle("GET /ui/vms/{vm}/backups/{id}/files", a.view(Viewer, a.filesPage))
	mux.Handle("GET /ui/vms/{vm}/backups/{id}/download", a.view(Viewer, func(w http.ResponseWriter, r *http.Request, p *page) (string, error) {
		rec, disk, err := a.backupDisk(r)
		if err != nil {
			return "", err
		}
		return "", a.download(w, r, rec, disk, r.URL.Query().Get("path"))
	}))
	mux.Handle("GET /ui/policies", a.view(Viewer, a.policiesPage))
	mux.Handle("GET /ui/repository", a.view(Viewer, a.repositoryPage))
	mux.Handle("GET /ui/dead-letters", a.view(Viewer, a.deadLettersPage))
	mux.Handle("POST /ui/backup", a.view(Operator, a.backupAction))
	mux.Handle("POST /ui/vms/{vm}/backups/{id}/restore", a.view(Operator, a.restoreAction))
	mux.Handle("POST /ui/vms/{vm}/backups/{id}/verify", a.view(Operator, a.verifyAction))
	mux.Handle("POST /ui/vms/{vm}/backups/{id}/cancel", a.view(Operator, a.cancelAction))
	mux.Handle("POST /ui/vms/{vm}/backups/{id}/export", a.view(Operator, func(w http.ResponseWriter, r *http.Request, p *page) (string, error) {
		rec, err := a.restorable(r.Context(), r.PathValue("vm"), r.PathValue("id"), 0)
		if err != nil {
			return "", err
		}
		if _, err := a.exports.start(a.serviceCtx, a.repo, rec, r.PostFormValue("writable") == "on"); err != nil {
			return "", err
		}
		http.Redirect(w, r, "/ui/vms/"+url.PathEscape(rec.VM)+"/backups/"+url.PathEscape(rec.ID), http.StatusSeeOther)
		return "", nil
	}))
	mux.Handle("POST /ui/exports/{eid}/stop", a.view(Operator, func(w http.ResponseWriter, r *http.Request, p *page) (string, error) {
		if err := a.exports.stopExport(r.PathValue("eid")); err != nil {
			return "", err
		}
		next := r.PostFormValue("next")
		if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") {
			next = "/" // back into the console only
		}
		return message(p, "Export stopped", "The NBD export stopped.", next)
	}))
	mux.Handle("POST /ui/policies", a.view(Admin, a.policyAction))
	mux.Handle("GET /ui/notify", a.view(Viewer, a.notifyPage))
	mux.Handle("POST /ui/notify", a.view(Admin, a.notifyAction))
	mux.Handle("POST /ui/notify/{name}/delete", a.view(Admin, func(w http.ResponseWriter, r *http.Request, p *page) (string, error) {
		if err := a.targets.Delete(r.Context(), r.PathValue("name")); err != nil {
			return "", fail(http.StatusNotFound, "%v", err)
		}
		return message(p, "Target removed", "Notification target "+r.PathValue("name")+" removed.", "/ui/notify")
	}))
}

func (a *api) login(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		a.render(w, r, http.StatusForbidden, "message", &page{Title: "Refused", Message: "a form from another site", FlashKind: "error"})
		return
	}
	tok := strings.TrimSpace(r.PostFormValue("token"))
	probe := &http.Request{Header: http.Header{"Authorization": {"Bearer " + tok}}}
	if role, _ := a.tokens.Role(probe); role == 0 || tok == "" && a.tokens != nil {
		a.log.WarnContext(r.Context(), "console login refused", "remote", r.RemoteAddr)
		a.render(w, r, http.StatusUnauthorized, "login", &page{Title: "Log in", Flash: "That token is not one of the API's.", FlashKind: "error"})
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: tok, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: r.TLS != nil, MaxAge: int((12 * time.Hour).Seconds())})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// sameOrigin: a form post names this host as its origin (or, from an
// older browser, its referer); SameSite=Strict already keeps the cookie
// off other sites' posts.
func sameOrigin(r *http.Request) bool {
	for _, h := range []string{r.Header.Get("Origin"), r.Header.Get("Referer")} {
		if h == "" {
			continue
		}
		u, err := url.Parse(h)
		return err == nil && u.Host == r.Host
	}
	return true // no browser sent this (curl with the token)
}

func (a *api) view(least Role, v view) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		role, who := a.tokens.Role(r)
		if role == 0 {
			if r.Method == "GET" {
				http.Redirect(w, r, "/login", http.StatusSeeOther)
				return
			}
			a.render(w, r, http.StatusUnauthorized, "message", &page{Title: "Log in first", Message: "no valid token", FlashKind: "error", Next: "/login"})
			return
		}
		p := &page{Role: role.String(), Who: who, CanAct: role >= Operator, CanEdit: role >= Admin}
		if role < least {
			a.render(w, r, http.StatusForbidden, "message", &page{Title: "Not allowed", Role: p.Role, Who: who, FlashKind: "error",
				Message: fmt.Sprintf("this needs the %s role; you are a %s", least, role)})
			return
		}
		if r.Method == "POST" && !sameOrigin(r) {
			a.render(w, r, http.StatusForbidden, "message", &page{Title: "Refused", Role: p.Role, Message: "a form from another site", FlashKind: "error"})
			return
		}
		name, err := v(w, r, p)
		if err != nil {
			code := http.StatusInternalServerError
			if he, ok := err.(*httpError); ok {
				code = he.code
			}
			a.log.WarnContext(r.Context(), "console page failed", "path", r.URL.Path, "err", err)
			p.Title, p.Message, p.FlashKind = "Error", err.Error(), "error"
			a.render(w, r, code, "message", p)
			return
		}
		if name != "" {
			a.render(w, r, http.StatusOK, name, p)
		}
	})
}

func (a *api) render(w http.ResponseWriter, r *http.Request, code int, name string, p *page) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	// The template sees the page's fields and its data side by side.
	m := map[string]any{"Title": p.Title, "Role": p.Role, "Who": p.Who, "Flash": p.Flash, "FlashKind": p.FlashKind,
		"Refresh": p.Refresh, "CanAct": p.CanAct, "CanEdit": p.CanEdit, "Message": p.Message, "Next": p.Next}
	if d, ok := p.Data.(map[string]any); ok {
		for k, v := range d {
			m[k] = v
		}
	}
	if err := pages[name].ExecuteTemplate(w, "layout", m); err != nil {
		a.log.ErrorContext(r.Context(), "console template", "page", name, "err", err)
	}
}

// runView is a recent run with its record's numbers.
type runView struct {
	Run
	Kind         string
	Duration     string
	Read, Stored int64
}

func (a *api) fleetPage(w http.ResponseWriter, r *http.Request, p *page) (string, error) {
	vms := a.vms()
	count := map[string]int{"green": 0, "amber": 0, "red": 0, "none": 0}
	for _, v := range vms {
		count[v.Health]++
	}
	// Worst first: what needs attention is at the top.
	rank := map[string]int{"red": 0, "amber": 1, "green": 2, "none": 3}
	slices.SortStableFunc(vms, func(x, y VM) int { return rank[x.Health] - rank[y.Health] })
	var runs []runView
	var running []Running
	if a.runs != nil {
		// One read of the outcomes serves both tables: the running
		// backups' window, of which the last day's newest are shown.
		ended, err := a.runs.Recent(r.Context(), time.Now().Add(-runningWindow), maxRunsRead)
		if err == nil {
			running, err = a.runningFrom(r.Context(), ended)
		}
		if err != nil {
			p.Flash, p.FlashKind = err.Error(), "error"
		}
		var recent []Run
		for _, e := range ended {
			if len(recent) < 100 && time.Since(e.At) < 24*time.Hour {
				recent = append(recent, e)
			}
		}
		for _, run := range recent {
			v := runView{Run: run}
			if rec, _, err := a.records.Get(r.Context(), run.VM, run.BackupID); err == nil {
				v.Kind, v.Read, v.Stored = string(rec.Kind), rec.ReadBytes(), rec.StoredBytes()
				if rec.FinishedAt != nil {
					v.Duration = roundDuration(rec.FinishedAt.Sub(rec.CreatedAt))
				}
			}
			runs = append(runs, v)
		}
	}
	p.Title, p.Refresh = "Fleet", 30
	if len(running) > 0 {
		p.Refresh = 5
	}
	p.Data = map[string]any{"VMs": vms, "Count": count, "Runs": runs, "Running": running}
	return "fleet", nil
}

func (a *api) vmPage(w http.ResponseWriter, r *http.Request, p *page) (string, error) {
	name := r.PathValue("vm")
	recs, err := a.records.List(r.Context(), name)
	if err != nil {
		return "", err
	}
	vm := VM{Name: name, Health: "none"}
	for _, v := range a.vms() {
		if v.Name == name {
			vm = v
		}
	}
	if len(recs) == 0 && vm.Policy == nil {
		return "", fail(http.StatusNotFound, "no VM %q: no policy and no backup", name)
	}
	source := ""
	if vm.Policy != nil {
		source = vm.Policy.Source
	} else if len(recs) > 0 {
		source = recs[len(recs)-1].Source
	}
	newest := slices.Clone(recs)
	slices.Reverse(newest)
	p.Title = name
	p.Data = map[string]any{"VM": vm, "Backups": newest, "Chart": bytesSVG(recs), "Source": source}
	return "vm", nil
}

type progress struct{ Done, Total int }

func (a *api) backupPage(w http.ResponseWriter, r *http.Request, p *page) (string, error) {
	rec, _, err := a.records.Get(r.Context(), r.PathValue("vm"), r.PathValue("id"))
	if err != nil {
		return "", err
	}
	d := map[string]any{"Backup": rec, "Restorable": rec.State == contracts.StateVerified || rec.State == contracts.StateCommitted}
	if a.exports != nil {
		d["Exports"], d["CanWrite"] = a.exports.list(rec.VM, rec.ID), a.exports.dir != ""
	}
	d["Targets"] = a.restoreTargets
	if !rec.State.Final() {
		p.Refresh = 2 // until it ends: verified, or failed with its reason
		if t := rec.Segments(); t > 0 {
			d["Progress"] = progress{rec.SegmentsDone(), t}
		}
	}
	if rec.FinishedAt != nil {
		d["Took"] = roundDuration(rec.FinishedAt.Sub(rec.CreatedAt))
	}
	switch {
	case a.jaeger == nil:
		d["TimelineNote"] = "No Jaeger configured (STRATA_JAEGER_QUERY_URL)."
	case rec.TraceID == "":
		d["TimelineNote"] = "This backup has no trace id."
	default:
		d["TraceLink"] = a.jaegerUI + "/trace/" + rec.TraceID
		spans, err := a.jaeger.Trace(r.Context(), rec.TraceID)
		if err != nil {
			d["TimelineNote"] = "Jaeger: " + err.Error()
		} else if len(spans) == 0 {
			d["TimelineNote"] = "Jaeger has no spans of this trace (yet)."
		} else {
			var services []string
			for _, s := range spans {
				if !slices.Contains(services, s.Service) {
					services = append(services, s.Service)
				}
			}
			slices.Sort(services)
			d["Spans"], d["Services"], d["Timeline"] = spans, services, timelineSVG(spans)
		}
	}
	p.Title = rec.VM + " " + rec.ID
	p.Data = d
	return "backup", nil
}

// backupDisk is the backup and disk a files request names.
func (a *api) backupDisk(r *http.Request) (*contracts.BackupRecord, int, error) {
	disk := 0
	if s := r.URL.Query().Get("disk"); s != "" {
		var err error
		if disk, err = strconv.Atoi(s); err != nil {
			return nil, 0, fail(http.StatusBadRequest, "disk %q: not a number", s)
		}
	}
	rec, err := a.restorable(r.Context(), r.PathValue("vm"), r.PathValue("id"), disk)
	return rec, disk, err
}

type crumb struct{ Name, Href string }

func (a *api) filesPage(w http.ResponseWriter, r *http.Request, p *page) (string, error) {
	rec, disk, err := a.backupDisk(r)
	if err != nil {
		return "", err
	}
	at := cmp.Or(r.URL.Query().Get("path"), "/")
	l, err := a.list(r.Context(), rec, disk, at)
	if err != nil {
		return "", err
	}
	base := fmt.Sprintf("/ui/vms/%s/backups/%s/files?disk=%d", url.PathEscape(rec.VM), url.PathEscape(rec.ID), disk)
	crumbs := []crumb{{"", base + "&path=/"}}
	walked := ""
	for _, part := range strings.Split(strings.Trim(l.Path, "/"), "/") {
		if part == "" {
			continue
		}
		walked += "/" + part
		crumbs = append(crumbs, crumb{part, base + "&path=" + url.QueryEscape(walked)})
	}
	p.Title = "Files of " + rec.ID
	p.Data = map[string]any{"Backup": rec, "Disk": disk, "Listing": l, "Base": template.URL(base), "Crumbs": crumbs}
	return "files", nil
}

func (a *api) policiesPage(w http.ResponseWriter, r *http.Request, p *page) (string, error) {
	list, err := a.policies.List(r.Context())
	if err != nil {
		return "", err
	}
	p.Title = "Policies"
	p.Data = map[string]any{"Policies": list}
	return "policies", nil
}

func (a *api) repositoryPage(w http.ResponseWriter, r *http.Request, p *page) (string, error) {
	d := map[string]any{}
	var stats contracts.RepoStatsReply
	if err := a.ask(r, time.Minute, contracts.SubjectDedupStats, &contracts.RepoStatsRequest{Schema: contracts.SchemaVersion}, &stats); err != nil {
		d["Note"] = "statistics unavailable: " + err.Error()
	} else {
		d["Stats"] = &stats
	}
	bad, err := a.bad.List(r.Context())
	if err != nil {
		return "", err
	}
	d["Bad"] = bad
	p.Title, p.Data = "Repository", d
	return "repository", nil
}

func (a *api) deadLettersPage(w http.ResponseWriter, r *http.Request, p *page) (string, error) {
	dl, err := a.dlq.Last(r.Context(), 100)
	if err != nil {
		return "", err
	}
	p.Title, p.Data = "Dead letters", map[string]any{"Dead": dl}
	return "deadletters", nil
}

// message ends an action with what happened and where to go on.
func message(p *page, title, msg, next string) (string, error) {
	p.Title, p.Message, p.Next, p.FlashKind = title, msg, next, "ok"
	return "message", nil
}

func (a *api) backupAction(w http.ResponseWriter, r *http.Request, p *page) (string, error) {
	t := &contracts.BackupTrigger{Schema: contracts.SchemaVersion, VM: strings.TrimSpace(r.PostFormValue("vm")), Source: strings.TrimSpace(r.PostFormValue("source"))}
	if err := t.Validate(); err != nil {
		return "", fail(http.StatusBadRequest, "%v", err)
	}
	if err := a.sourceAllowed(t.Source); err != nil {
		return "", err
	}
	var accepted contracts.BackupAccepted
	if err := a.ask(r, 30*time.Second, contracts.SubjectSchedulerRun, t, &accepted); err != nil {
		return "", err
	}
	http.Redirect(w, r, "/ui/vms/"+url.PathEscape(t.VM)+"/backups/"+url.PathEscape(accepted.BackupID), http.StatusSeeOther)
	return "", nil
}

func (a *api) restoreAction(w http.ResponseWriter, r *http.Request, p *page) (string, error) {
	disk, err := strconv.Atoi(cmp.Or(r.PostFormValue("disk"), "0"))
	if err != nil {
		return "", fail(http.StatusBadRequest, "disk: not a number")
	}
	rec, err := a.restorable(r.Context(), r.PathValue("vm"), r.PathValue("id"), disk)
	if err != nil {
		return "", err
	}
	if target := strings.TrimSpace(r.PostFormValue("target")); target != "" {
		if _, err := a.restoreToHypervisor(r.Context(), rec, target); err != nil {
			return "", err
		}
		return message(p, "Restored", fmt.Sprintf("Backup %s is a new VM at %s.", rec.ID, target), "/ui/vms/"+url.PathEscape(rec.VM)+"/backups/"+url.PathEscape(rec.ID))
	}
	res, err := a.restoreTo(r.Context(), rec, disk, r.PostFormValue("path"))
	if err != nil {
		return "", err
	}
	return message(p, "Restored", fmt.Sprintf("Disk %d of %s written to %s (%s).", disk, rec.ID, res.Path, humanBytes(res.Bytes)),
		"/ui/vms/"+url.PathEscape(rec.VM)+"/backups/"+url.PathEscape(rec.ID))
}

func (a *api) verifyAction(w http.ResponseWriter, r *http.Request, p *page) (string, error) {
	req := &contracts.VerifyRequest{Schema: contracts.SchemaVersion, VM: r.PathValue("vm"), BackupID: r.PathValue("id"),
		Mode: contracts.VerifyMode(r.PostFormValue("mode"))}
	if err := req.Validate(); err != nil {
		return "", fail(http.StatusBadRequest, "%v", err)
	}
	var reply contracts.VerifyReply
	if err := a.ask(r, time.Hour, contracts.SubjectVerify, req, &reply); err != nil {
		return "", err
	}
	msg := fmt.Sprintf("%s verification passed (%d chunks, %s checked).", req.Mode, reply.ChunksChecked, humanBytes(reply.BytesChecked))
	if !reply.OK {
		msg = fmt.Sprintf("%s verification FAILED: %s", req.Mode, reply.Problem)
	}
	next := "/ui/vms/" + url.PathEscape(req.VM) + "/backups/" + url.PathEscape(req.BackupID)
	if !reply.OK {
		p.Title, p.Message, p.Next, p.FlashKind = "Verification failed", msg, next, "error"
		return "message", nil
	}
	return message(p, "Verified", msg, next)
}

func (a *api) cancelAction(w http.ResponseWriter, r *http.Request, p *page) (string, error) {
	req := &contracts.CancelRequest{Schema: contracts.SchemaVersion, VM: r.PathValue("vm"), BackupID: r.PathValue("id")}
	var reply contracts.CancelReply
	if err := a.ask(r, 30*time.Second, contracts.SubjectSchedulerCancel, req, &reply); err != nil {
		return "", err
	}
	http.Redirect(w, r, "/ui/vms/"+url.PathEscape(req.VM)+"/backups/"+url.PathEscape(req.BackupID), http.StatusSeeOther)
	return "", nil
}

func (a *api) policyAction(w http.ResponseWriter, r *http.Request, p *page) (string, error) {
	n := func(k string) int { v, _ := strconv.Atoi(r.PostFormValue(k)); return v }
	pol := &contracts.Policy{Schema: contracts.SchemaVersion, VM: strings.TrimSpace(r.PostFormValue("vm")), Source: strings.TrimSpace(r.PostFormValue("source")),
		Schedule: strings.TrimSpace(r.PostFormValue("schedule")), KeepLast: n("keep_last"), KeepDaily: n("keep_daily"), KeepWeekly: n("keep_weekly"),
		Verify: contracts.VerifyMode(r.PostFormValue("verify")), UpdatedAt: time.Now().UTC()}
	if s := strings.TrimSpace(r.PostFormValue("rpo")); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			return "", fail(http.StatusBadRequest, "rpo %q: %v", s, err)
		}
		pol.RPO = d
	}
	if err := a.setPolicy(r.Context(), pol); err != nil {
		return "", err
	}
	return message(p, "Policy saved", "The policy of "+pol.VM+" is saved.", "/ui/policies")
}

// roundDuration: milliseconds under a minute, seconds above.
func roundDuration(d time.Duration) string {
	if d < time.Minute {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func (a *api) notifyPage(w http.ResponseWriter, r *http.Request, p *page) (string, error) {
	list, _, err := a.targets.List(r.Context())
	if err != nil {
		return "", err
	}
	p.Title, p.Data = "Job reports", map[string]any{"Targets": list}
	return "notify", nil
}

func (a *api) notifyAction(w http.ResponseWriter, r *http.Request, p *page) (string, error) {
	f := func(k string) string { return strings.TrimSpace(r.PostFormValue(k)) }
	t := &contracts.NotifyTarget{Schema: contracts.SchemaVersion, Name: f("name"), Kind: f("kind"), On: []string{f("on")}, VMs: f("vms"),
		SMTP: f("smtp"), TLS: f("tls"), User: f("user"), PasswordFile: f("password_file"), From: f("from"),
		URL: f("url"), SecretFile: f("secret_file"), UpdatedAt: time.Now().UTC()}
	for _, to := range strings.Split(f("to"), ",") {
		if to = strings.TrimSpace(to); to != "" {
			t.To = append(t.To, to)
		}
	}
	if err := a.targets.Put(r.Context(), t); err != nil {
		return "", fail(http.StatusBadRequest, "%v", err)
	}
	return message(p, "Target saved", "Notification target "+t.Name+" saved.", "/ui/notify")
}
