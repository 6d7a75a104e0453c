// Package api is the operator's HTTP surface: REST under /v1 (described by
// the OpenAPI document at /v1/openapi.json), bearer tokens with roles. It
// is stateless — every answer comes from the catalog, the policies, the
// fleet's watches and the other services' endpoints — so any number of
// replicas serve the same.
package api

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/bus"
	"github.com/strata-backup/strata/pkg/fleet"
	"github.com/strata-backup/strata/pkg/httpserve"
	"github.com/strata-backup/strata/pkg/notify"
	"github.com/strata-backup/strata/pkg/policy"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/runtime"
	"github.com/strata-backup/strata/pkg/source"
)

// Config of the api service (prefix STRATA_).
type Config struct {
	runtime.Common
	// Sources: the hypervisors' settings, for restores into them.
	source.Config
	// Addr: where the API listens. Beyond loopback it needs TokenFile.
	Addr string `envconfig:"API_ADDR" default:"127.0.0.1:8080"`
	// TokenFile: bearer tokens with roles (ReadTokens); empty: none
	// needed, and then only on loopback.
	TokenFile string `envconfig:"API_TOKEN_FILE"`
	// TLSCert and TLSKey (PEM files): serve HTTPS.
	TLSCert string `envconfig:"API_TLS_CERT"`
	TLSKey  string `envconfig:"API_TLS_KEY"`
	// SourceAllow: URL prefixes a triggered backup's source must start
	// with (whole path components); empty: any source, except file
	// sources when the API listens beyond loopback.
	SourceAllow []string `envconfig:"SOURCE_ALLOW"`
	// RestoreDir: restores to a path (the console's, POST
	// /v1/vms/{vm}/backups/{id}/restore) write only inside this directory;
	// empty: such restores are off.
	RestoreDir string `envconfig:"API_RESTORE_DIR"`
	// JaegerQueryURL: Jaeger's query API, where the console reads a
	// backup's spans (e.g. http://jaeger:16686); JaegerUIURL: the Jaeger UI
	// as the operator's browser reaches it, for links to a trace (default:
	// JaegerQueryURL). Empty: no timeline.
	JaegerQueryURL string `envconfig:"JAEGER_QUERY_URL"`
	JaegerUIURL    string `envconfig:"JAEGER_UI_URL"`
	// Job reports (pkg/notify): sent by the api replicas together, one
	// outcome at a time each. Notify false: this replica sends none.
	Notify bool `envconfig:"NOTIFY" default:"true"`
	// NotifySecretsDir holds the targets' password and secret files;
	// NotifyCAFile a CA for SMTP and webhook servers (default: the
	// system's); NotifyAttempts how often an outcome is tried before its
	// unsent reports are dead-lettered.
	NotifySecretsDir string `envconfig:"NOTIFY_SECRETS_DIR"`
	NotifyCAFile     string `envconfig:"NOTIFY_CA_FILE"`
	NotifyAttempts   int    `envconfig:"NOTIFY_ATTEMPTS" default:"8"`
	// NotifyAckWait: how long an outcome being reported by a replica that
	// died stays its own before another replica takes it over.
	NotifyAckWait time.Duration `envconfig:"NOTIFY_ACK_WAIT" default:"2m"`
	// ConsoleURL: the console as the reports' readers reach it, for their
	// links (empty: no link).
	ConsoleURL string `envconfig:"CONSOLE_URL"`
	// Instant recovery: exports listen on this loopback host (a port each);
	// ExportDir holds writable exports' overlays (empty: read-only only).
	ExportHost string `envconfig:"API_EXPORT_HOST" default:"127.0.0.1"`
	ExportDir  string `envconfig:"API_EXPORT_DIR"`
	// RestoreTargets: hypervisor URL prefixes a restore may create a VM
	// under (vsphere://vc1/, libvirt+unix:///system/); empty: restores
	// into hypervisors are off.
	RestoreTargets []string `envconfig:"API_RESTORE_TARGETS"`
}

// Start serves the API until ctx ends.
func Start(ctx context.Context, rt *runtime.Runtime, cfg Config) error {
	_, err := Serve(ctx, rt, cfg)
	return err
}

