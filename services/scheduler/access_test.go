package scheduler

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-backup/strata/contracts"
)

func tokenFile(t *testing.T, token string) string {
	p := filepath.Join(t.TempDir(), "token")
	os.WriteFile(p, []byte(token+"\n"), 0o600)
	return p
}

func TestNonLoopbackNeedsToken(t *testing.T) {
	if _, err := newAccess(":8080", "", nil); err == nil || !strings.Contains(err.Error(), "STRATA_API_TOKEN_FILE") {
		t.Fatalf("wildcard bind without token: %v", err)
	}
	if _, err := newAccess(":8080", tokenFile(t, "short"), nil); err == nil {
		t.Fatal("short token accepted")
	}
	if _, err := newAccess(":8080", tokenFile(t, "0123456789abcdef0123"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := newAccess("127.0.0.1:8080", "", []string{"ftp://x/"}); err == nil {
		t.Fatal("allow prefix of an unsupported scheme accepted")
	}
	// The compose deployment's list.
	if _, err := newAccess("127.0.0.1:8080", "", []string{"file:///sources/", "nbd://", "vsphere://"}); err != nil {
		t.Fatal(err)
	}
}

func TestAllowedBy(t *testing.T) {
	allow := []string{"file:///srv/images/", "file:///data/vm1.img", "nbd://kvm1:10809"}
	for src, want := range map[string]bool{
		"file:///srv/images/a.img":      true,
		"file:///srv/images-evil/a.img": false,
		"file:///data/vm1.img":          true,
		"file:///data/vm1.img.bak":      false,
		"file:///etc/shadow":            false,
		"nbd://kvm1:10809/vm1":          true,
		"nbd://kvm1:10809/vm1?bitmap=b": true,
		"nbd://kvm1:108090/vm1":         false,
		"nbd://kvm10:10809/vm1":         false,
		"vsphere://vc/vm":               false,
	} {
		if got := allowedBy(allow, src); got != want {
			t.Errorf("allowedBy(%q) = %v", src, got)
		}
	}
}

// The HTTP trigger (on in-memory ports): 401 without the token or
// with a wrong one, 403 for a source outside the allow list or a file
// source on a non-loopback endpoint without one, 202 otherwise.
func TestHTTPTriggerAccess(t *testing.T) {
	s, _, pub, _ := testScheduler()
	const token = "s3cret-token-0123456789"
	post := func(h http.Handler, auth, source string) (int, string) {
		srv := httptest.NewServer(h)
		defer srv.Close()
		body, _ := json.Marshal(contracts.BackupTrigger{Schema: contracts.SchemaVersion, VM: "vm1", Source: source})
		req, _ := http.NewRequest("POST", srv.URL+"/v1/backups", strings.NewReader(string(body)))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var m map[string]any
		json.NewDecoder(res.Body).Decode(&m)
		b, _ := json.Marshal(m)
		return res.StatusCode, string(b)
	}
	open, err := newAccess(":8080", tokenFile(t, token), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		auth, source string
		code         int
		says         string
	}{
		{"", "nbd://kvm1:10809/vm1", 401, "bearer token"},
		{"Bearer wrong-token-0123456789", "nbd://kvm1:10809/vm1", 401, "bearer token"},
		{"Basic " + token, "nbd://kvm1:10809/vm1", 401, "bearer token"},
		{"Bearer " + token, "file:///etc/shadow", 403, "STRATA_SOURCE_ALLOW"},
		{"Bearer " + token, "nbd://kvm1:10809/vm1", 202, "backup_id"},
	} {
		if code, body := post(s.handler(open), c.auth, c.source); code != c.code || !strings.Contains(body, c.says) {
			t.Errorf("%q %s: %d %s, want %d with %q", c.auth, c.source, code, body, c.code, c.says)
		}
	}
	limited, err := newAccess(":8080", tokenFile(t, token), []string{"file:///srv/images/"})
	if err != nil {
		t.Fatal(err)
	}
	s.allow = limited.allow
	for src, want := range map[string]int{"file:///srv/images/a.img": 202, "file:///srv/images/../../etc/shadow": 400, "nbd://kvm1:10809/vm1": 403} {
		if code, body := post(s.handler(limited), "Bearer "+token, src); code != want {
			t.Errorf("%s: %d %s, want %d", src, code, body, want)
		}
	}
	// Loopback without a token: no authentication, any source.
	local, _ := newAccess("127.0.0.1:0", "", nil)
	s.allow = nil
	if code, body := post(s.handler(local), "", "file:///srv/a.img"); code != 202 {
		t.Errorf("loopback trigger: %d %s", code, body)
	}
	// Every 202 requested a backup; nothing refused did.
	if n := len(pub.requests()); n != 3 {
		t.Errorf("%d backups requested, want 3 (one per accepted trigger)", n)
	}
}
