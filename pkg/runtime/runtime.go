// Package runtime is what every Strata service process shares: the common
// environment settings, and the start-up sequence (telemetry, NATS, streams,
// object store, repository) wired the same way in every main.go and in the
// all-in-one `strata dev`.
package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kelseyhightower/envconfig"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/badchunks"
	"github.com/strata-backup/strata/pkg/bus"
	"github.com/strata-backup/strata/pkg/catalog"
	"github.com/strata-backup/strata/pkg/gclock"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/metrics"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/s3roles"
	"github.com/strata-backup/strata/pkg/telemetry"
)

// Common holds the settings every service reads (prefix STRATA_).
type Common struct {
	NATSURL string `envconfig:"NATS_URL" default:"nats://127.0.0.1:4222"`
	// NATSNkeyFile and NATSCAFile: this service's nkey seed and the CA
	// of the servers' TLS certificates (strata nats-auth writes both);
	// unset, no credential and no TLS.
	NATSNkeyFile string `envconfig:"NATS_NKEY_FILE"`
	NATSCAFile   string `envconfig:"NATS_CA_FILE"`
	// NATSSetup: this service creates and updates the streams and buckets
	// at start; false, it waits for them (a role without that right).
	NATSSetup   bool   `envconfig:"NATS_SETUP" default:"true"`
	JSReplicas  int    `envconfig:"JS_REPLICAS" default:"1"`
	S3Endpoint  string `envconfig:"S3_ENDPOINT"`
	S3Region    string `envconfig:"S3_REGION" default:"us-east-1"`
	S3Bucket    string `envconfig:"S3_BUCKET" default:"strata"`
	S3Prefix    string `envconfig:"S3_PREFIX"`
	S3AccessKey string `envconfig:"S3_ACCESS_KEY"`
	S3SecretKey string `envconfig:"S3_SECRET_KEY"`
	// S3CredentialsFile: this service's own credential (a file of
	// STRATA_S3_ACCESS_KEY=… and STRATA_S3_SECRET_KEY=… lines, as
	// `strata s3-roles` writes), instead of the two variables.
	S3CredentialsFile string `envconfig:"S3_CREDENTIALS_FILE"`
	S3PathStyle       bool   `envconfig:"S3_PATH_STYLE" default:"true"`
	// S3SignPayload: see objstore.S3Config.SignPayload.
	S3SignPayload bool   `envconfig:"S3_SIGN_PAYLOAD" default:"false"`
	StoreDir      string `envconfig:"STORE_DIR"` // local directory instead of S3
	// S3 request shaping (objstore.Throttle): the most requests at once,
	// where the adaptive limit starts and returns to; optional caps on
	// requests and bytes per second (0: none).
	S3MaxConcurrency int     `envconfig:"S3_MAX_CONCURRENCY" default:"64"`
	S3MaxRPS         float64 `envconfig:"S3_MAX_RPS" default:"0"`
	S3MaxBytesPerSec int64   `envconfig:"S3_MAX_BYTES_PER_SEC" default:"0"`
	// Log receives the store's throttling notices (set by Start).
	Log       *slog.Logger `ignored:"true"`
	ChunkSize int          `envconfig:"CHUNK_SIZE" default:"262144"`
	// EncryptionKeyFile turns on client-side encryption (see repo.Keys).
	EncryptionKeyFile string `envconfig:"ENCRYPTION_KEY_FILE"`
	// Packs: a repository created by this process stores new chunks many
	// to an object (an existing repository keeps what it was created with).
	Packs bool `envconfig:"PACKS" default:"true"`
	// S3ObjectLock (governance or compliance) creates the repository under
	// S3 Object Lock, in a bucket created with it; every backup then stays
	// immutable for LockDays (repo.LockPolicy), its objects' retention
	// set in generations of LockStep (default: 10 days, a third of
	// LockDays when that is shorter).
	S3ObjectLock string       `envconfig:"S3_OBJECT_LOCK"`
	LockDays     LockDuration `envconfig:"LOCK_DAYS" default:"30"`
	LockStep     LockDuration `envconfig:"LOCK_STEP"`
	// Big manifests (manifest.SpillAbove, repo.WholeManifest): data
	// chunks a manifest keeps in memory before it spills to TMPDIR, and
	// the biggest manifest object read whole.
	ManifestSpillAbove int    `envconfig:"MANIFEST_SPILL_ABOVE" default:"262144"`
	ManifestWholeMax   int64  `envconfig:"MANIFEST_WHOLE_MAX" default:"16777216"`
	LogLevel           string `envconfig:"LOG_LEVEL" default:"info"`
	// MetricsAddr serves Prometheus metrics at /metrics; "auto": each
	// service on its own loopback port (MetricsPorts), so the six on one
	// host do not collide; empty: off. Beyond loopback it needs
	// MetricsTokenFile (scrapes then carry it as a bearer token).
	MetricsAddr      string `envconfig:"METRICS_ADDR" default:"auto"`
	MetricsTokenFile string `envconfig:"METRICS_TOKEN_FILE"`
	// CPUProfile: a service writes a CPU profile of its whole run to this
	// file when it shuts down (go tool pprof); how the deployed backup's
	// CPU is attributed inside a container.
	CPUProfile string `envconfig:"CPU_PROFILE"`
}