// Serve is Start, returning the bound address (Addr may end in :0).
func Serve(ctx context.Context, rt *runtime.Runtime, cfg Config) (net.Addr, error) {
	a, err := newAPI(cfg)
	if err != nil {
		return nil, err
	}
	pols, err := policy.Open(ctx, rt.Bus.JS)
	if err != nil {
		return nil, err
	}
	f, err := fleet.Watch(ctx, rt.Catalog, pols)
	if err != nil {
		return nil, err
	}
	a.records, a.policies, a.fleet, a.bad, a.log = rt.Catalog, pols, f, rt.Bad, rt.Log
	a.serviceCtx = ctx
	a.sources = source.NewOpener(cfg.Config)
	if a.exports, err = newExports(cfg.ExportHost, cfg.ExportDir, rt.Log); err != nil {
		return nil, err
	}
	a.request = func(ctx context.Context, subject string, req, reply contracts.Message) error {
		return bus.Request(ctx, rt.Bus.NC, subject, req, reply)
	}
	a.dlq = &dlqReader{js: rt.Bus.JS}
	a.runs = &runReader{js: rt.Bus.JS}
	a.repo = rt.Repo
	a.connected = rt.Bus.NC.IsConnected
	targets, err := notify.Open(ctx, rt.Bus.JS)
	if err != nil {
		return nil, err
	}
	a.targets = targets
	if cfg.Notify {
		if err := startNotifier(ctx, rt, cfg, targets, a.jaegerUI); err != nil {
			return nil, err
		}
	}
	if _, err := rt.Bus.AddService("operator API: REST /v1, OpenAPI at /v1/openapi.json"); err != nil {
		return nil, err
	}
	return httpserve.Serve(ctx, httpserve.Options{Name: "api", Addr: cfg.Addr, Guarded: a.tokens != nil,
		CertFile: cfg.TLSCert, KeyFile: cfg.TLSKey}, a.handler(), rt.Log)
}

// newAPI checks the settings before anything listens.
func newAPI(cfg Config) (*api, error) {
	a := &api{loopback: httpserve.IsLoopback(cfg.Addr)}
	if err := contracts.CheckSourceAllow(cfg.SourceAllow); err != nil {
		return nil, err
	}
	a.allow = cfg.SourceAllow
	if err := contracts.CheckSourceAllow(cfg.RestoreTargets); err != nil {
		return nil, fmt.Errorf("STRATA_API_RESTORE_TARGETS: %w", err)
	}
	a.restoreTargets = cfg.RestoreTargets
	if cfg.RestoreDir != "" {
		d, err := filepath.Abs(cfg.RestoreDir)
		if err != nil {
			return nil, fmt.Errorf("STRATA_API_RESTORE_DIR: %w", err)
		}
		if fi, err := os.Stat(d); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("STRATA_API_RESTORE_DIR %s: not a directory", d)
		}
		a.restoreDir = filepath.Clean(d)
	}
	if cfg.JaegerQueryURL != "" {
		u, err := url.Parse(cfg.JaegerQueryURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("STRATA_JAEGER_QUERY_URL %q: not an http(s) URL", cfg.JaegerQueryURL)
		}
		a.jaeger = &jaegerClient{base: strings.TrimRight(cfg.JaegerQueryURL, "/"), http: &http.Client{Timeout: 10 * time.Second}}
		a.jaegerUI = strings.TrimRight(cmp.Or(cfg.JaegerUIURL, cfg.JaegerQueryURL), "/")
	}
	if cfg.TokenFile != "" {
		t, err := ReadTokens(cfg.TokenFile)
		if err != nil {
			return nil, err
		}
		a.tokens = t
	}
	if !a.loopback && a.tokens == nil {
		return nil, fmt.Errorf("STRATA_API_ADDR=%s listens beyond loopback: set STRATA_API_TOKEN_FILE or bind 127.0.0.1", cfg.Addr)
	}
	return a, nil
}

// The API's ports: the few methods it uses, so that its handlers are
// tested without NATS.
type (
	records interface {
		Get(ctx context.Context, vm, id string) (*contracts.BackupRecord, uint64, error)
		List(ctx context.Context, vm string) ([]*contracts.BackupRecord, error)
	}
	policies interface {
		List(ctx context.Context) ([]contracts.Policy, error)
		Get(ctx context.Context, vm string) (contracts.Policy, bool, error)
		Put(ctx context.Context, p *contracts.Policy) error
		Delete(ctx context.Context, vm string) error
	}
	fleetView interface{ VMs() []fleet.VM }
	badList   interface {
		List(ctx context.Context) ([]contracts.BadChunk, error)
	}
	deadLetters interface {
		Last(ctx context.Context, n int) (*DeadLetters, error)
	}
	recentRuns interface {
		Recent(ctx context.Context, since time.Time, limit int) ([]Run, error)
		Started(ctx context.Context, since time.Time, limit int) ([]Run, error)
	}
	traces interface {
		Trace(ctx context.Context, traceID string) ([]Span, error)
	}
	notifyTargets interface {
		List(ctx context.Context) ([]contracts.NotifyTarget, []string, error)
		Put(ctx context.Context, t *contracts.NotifyTarget) error
		Delete(ctx context.Context, name string) error
	}
)

