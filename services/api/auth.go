package api

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/strata-backup/strata/pkg/httpserve"
)

// Role is what a token may do; each includes the ones before it.
type Role int

const (
	Viewer   Role = iota + 1 // reads everything
	Operator                 // also acts: backup, cancel, verify, restore, prune dry runs
	Admin                    // also edits policies and deletes (prune, gc)
)

func (r Role) String() string {
	switch r {
	case Viewer:
		return "viewer"
	case Operator:
		return "operator"
	case Admin:
		return "admin"
	}
	return "none"
}

func parseRole(s string) (Role, bool) {
	switch s {
	case "viewer":
		return Viewer, true
	case "operator":
		return Operator, true
	case "admin":
		return Admin, true
	}
	return 0, false
}

// token is one accepted bearer token, kept as its SHA-256 so that
// comparing every token in constant time costs the same whatever the
// tokens' lengths.
type token struct {
	sum  [32]byte
	role Role
	name string // for logs: "line 3" or the comment after the token
}

// Tokens are the API's bearer tokens (STRATA_API_TOKEN_FILE).
type Tokens struct{ list []token }

// ReadTokens reads a token file: one token a line, "ROLE TOKEN [NAME]"
// with ROLE viewer, operator or admin; a line holding only a token is an
// operator (the single token of the former HTTP trigger). Blank lines and
// lines starting with # are skipped; a token under 16 characters, an
// unknown role or a token listed twice is refused.
func ReadTokens(path string) (*Tokens, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("STRATA_API_TOKEN_FILE: %w", err)
	}
	t := &Tokens{}
	seen := map[[32]byte]bool{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		role, secret, name := Operator, f[0], fmt.Sprintf("line %d", n)
		if r, ok := parseRole(f[0]); ok {
			if len(f) < 2 {
				return nil, fmt.Errorf("%s line %d: a role without a token", path, n)
			}
			role, secret = r, f[1]
			if len(f) > 2 {
				name = strings.Join(f[2:], " ")
			}
		} else if len(f) > 1 {
			return nil, fmt.Errorf("%s line %d: want ROLE TOKEN [NAME] with ROLE viewer, operator or admin", path, n)
		}
		if len(secret) < 16 {
			return nil, fmt.Errorf("%s line %d: token shorter than 16 characters", path, n)
		}
		sum := sha256.Sum256([]byte(secret))
		if seen[sum] {
			return nil, fmt.Errorf("%s line %d: the same token twice", path, n)
		}
		seen[sum] = true
		t.list = append(t.list, token{sum: sum, role: role, name: name})
	}
	if len(t.list) == 0 {
		return nil, fmt.Errorf("%s: no token", path)
	}
	return t, nil
}

// Role is the role of the request's bearer token (0: none or unknown).
// Every token is compared, in constant time.
func (t *Tokens) Role(r *http.Request) (Role, string) {
	if t == nil {
		return Admin, "loopback" // no tokens: loopback only, everything allowed
	}
	got := httpserve.Bearer(r)
	if got == "" {
		if c, err := r.Cookie(sessionCookie); err == nil {
			got = c.Value
		}
	}
	sum := sha256.Sum256([]byte(got))
	var role Role
	var name string
	for _, tk := range t.list {
		if subtle.ConstantTimeCompare(sum[:], tk.sum[:]) == 1 {
			role, name = tk.role, tk.name
		}
	}
	if got == "" {
		return 0, ""
	}
	return role, name
}

// sessionCookie carries the token of a console login (HttpOnly,
// SameSite=Strict).
const sessionCookie = "strata_token"