// MetricsPorts are the loopback ports of STRATA_METRICS_ADDR=auto ("dev"
// is `strata dev`, all six services in one process).
var MetricsPorts = map[string]int{"dev": 9460, "scheduler": 9461, "snapshotter": 9462, "transfer": 9463,
	"dedup": 9464, "merge": 9465, "verifier": 9466, "api": 9467}

// ServeMetrics serves the process's metrics as service until ctx ends
// (STRATA_METRICS_ADDR; off when empty).
func (c Common) ServeMetrics(ctx context.Context, service string, log *slog.Logger) error {
	addr := c.MetricsAddr
	if addr == "auto" {
		addr = fmt.Sprintf("127.0.0.1:%d", MetricsPorts[service])
	}
	if addr == "" {
		return nil
	}
	if _, err := metrics.Serve(ctx, addr, c.MetricsTokenFile, log); err != nil {
		return fmt.Errorf("STRATA_METRICS_ADDR: %w (another port, or empty to turn metrics off)", err)
	}
	return nil
}

// Dial is how service reaches NATS.
func (c *Common) Dial(service string) bus.Dial {
	return bus.Dial{URL: c.NATSURL, Service: service, NkeyFile: c.NATSNkeyFile, CAFile: c.NATSCAFile}
}

// Load fills spec (which embeds Common) from STRATA_* variables.
func Load(spec any) error {
	if err := envconfig.Process("STRATA", spec); err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	return nil
}

// OpenRepo opens the repository on store with the configured chunk size
// and, when STRATA_ENCRYPTION_KEY_FILE is set, encryption key, creating it
// when the store holds none.
func (c Common) OpenRepo(ctx context.Context, store objstore.Store) (*repo.Repository, error) {
	return c.openRepo(ctx, store, false)
}

func (c Common) openRepo(ctx context.Context, store objstore.Store, existing bool) (*repo.Repository, error) {
	if c.ManifestSpillAbove > 0 { // whole blocks of 4,096
		manifest.SpillAbove = (c.ManifestSpillAbove + 4095) / 4096 * 4096
	}
	if c.ManifestWholeMax > 0 {
		repo.WholeManifest = c.ManifestWholeMax
	}
	var keys *repo.Keys
	if c.EncryptionKeyFile != "" {
		var err error
		if keys, err = repo.LoadKeyFile(c.EncryptionKeyFile); err != nil {
			return nil, err
		}
	}
	lock, err := c.lockPolicy()
	if err != nil {
		return nil, err
	}
	return repo.OpenWith(ctx, store, repo.Options{ChunkSize: c.ChunkSize, Keys: keys, Packs: c.Packs, Existing: existing, Lock: lock})
}

