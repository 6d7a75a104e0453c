package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/smtp"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/strata-backup/strata/contracts"
)

// Senders deliver reports to targets.
type Senders struct {
	// SecretsDir holds the targets' password and secret files.
	SecretsDir string
	// RootCAs verifies SMTP and webhook servers (nil: the system's).
	RootCAs *x509.CertPool
	// HTTP posts webhooks (nil: a client with a 10 s timeout).
	HTTP *http.Client
	// Attempts: webhook posts per delivery before it counts as failed
	// (the outcome is then redelivered later, and dead-lettered at last).
	Attempts uint
}

func (s *Senders) secret(name string) ([]byte, error) {
	if s.SecretsDir == "" {
		return nil, errors.New("no STRATA_NOTIFY_SECRETS_DIR for the target's secret file")
	}
	b, err := os.ReadFile(filepath.Join(s.SecretsDir, filepath.Base(name)))
	if err != nil {
		return nil, err
	}
	return bytes.TrimSpace(b), nil
}

// Send delivers one report to one target.
func (s *Senders) Send(ctx context.Context, t *contracts.NotifyTarget, r *Report) error {
	switch t.Kind {
	case "smtp":
		return s.mail(ctx, t, r)
	case "webhook":
		return s.webhook(ctx, t, r)
	}
	return fmt.Errorf("target %s: kind %q", t.Name, t.Kind)
}

// Sign is the X-Strata-Signature of a webhook body under key.
func Sign(key, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

func (s *Senders) webhook(ctx context.Context, t *contracts.NotifyTarget, r *Report) error {
	key, err := s.secret(t.SecretFile)
	if err != nil {
		return fmt.Errorf("webhook %s: secret: %w", t.Name, err)
	}
	body, _ := json.Marshal(r)
	client := s.HTTP
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.RootCAs}}}
	}
	post := func() (struct{}, error) {
		req, err := http.NewRequestWithContext(ctx, "POST", t.URL, bytes.NewReader(body))
		if err != nil {
			return struct{}{}, backoff.Permanent(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "strata-notify/1")
		req.Header.Set("X-Strata-Event", r.Event)
		req.Header.Set("X-Strata-Delivery", r.Delivery)
		req.Header.Set("X-Strata-Signature", Sign(key, body))
		resp, err := client.Do(req)
		if err != nil {
			return struct{}{}, err
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		switch {
		case resp.StatusCode < 300:
			return struct{}{}, nil
		case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode >= 500:
			return struct{}{}, fmt.Errorf("%s", resp.Status)
		}
		// The receiver refuses it: the next outcome's retry may meet a
		// fixed receiver, this attempt's retries will not.
		return struct{}{}, backoff.Permanent(fmt.Errorf("%s", resp.Status))
	}
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = 500*time.Millisecond, 5*time.Second
	if _, err := backoff.Retry(ctx, post, backoff.WithBackOff(b), backoff.WithMaxTries(max(1, s.Attempts))); err != nil {
		return fmt.Errorf("webhook %s: %w", t.Name, err)
	}
	return nil
}

// mail sends the report over SMTP: STARTTLS (required unless the target
// says none) or implicit TLS, AUTH PLAIN when the target has a user.
func (s *Senders) mail(ctx context.Context, t *contracts.NotifyTarget, r *Report) error {
	host, _, _ := net.SplitHostPort(t.SMTP)
	tlsConf := &tls.Config{ServerName: host, RootCAs: s.RootCAs, MinVersion: tls.VersionTLS12}
	d := net.Dialer{Timeout: 10 * time.Second}
	var conn net.Conn
	var err error
	if t.TLS == "tls" {
		conn, err = (&tls.Dialer{NetDialer: &d, Config: tlsConf}).DialContext(ctx, "tcp", t.SMTP)
	} else {
		conn, err = d.DialContext(ctx, "tcp", t.SMTP)
	}
	if err != nil {
		return fmt.Errorf("smtp %s: %w", t.Name, err)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(time.Minute)
	}
	conn.SetDeadline(deadline)
	c, err := smtp.NewClient(conn, host)
	if err != nil {
		conn.Close()
		return fmt.Errorf("smtp %s: %w", t.Name, err)
	}
	defer c.Close()
	if t.TLS == "starttls" {
		if ok, _ := c.Extension("STARTTLS"); !ok {
			return fmt.Errorf("smtp %s: the server offers no STARTTLS (tls: none to send in the clear)", t.Name)
		}
		if err := c.StartTLS(tlsConf); err != nil {
			return fmt.Errorf("smtp %s: starttls: %w", t.Name, err)
		}
	}
	if t.User != "" {
		pw, err := s.secret(t.PasswordFile)
		if err != nil {
			return fmt.Errorf("smtp %s: password: %w", t.Name, err)
		}
		if err := c.Auth(smtp.PlainAuth("", t.User, string(pw), host)); err != nil {
			return fmt.Errorf("smtp %s: auth: %w", t.Name, err)
		}
	}
	if err := c.Mail(t.From); err != nil {
		return fmt.Errorf("smtp %s: MAIL FROM: %w", t.Name, err)
	}
	for _, to := range t.To {
		if err := c.Rcpt(to); err != nil {
			return fmt.Errorf("smtp %s: RCPT TO %s: %w", t.Name, to, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("smtp %s: DATA: %w", t.Name, err)
	}
	w.Write(message(t, r))
	if err := w.Close(); err != nil {
		return fmt.Errorf("smtp %s: %w", t.Name, err)
	}
	return c.Quit()
}

// message is the e-mail: its Message-ID is the delivery's, so a report
// resent after a crash is the same message to every mail system.
func message(t *contracts.NotifyTarget, r *Report) []byte {
	var b bytes.Buffer
	h := func(k, v string) { fmt.Fprintf(&b, "%s: %s\r\n", k, v) }
	h("From", t.From)
	h("To", strings.Join(t.To, ", "))
	h("Subject", mime.QEncoding.Encode("utf-8", r.Subject()))
	h("Date", time.Now().UTC().Format(time.RFC1123Z))
	h("Message-ID", "<"+strings.ReplaceAll(r.Delivery, "/", ".")+"@strata>")
	h("X-Strata-Delivery", r.Delivery)
	h("X-Strata-Event", r.Event)
	h("MIME-Version", "1.0")
	h("Content-Type", "text/plain; charset=utf-8")
	h("Content-Transfer-Encoding", "8bit")
	b.WriteString("\r\n")
	b.WriteString(strings.ReplaceAll(r.Text(), "\n", "\r\n"))
	return b.Bytes()
}
