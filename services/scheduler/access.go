package scheduler

import (
	"crypto/subtle"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/httpserve"
)

// access decides who may trigger a backup over HTTP, and of what.
type access struct {
	token    []byte   // bearer token; nil: none required (loopback only)
	allow    []string // source URL prefixes; nil: any source
	loopback bool     // the endpoint listens on loopback only
}

// newAccess checks the endpoint's settings before it listens: a listener
// beyond loopback needs a token, and without STRATA_SOURCE_ALLOW it takes
// no file sources (anyone who reaches the port could otherwise have the
// workers read any file on their hosts into the repository).
func newAccess(addr, tokenFile string, allow []string) (*access, error) {
	a := &access{loopback: httpserve.IsLoopback(addr), allow: allow}
	for _, p := range allow {
		u, err := url.Parse(p)
		if err != nil || !slices.Contains(contracts.SourceSchemes, u.Scheme) || !strings.Contains(p, "://") {
			return nil, fmt.Errorf("STRATA_SOURCE_ALLOW: prefix %q is not the start of a source URL (%s://…)", p, strings.Join(contracts.SourceSchemes, ":// "))
		}
	}
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, fmt.Errorf("STRATA_API_TOKEN_FILE: %w", err)
		}
		a.token = []byte(strings.TrimSpace(string(b)))
		if len(a.token) < 16 {
			return nil, fmt.Errorf("STRATA_API_TOKEN_FILE %s: token shorter than 16 characters", tokenFile)
		}
	}
	if !a.loopback && a.token == nil {
		return nil, fmt.Errorf("STRATA_SCHEDULER_HTTP_ADDR=%s listens beyond loopback: set STRATA_API_TOKEN_FILE (bearer token) or bind 127.0.0.1", addr)
	}
	return a, nil
}

// authorized checks the bearer token in constant time.
func (a *access) authorized(r *http.Request) bool {
	if a.token == nil {
		return true
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), a.token) == 1
}

// sourceAllowed refuses a source outside the allowed prefixes. Paths are
// clean (contracts.ValidateSource refuses "..", so a prefix cannot be
// escaped); a prefix matches whole path components.
func (a *access) sourceAllowed(src string) error {
	if len(a.allow) == 0 {
		if !a.loopback && strings.HasPrefix(src, "file:") {
			return fmt.Errorf("source %q refused: file sources over a non-loopback endpoint need STRATA_SOURCE_ALLOW", src)
		}
		return nil
	}
	if allowedBy(a.allow, src) {
		return nil
	}
	return fmt.Errorf("source %q refused: not under STRATA_SOURCE_ALLOW (%s)", src, strings.Join(a.allow, ", "))
}

// allowedBy: src equals a prefix, or continues it at a path boundary.
func allowedBy(prefixes []string, src string) bool {
	u, err := url.Parse(src)
	if err != nil {
		return false
	}
	for _, p := range prefixes {
		if src == p || (strings.HasPrefix(src, p) && (strings.HasSuffix(p, "/") || src[len(p)] == '/' || src[len(p)] == '?')) {
			return u.User == nil // credentials never ride in a source URL
		}
	}
	return false
}
