package metrics

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-backup/strata/pkg/objstore"
)

// A scrape without the token is refused; with it, the metrics are there,
// object store requests counted per operation by the observer.
func TestServeWithToken(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	if _, err := Serve(ctx, "0.0.0.0:0", "", log); err == nil || !strings.Contains(err.Error(), "beyond loopback") {
		t.Fatalf("open metrics beyond loopback: %v", err)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte("short\n"), 0o600)
	if _, err := Serve(ctx, "127.0.0.1:0", tokenFile, log); err == nil {
		t.Fatal("short token accepted")
	}
	os.WriteFile(tokenFile, []byte("0123456789abcdef0123\n"), 0o600)
	addr, err := Serve(ctx, "127.0.0.1:0", tokenFile, log)
	if err != nil {
		t.Fatal(err)
	}

	store := objstore.WithObserver(objstore.NewMem(), ObserveS3)
	store.Put(ctx, "a", []byte("x"))
	if _, err := store.Get(ctx, "missing"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatal(err)
	}

	get := func(token string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+addr.String()+"/metrics", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		c := &http.Client{Timeout: 5 * time.Second}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get(""); code != http.StatusUnauthorized {
		t.Fatalf("no token: %d", code)
	}
	if code, _ := get("0123456789abcdef0124"); code != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d", code)
	}
	code, body := get("0123456789abcdef0123")
	if code != http.StatusOK {
		t.Fatalf("token: %d", code)
	}
	for _, want := range []string{`strata_s3_requests_total{op="put"} 1`, `strata_s3_requests_total{op="get"} 1`, "strata_backup_success_total 0", "go_goroutines"} {
		if !strings.Contains(body, want) {
			t.Errorf("no %q in the scrape", want)
		}
	}
	if strings.Contains(body, `strata_s3_errors_total{op="get"}`) {
		t.Error("a not-found get counted as an error")
	}
}
