package httpserve

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/strata-backup/strata/internal/testserver"
)

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:8080": true, "[::1]:8080": true, "localhost:8080": true, "127.0.0.2:1": true,
		":8080": false, "0.0.0.0:8080": false, "[::]:8080": false, "10.1.2.3:8080": false, "backup.example:8080": false, "garbage": false,
	} {
		if got := IsLoopback(addr); got != want {
			t.Errorf("IsLoopback(%q) = %v", addr, got)
		}
	}
}

// A listener beyond loopback is refused unless guarded; with a
// certificate it serves HTTPS only.
func TestServeTLSAndLoopback(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	if _, err := Serve(ctx, Options{Name: "api", Addr: "0.0.0.0:0"}, ok, log); err == nil {
		t.Fatal("unguarded listener beyond loopback accepted")
	}
	if _, err := Serve(ctx, Options{Name: "api", Addr: "127.0.0.1:0", CertFile: "x.pem"}, ok, log); err == nil {
		t.Fatal("a certificate without a key accepted")
	}
	dir := testserver.X509Dir(t)
	addr, err := Serve(ctx, Options{Name: "api", Addr: "127.0.0.1:0", Guarded: true,
		CertFile: filepath.Join(dir, "server-cert.pem"), KeyFile: filepath.Join(dir, "server-key.pem")}, ok, log)
	if err != nil {
		t.Fatal(err)
	}
	pem, _ := os.ReadFile(filepath.Join(dir, "ca-cert.pem"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := c.Get("https://" + addr.String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" {
		t.Fatalf("https: %q", b)
	}
	if resp, err := http.Get("http://" + addr.String() + "/"); err == nil && resp.StatusCode == 200 {
		t.Fatal("plain HTTP served on the TLS listener")
	}
}
