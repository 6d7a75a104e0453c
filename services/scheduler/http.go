package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/bus"
)

// serveHTTP exposes the event trigger over HTTP for systems that cannot
// speak NATS: POST /v1/backups {"schema":1,"vm":"…","source":"…"} → 202
// {"backup_id":…}; a malformed trigger gets 400 with the reason.
func (s *scheduler) serveHTTP(ctx context.Context, addr string, acc *access) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("scheduler http on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: s.handler(acc), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("scheduler http stopped", "err", err)
		}
	}()
	s.log.Info("http trigger listening", "addr", ln.Addr().String(), "token", acc.token != nil, "source_allow", acc.allow)
	return nil
}

func (s *scheduler) handler(acc *access) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/backups", func(w http.ResponseWriter, r *http.Request) {
		if !acc.authorized(r) {
			s.log.Warn("http trigger refused: no valid bearer token", "remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", `Bearer realm="strata"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "a valid bearer token is required (STRATA_API_TOKEN_FILE)"})
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var t contracts.BackupTrigger
		if err := contracts.Decode(body, &t); err != nil {
			s.log.Warn("http trigger refused", "remote", r.RemoteAddr, "reason", err)
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		if err := acc.sourceAllowed(t.Source); err != nil {
			s.log.Warn("http trigger refused", "remote", r.RemoteAddr, "reason", err)
			writeJSON(w, http.StatusForbidden, map[string]string{"error": err.Error()})
			return
		}
		ctx := otel.GetTextMapPropagator().Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		accepted, err := s.start(ctx, &t)
		if bus.IsPermanent(err) {
			writeJSON(w, http.StatusForbidden, map[string]string{"error": err.Error()})
			return
		}
		if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusAccepted, accepted)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if !s.connected() {
			http.Error(w, "nats disconnected", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