// startNotifier consumes the outcomes and sends the reports.
func startNotifier(ctx context.Context, rt *runtime.Runtime, cfg Config, targets *notify.Store, jaegerUI string) error {
	sent, err := rt.Bus.JS.KeyValue(ctx, contracts.BucketNotifySent)
	if err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	senders := &notify.Senders{SecretsDir: cfg.NotifySecretsDir, Attempts: 3}
	if cfg.NotifySecretsDir != "" {
		if fi, err := os.Stat(cfg.NotifySecretsDir); err != nil || !fi.IsDir() {
			return fmt.Errorf("STRATA_NOTIFY_SECRETS_DIR %s: not a directory", cfg.NotifySecretsDir)
		}
	}
	if cfg.NotifyCAFile != "" {
		pem, err := os.ReadFile(cfg.NotifyCAFile)
		if err != nil {
			return fmt.Errorf("STRATA_NOTIFY_CA_FILE: %w", err)
		}
		senders.RootCAs = x509.NewCertPool()
		if !senders.RootCAs.AppendCertsFromPEM(pem) {
			return fmt.Errorf("STRATA_NOTIFY_CA_FILE %s: no certificate", cfg.NotifyCAFile)
		}
	}
	n := &notify.Notifier{Records: rt.Catalog, Targets: targets, Sent: sent, Send: senders.Send,
		Links: notify.Links{Console: cfg.ConsoleURL, Jaeger: jaegerUI}, Log: rt.Log}
	return bus.Consume(ctx, rt.Bus, bus.Spec{Stream: contracts.StreamBackups, Durable: contracts.ConsumerNotify,
		Filters: []string{contracts.SubjectBackupVerified, contracts.SubjectBackupFailed}, AckWait: max(cfg.NotifyAckWait, 3*time.Second),
		MaxDeliver: max(1, cfg.NotifyAttempts), Concurrency: 4}, n.Handle)
}

type api struct {
	tokens         *Tokens // nil: no tokens (loopback only)
	loopback       bool
	allow          []string
	records        records
	policies       policies
	fleet          fleetView
	bad            badList
	dlq            deadLetters
	runs           recentRuns
	jaeger         traces // nil: no timeline
	jaegerUI       string
	targets        notifyTargets
	exports        *exports
	sources        *source.Opener // restores into hypervisors
	restoreTargets []string
	serviceCtx     context.Context  // the service's life: exports outlive their request
	repo           *repo.Repository // files and restores (integration only)
	restoreDir     string
	request        func(ctx context.Context, subject string, req, reply contracts.Message) error
	connected      func() bool
	log            *slog.Logger
}

// DeadLetters is the dead-letter stream's summary.
type DeadLetters struct {
	Count    uint64       `json:"count"`
	Messages []DeadLetter `json:"messages"`
}

// DeadLetter is one dead-lettered message.
type DeadLetter struct {
	Seq     uint64    `json:"seq"`
	Subject string    `json:"subject"` // the original subject
	Reason  string    `json:"reason"`
	Time    time.Time `json:"time"`
	Data    string    `json:"data"` // the message as it was (JSON, cut at 4 KiB)
}

type dlqReader struct{ js jetstream.JetStream }

// Last reads the stream's newest n messages, one direct get each.
func (d *dlqReader) Last(ctx context.Context, n int) (*DeadLetters, error) {
	s, err := d.js.Stream(ctx, contracts.StreamDLQ)
	if err != nil {
		return nil, fmt.Errorf("dead letters: %w", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("dead letters: %w", err)
	}
	out := &DeadLetters{Count: info.State.Msgs, Messages: []DeadLetter{}}
	for seq := info.State.LastSeq; seq >= max(info.State.FirstSeq, 1) && len(out.Messages) < n && seq > 0; seq-- {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // deleted
		}
		if err != nil {
			return nil, fmt.Errorf("dead letter %d: %w", seq, err)
		}
		data := string(m.Data)
		if len(data) > 4096 {
			data = data[:4096] + "…"
		}
		out.Messages = append(out.Messages, DeadLetter{Seq: seq, Subject: m.Header.Get(contracts.HeaderDLQSubject),
			Reason: m.Header.Get(contracts.HeaderDLQReason), Time: m.Time, Data: data})
	}
	return out, nil
}
