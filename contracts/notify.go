package contracts

import (
	"encoding/base64"
	"fmt"
	"net/mail"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"
)

// NotifyTarget is where job reports go: an SMTP server or a webhook, and
// which outcomes of which VMs it wants.
type NotifyTarget struct {
	Schema int    `json:"schema"`
	Name   string `json:"name"`
	Kind   string `json:"kind"` // smtp or webhook
	// On: the outcomes reported — failure, warning (verified, but not
	// as asked: a weaker consistency, a note from the source), success.
	// Shorthands as Xen Orchestra users know them: always, never,
	// failure (the default).
	On []string `json:"on"`
	// VMs: a glob (path.Match) of the VMs reported; empty: all.
	VMs string `json:"vms,omitempty"`

	// SMTP: host:port; TLS "starttls" (the default: refused when the
	// server offers none), "tls" (implicit, port 465) or "none" (loopback
	// and tests only); User and PasswordFile for AUTH PLAIN (a file name
	// in the notifier's STRATA_NOTIFY_SECRETS_DIR).
	SMTP         string   `json:"smtp,omitempty"`
	TLS          string   `json:"tls,omitempty"`
	User         string   `json:"user,omitempty"`
	PasswordFile string   `json:"password_file,omitempty"`
	From         string   `json:"from,omitempty"`
	To           []string `json:"to,omitempty"`

	// Webhook: the URL a report is POSTed to (JSON), signed with
	// HMAC-SHA256 under the key in SecretFile (a file name in
	// STRATA_NOTIFY_SECRETS_DIR) as X-Strata-Signature: sha256=<hex>.
	URL        string `json:"url,omitempty"`
	SecretFile string `json:"secret_file,omitempty"`

	UpdatedAt time.Time `json:"updated_at"`
}

// Report severities (NotifyTarget.On).
const (
	OnFailure = "failure"
	OnWarning = "warning"
	OnSuccess = "success"
)

var notifyName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)

// secretName: a plain file name, no directory.
func secretName(field, s string) error {
	if s == "" {
		return nil
	}
	if strings.ContainsAny(s, "/\\\\\x00") || s == "." || s == ".." || strings.HasPrefix(s, ".") {
		return fmt.Errorf("%s %q: a file name in STRATA_NOTIFY_SECRETS_DIR, no directory", field, s)
	}
	return nil
}

// Normalize expands the On shorthands and defaults.
func (t *NotifyTarget) Normalize() {
	var on []string
	for _, o := range t.On {
		switch o {
		case "always":
			on = append(on, OnFailure, OnWarning, OnSuccess)
		case "never":
		default:
			on = append(on, o)
		}
	}
	if t.On == nil {
		on = []string{OnFailure, OnWarning}
	}
	slices.Sort(on)
	t.On = slices.Compact(on)
	if t.On == nil {
		t.On = []string{}
	}
	if t.Kind == "smtp" && t.TLS == "" {
		t.TLS = "starttls"
	}
}

func (t *NotifyTarget) Validate() error {
	if err := checkSchema(t.Schema); err != nil {
		return err
	}
	if !notifyName.MatchString(t.Name) {
		return fmt.Errorf("name %q: letters, digits, - and _ (up to 64)", t.Name)
	}
	for _, o := range t.On {
		if o != OnFailure && o != OnWarning && o != OnSuccess {
			return fmt.Errorf("on %q: want failure, warning, success, always or never", o)
		}
	}
	if _, err := path.Match(t.VMs, ""); err != nil {
		return fmt.Errorf("vms %q: %w", t.VMs, err)
	}
	switch t.Kind {
	case "smtp":
		if t.URL != "" || t.SecretFile != "" {
			return fmt.Errorf("an smtp target has no url or secret_file")
		}
		host, port, err := splitHostPort(t.SMTP)
		if err != nil || host == "" || port == "" {
			return fmt.Errorf("smtp %q: want host:port", t.SMTP)
		}
		if t.TLS != "starttls" && t.TLS != "tls" && t.TLS != "none" {
			return fmt.Errorf("tls %q: want starttls, tls or none", t.TLS)
		}
		if (t.User == "") != (t.PasswordFile == "") {
			return fmt.Errorf("user and password_file go together")
		}
		if err := secretName("password_file", t.PasswordFile); err != nil {
			return err
		}
		if _, err := mail.ParseAddress(t.From); err != nil {
			return fmt.Errorf("from %q: %w", t.From, err)
		}
		if len(t.To) == 0 {
			return fmt.Errorf("to: %w", errEmpty)
		}
		for _, a := range t.To {
			if _, err := mail.ParseAddress(a); err != nil {
				return fmt.Errorf("to %q: %w", a, err)
			}
		}
	case "webhook":
		if t.SMTP != "" || len(t.To) > 0 || t.From != "" || t.User != "" {
			return fmt.Errorf("a webhook target has no smtp, from, to or user")
		}
		u, err := url.Parse(t.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
			return fmt.Errorf("url %q: want http(s)://host/path, no credentials in it", t.URL)
		}
		if t.SecretFile == "" {
			return fmt.Errorf("secret_file: %w (every webhook is signed)", errEmpty)
		}
		if err := secretName("secret_file", t.SecretFile); err != nil {
			return err
		}
	default:
		return fmt.Errorf("kind %q: want smtp or webhook", t.Kind)
	}
	if t.UpdatedAt.IsZero() {
		return fmt.Errorf("updated_at: %w", errEmpty)
	}
	return nil
}

func splitHostPort(s string) (string, string, error) {
	i := strings.LastIndex(s, ":")
	if i < 0 {
		return "", "", fmt.Errorf("no port")
	}
	return strings.Trim(s[:i], "[]"), s[i+1:], nil
}

// Wants says whether the target reports an outcome of this severity for vm.
func (t *NotifyTarget) Wants(severity, vm string) bool {
	if !slices.Contains(t.On, severity) {
		return false
	}
	if t.VMs == "" {
		return true
	}
	ok, _ := path.Match(t.VMs, vm)
	return ok
}

// NotifyKey is a target's key in BucketNotify.
func NotifyKey(name string) string { return "t." + name }

// NotifySentKey marks one report delivered.
func NotifySentKey(target, backupID string) string {
	return "s." + target + "." + base64.RawURLEncoding.EncodeToString([]byte(backupID))
}
