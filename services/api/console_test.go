package api

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// The console's pages render from the fakes; a viewer sees no action
// button and its form posts are refused; a login sets an HttpOnly cookie;
// a post from another origin is refused.
func TestConsolePages(t *testing.T) {
	a, asked := testAPI(t, "127.0.0.1:0", "viewer "+viewerToken+"\noperator "+operatorToken+"\nadmin "+adminToken, nil)
	h := a.handler()
	get := func(path, token string) (int, string) {
		req := httptest.NewRequest("GET", path, nil)
		if token != "" {
			req.AddCookie(&http.Cookie{Name: sessionCookie, Value: token})
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code, w.Body.String()
	}
	if code, _ := get("/", ""); code != http.StatusSeeOther {
		t.Fatalf("fleet without a login: %d", code)
	}
	for _, p := range []string{"/", "/ui/vms/web", "/ui/vms/web/backups/b1", "/ui/policies", "/ui/dead-letters", "/ui/repository", "/ui/notify", "/login"} {
		for _, tok := range []string{viewerToken, operatorToken} {
			code, body := get(p, tok)
			if code != 200 || !strings.Contains(body, "</html>") {
				t.Errorf("%s: %d", p, code)
			}
			buttons := strings.Contains(body, `id="backup-start"`) || strings.Contains(body, `id="backup-now"`) || strings.Contains(body, `id="restore"`)
			if tok == viewerToken && buttons {
				t.Errorf("%s shows a viewer an action button", p)
			}
			if tok == operatorToken && (p == "/" || p == "/ui/vms/web") && !buttons {
				t.Errorf("%s shows an operator no action button", p)
			}
		}
	}
	if _, body := get("/", viewerToken); !strings.Contains(body, `data-vm="web"`) || !strings.Contains(body, "b1") {
		t.Error("the fleet page lacks the VM or its run")
	}
	post := func(path, token, origin string, form url.Values) int {
		req := httptest.NewRequest("POST", path, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Host = "console.example"
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		if token != "" {
			req.AddCookie(&http.Cookie{Name: sessionCookie, Value: token})
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code
	}
	*asked = nil // the repository page asked for statistics
	form := url.Values{"vm": {"web"}, "source": {"file:///x.img"}}
	if code := post("/ui/backup", viewerToken, "http://console.example", form); code != http.StatusForbidden {
		t.Errorf("viewer's backup form: %d", code)
	}
	if code := post("/ui/backup", operatorToken, "http://evil.example", form); code != http.StatusForbidden {
		t.Errorf("cross-origin backup form: %d", code)
	}
	if len(*asked) != 0 {
		t.Fatalf("refused forms reached a service: %v", *asked)
	}
	if code := post("/ui/backup", operatorToken, "http://console.example", form); code != http.StatusSeeOther || len(*asked) != 1 {
		t.Errorf("operator's backup form: %d, asked %v", code, *asked)
	}
	// Login: a wrong token is refused; a right one sets the cookie.
	req := httptest.NewRequest("POST", "/login", strings.NewReader(url.Values{"token": {"wrong-token-0123456789"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code != http.StatusUnauthorized || len(w.Result().Cookies()) != 0 {
		t.Errorf("wrong token login: %d %v", w.Code, w.Result().Cookies())
	}
	req = httptest.NewRequest("POST", "/login", strings.NewReader(url.Values{"token": {viewerToken}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	w = httptest.NewRecorder()
	h.ServeHTTP(w, req)
	c := w.Result().Cookies()
	if w.Code != http.StatusSeeOther || len(c) != 1 || !c[0].HttpOnly || c[0].SameSite != http.SameSiteStrictMode {
		t.Errorf("login: %d %+v", w.Code, c)
	}
}