// lockPolicy is the Object Lock policy configured (nil: none).
func (c Common) lockPolicy() (*repo.LockPolicy, error) {
	if c.S3ObjectLock == "" {
		return nil, nil
	}
	if c.StoreDir != "" {
		return nil, errors.New("STRATA_S3_OBJECT_LOCK needs an S3 store: a directory (STRATA_STORE_DIR) cannot lock objects")
	}
	p, err := repo.NewLockPolicy(c.S3ObjectLock, time.Duration(c.LockDays), time.Duration(c.LockStep))
	if err != nil {
		return nil, fmt.Errorf("STRATA_S3_OBJECT_LOCK: %w", err)
	}
	return p, nil
}

// LockDuration is a number of days ("30"), or a Go duration ("90s") where
// tests need a lock that ends while they run.
type LockDuration time.Duration

func (d *LockDuration) Decode(v string) error {
	if days, err := strconv.ParseFloat(v, 64); err == nil {
		if days <= 0 {
			return fmt.Errorf("%q: must be positive", v)
		}
		*d = LockDuration(time.Duration(days * 24 * float64(time.Hour)))
		return nil
	}
	t, err := time.ParseDuration(v)
	if err != nil || t <= 0 {
		return fmt.Errorf("%q: want days (30) or a positive duration (90s)", v)
	}
	*d = LockDuration(t)
	return nil
}

// OpenExisting opens the configured store and the repository in it for a
// command that only reads: a missing bucket or repository is an error,
// never created.
func (c Common) OpenExisting(ctx context.Context) (objstore.Store, *repo.Repository, error) {
	store, err := c.openStore(ctx, true)
	if err != nil {
		return nil, nil, err
	}
	r, err := c.openRepo(ctx, store, true)
	if err != nil {
		return nil, nil, err
	}
	return store, r, nil
}

// OpenStore opens the configured object store, wrapped with retries,
// creating the bucket when there is none.
func (c Common) OpenStore(ctx context.Context) (objstore.Store, error) {
	return c.openStore(ctx, false)
}

func (c Common) openStore(ctx context.Context, existing bool) (objstore.Store, error) {
	if c.StoreDir != "" {
		if existing {
			if _, err := os.Stat(c.StoreDir); err != nil {
				return nil, fmt.Errorf("STRATA_STORE_DIR: %w", err)
			}
		}
		return objstore.NewDir(c.StoreDir)
	}
	s3, err := c.OpenS3(ctx, existing)
	if err != nil {
		return nil, err
	}
	// Retries outside, the throttle inside: every attempt is admitted by
	// the adaptive limit a throttled attempt just cut.
	// Observed innermost: every attempt the store answers is a request.
	return objstore.WithRetry(objstore.NewThrottle(objstore.WithObserver(s3, metrics.ObserveS3), objstore.ThrottleConfig{MaxConcurrency: c.S3MaxConcurrency,
		MaxRPS: c.S3MaxRPS, MaxBytesPerSec: c.S3MaxBytesPerSec, Log: c.Log})), nil
}

// OpenS3 opens the configured S3 bucket itself, without retries or
// throttling (creating it unless existing, with Object Lock when
// configured).
func (c Common) OpenS3(ctx context.Context, existing bool) (*objstore.S3, error) {
	access, secret := c.S3AccessKey, c.S3SecretKey
	if c.S3CredentialsFile != "" {
		k, err := s3roles.ReadFile(c.S3CredentialsFile)
		if err != nil {
			return nil, fmt.Errorf("STRATA_S3_CREDENTIALS_FILE: %w", err)
		}
		access, secret = k.Access, k.Secret
	}
	cfg := objstore.S3Config{
		Endpoint: c.S3Endpoint, Region: c.S3Region, Bucket: c.S3Bucket, Prefix: c.S3Prefix,
		AccessKey: access, SecretKey: secret, PathStyle: c.S3PathStyle,
		SignPayload: c.S3SignPayload, NoCreate: existing,
	}
	lock, err := c.lockPolicy()
	if err != nil {
		return nil, err
	}
	if lock != nil && !existing {
		cfg.Lock = lock.StoreLock()
	}
	return objstore.NewS3(ctx, cfg)
}

