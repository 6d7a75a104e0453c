package metrics

import (
	"context"
	"log/slog"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/strata-backup/strata/pkg/httpserve"
)

// Serve exposes the registry at /metrics on addr until ctx ends. With a
// token file every scrape must carry the token as a bearer token
// (Prometheus: authorization.credentials_file), and only then may addr be
// beyond loopback.
func Serve(ctx context.Context, addr, tokenFile string, log *slog.Logger) (net.Addr, error) {
	var token []byte
	if tokenFile != "" {
		var err error
		if token, err = httpserve.ReadToken(tokenFile); err != nil {
			return nil, err
		}
	}
	h := promhttp.HandlerFor(Registry, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)})
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if token != nil && !httpserve.SameToken(httpserve.Bearer(r), token) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="strata-metrics"`)
			http.Error(w, "a valid bearer token is required (STRATA_METRICS_TOKEN_FILE)", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	}))
	return httpserve.Serve(ctx, httpserve.Options{Name: "metrics", Addr: addr, Guarded: token != nil}, mux, log)
}
