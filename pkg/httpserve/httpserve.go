// Package httpserve starts Strata's HTTP listeners one way: refused beyond
// loopback unless the caller guards them with tokens, TLS when given a
// certificate, shut down with the context.
package httpserve

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// IsLoopback reports whether a listen address can only be reached from
// this host: an empty or wildcard host, or a name other than localhost,
// is not.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Options of one listener.
type Options struct {
	Name     string // for errors and logs: "metrics", "api"
	Addr     string
	Guarded  bool   // every request needs a token: may listen beyond loopback
	CertFile string // TLS certificate and key (PEM); both or neither
	KeyFile  string
}

// Serve listens on o.Addr and serves h until ctx ends; it returns the
// bound address (o.Addr may end in :0).
func Serve(ctx context.Context, o Options, h http.Handler, log *slog.Logger) (net.Addr, error) {
	if !o.Guarded && !IsLoopback(o.Addr) {
		return nil, fmt.Errorf("%s on %s listens beyond loopback without authentication: give it a token file or bind 127.0.0.1", o.Name, o.Addr)
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return nil, fmt.Errorf("%s: TLS needs both a certificate and a key file", o.Name)
	}
	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return nil, fmt.Errorf("%s on %s: %w", o.Name, o.Addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	go func() {
		var err error
		if o.CertFile != "" {
			err = srv.ServeTLS(ln, o.CertFile, o.KeyFile)
		} else {
			err = srv.Serve(ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error(o.Name+" listener stopped", "err", err)
		}
	}()
	log.Info(o.Name+" listening", "addr", ln.Addr().String(), "tls", o.CertFile != "", "authenticated", o.Guarded)
	return ln.Addr(), nil
}

// ReadToken reads a bearer token from a file (surrounding space trimmed);
// shorter than 16 characters is refused.
func ReadToken(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	t := []byte(strings.TrimSpace(string(b)))
	if len(t) < 16 {
		return nil, fmt.Errorf("%s: token shorter than 16 characters", path)
	}
	return t, nil
}

// Bearer returns the request's bearer token ("" when it has none).
func Bearer(r *http.Request) string {
	t, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return t
}

// SameToken compares tokens in constant time.
func SameToken(got string, want []byte) bool {
	return len(want) > 0 && subtle.ConstantTimeCompare([]byte(got), want) == 1
}