// Runtime is one started service's shared machinery.
type Runtime struct {
	Bus     *bus.Bus
	Repo    *repo.Repository
	Catalog *catalog.Catalog
	Bad     *badchunks.Marks
	GC      *gclock.GC
	Log     *slog.Logger
	tp      *sdktrace.TracerProvider
}

// Start sets a service up: logger, tracer, NATS (waiting for it), streams,
// catalog, object store and repository (created on first use).
func Start(ctx context.Context, service string, c Common) (*Runtime, error) {
	log := telemetry.Logger(os.Stderr, service, c.LogLevel)
	tp, err := telemetry.Tracing(ctx, service)
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	b, err := bus.Connect(ctx, c.Dial(service), tp.Tracer("strata/"+service), log)
	if err != nil {
		return nil, err
	}
	ensure := b.WaitStreams
	if c.NATSSetup {
		ensure = func(ctx context.Context) error { return b.EnsureStreams(ctx, c.JSReplicas) }
	}
	if err := ensure(ctx); err != nil {
		return nil, err
	}
	c.Log = log
	store, err := c.OpenStore(ctx)
	if err != nil {
		return nil, err
	}
	r, err := c.OpenRepo(ctx, store)
	if err != nil {
		return nil, err
	}
	rt, err := New(ctx, b, r)
	if err != nil {
		return nil, err
	}
	rt.tp = tp
	log.Info("started", "nats", c.NATSURL, "store", store.String(), "chunk_size", r.Config.ChunkSize, "encrypted", r.Encrypted())
	return rt, nil
}

// New binds the owners of the shared state (catalog, bad-chunk marks, GC
// lock) to a connected bus whose streams exist and an opened repository:
// the one wiring, for service processes and for tests.
func New(ctx context.Context, b *bus.Bus, r *repo.Repository) (*Runtime, error) {
	bad, err := badchunks.Open(ctx, b.JS)
	if err != nil {
		return nil, err
	}
	gc, err := gclock.Open(ctx, b.JS)
	if err != nil {
		return nil, err
	}
	cat, err := catalog.Open(ctx, b.JS, r.Store, r)
	if err != nil {
		return nil, err
	}
	return &Runtime{Bus: b, Repo: r, Catalog: cat, Bad: bad, GC: gc, Log: b.Log}, nil
}

// Close flushes traces and drains NATS.
func (rt *Runtime) Close(ctx context.Context) {
	rt.Bus.Close()
	if rt.tp != nil {
		rt.tp.Shutdown(ctx)
	}
}

// FailBackup moves a backup to failed (if it is not final yet: the
// catalog copies the record to the repository) and announces the outcome,
// so the snapshot is released and waiting clients stop waiting.
// Idempotent.
func (rt *Runtime) FailBackup(ctx context.Context, vm, id, reason string) error {
	rt.Log.ErrorContext(ctx, "backup failed", "vm", vm, "backup", id, "reason", reason)
	changed, err := rt.Catalog.Fail(ctx, vm, id, reason)
	if err != nil && !errors.Is(err, catalog.ErrNotFound) {
		return err
	}
	if changed {
		metrics.BackupFailure.Inc()
	}
	out := &contracts.BackupOutcome{Schema: contracts.SchemaVersion, BackupID: id, VM: vm, State: contracts.StateFailed, Reason: reason}
	return rt.Bus.Publish(ctx, contracts.SubjectBackupFailed, out, "outcome-"+id)
}

// FailRequest fails a requested backup whether or not it was planned: one
// that never got a record gets a failed one, so the user sees it rather
// than a backup that never appears. Idempotent.
func (rt *Runtime) FailRequest(ctx context.Context, req *contracts.BackupRequested, reason string) error {
	now := time.Now().UTC()
	failed := &contracts.BackupRecord{Schema: contracts.SchemaVersion, ID: req.BackupID, VM: req.VM, Source: req.Source,
		State: contracts.StateFailed, Error: reason, ChunkSize: rt.Repo.Config.ChunkSize,
		CreatedAt: req.RequestedAt, UpdatedAt: now, FinishedAt: &now, Slot: req.Slot}
	_, created, err := rt.Catalog.Create(ctx, failed)
	if err != nil {
		return err
	}
	if created {
		metrics.BackupFailure.Inc()
	}
	return rt.FailBackup(ctx, req.VM, req.BackupID, reason)
}

// Main is the whole main function of a service process: load config (spec
// embeds Common, reached through common), start, run start, wait for
// SIGINT/SIGTERM, shut down.
func Main(service string, spec any, common *Common, start func(context.Context, *Runtime) error) {
	if len(os.Args) > 1 && os.Args[1] == "healthcheck" {
		os.Exit(healthcheck(service, common))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := Load(spec); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if common.CPUProfile != "" {
		f, err := os.Create(common.CPUProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "strata-%s: STRATA_CPU_PROFILE: %v\n", service, err)
			os.Exit(2)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	rt, err := Start(ctx, service, *common)
	if err != nil {
		fmt.Fprintf(os.Stderr, "strata-%s: %v\n", service, err)
		os.Exit(1)
	}
	if err := start(ctx, rt); err != nil {
		rt.Log.Error("start failed", "err", err)
		os.Exit(1)
	}
	if err := common.ServeMetrics(ctx, service, rt.Log); err != nil {
		rt.Log.Error("start failed", "err", err)
		os.Exit(1)
	}
	rt.Log.Info("ready")
	<-ctx.Done()
	rt.Log.Info("shutting down")
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rt.Close(shutdown)
}

// healthcheck exits 0 when the service answers its NATS micro PING: the
// container health check, with no shell in the image.
func healthcheck(service string, common *Common) int {
	if err := Load(common); err != nil {
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	b, err := bus.Connect(ctx, common.Dial("healthcheck"), nil, slog.New(slog.DiscardHandler))
	if err != nil {
		return 1
	}
	defer b.NC.Close()
	// Healthy once the service is registered and answering (NATS micro
	// PING), not merely when NATS is reachable.
	if _, err := b.NC.RequestWithContext(ctx, "$SRV.PING.strata-"+service, nil); err != nil {
		return 1
	}
	return 0
}

// UseRepo points c at the repository a URL names: dir:///path, or
// s3://bucket[/prefix]?endpoint=URL&region=R (credentials stay c's). The
// URL is user input: nothing in it reaches a path or a host unchecked.
func (c *Common) UseRepo(spec string) error {
	u, err := url.Parse(spec)
	if err != nil {
		return fmt.Errorf("%q: %w", spec, err)
	}
	switch u.Scheme {
	case "dir":
		if u.Host != "" || !filepath.IsAbs(u.Path) {
			return fmt.Errorf("%q: a directory is dir:///absolute/path", spec)
		}
		c.StoreDir = filepath.Clean(u.Path)
	case "s3":
		if u.Host == "" {
			return fmt.Errorf("%q: no bucket (s3://bucket/prefix?endpoint=…)", spec)
		}
		q := u.Query()
		for k := range q {
			if k != "endpoint" && k != "region" {
				return fmt.Errorf("%q: unknown parameter %q (endpoint, region)", spec, k)
			}
		}
		if ep := q.Get("endpoint"); ep != "" {
			e, err := url.Parse(ep)
			if err != nil || (e.Scheme != "http" && e.Scheme != "https") || e.Host == "" {
				return fmt.Errorf("%q: endpoint %q is not an http(s) URL", spec, ep)
			}
			c.S3Endpoint = ep
		}
		if r := q.Get("region"); r != "" {
			c.S3Region = r
		}
		prefix := strings.TrimPrefix(u.Path, "/")
		if prefix != "" && !strings.HasSuffix(prefix, "/") {
			prefix += "/" // s3://b/site1 is the keys under site1/
		}
		c.StoreDir, c.S3Bucket, c.S3Prefix = "", u.Host, prefix
	default:
		return fmt.Errorf("%q: want dir:///path or s3://bucket/prefix", spec)
	}
	return nil
}
