// Package metrics is Strata's Prometheus surface: every metric a service
// exports is named here, once, so the names operators alert on (and the
// rules and dashboard in deploy/) have one home.
//
// Written with prometheus/client_golang rather than OpenTelemetry's
// Prometheus exporter: the names are a contract (Velero's
// backup_success_total / _failure_total / _last_successful_timestamp are
// what people already alert on), and client_golang writes them exactly as
// given, while the OTel exporter derives them (unit and _total suffixes,
// otel_scope_* labels) by translation rules that have changed between
// releases. Traces stay OpenTelemetry.
package metrics

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Registry holds every Strata metric and the Go runtime and process
// collectors. One per process: `strata dev` runs six services in one
// process and serves them together.
var Registry = prometheus.NewRegistry()

func init() {
	Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
}

// names: every metric this package defines (Names).
var names []string

// Names lists the metrics this package defines, for checks of the rules
// and dashboard in deploy/.
func Names() []string {
	return append(slices.Clone(names), "strata_queue_pending", "strata_queue_ack_pending")
}

func counter(name, help string) prometheus.Counter {
	names = append(names, name)
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	Registry.MustRegister(c)
	return c
}

func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	names = append(names, name)
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	Registry.MustRegister(c)
	return c
}

func gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	names = append(names, name)
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
	Registry.MustRegister(g)
	return g
}

func histogram(name, help string, buckets []float64) prometheus.Histogram {
	names = append(names, name)
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
	Registry.MustRegister(h)
	return h
}

func histogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	names = append(names, name)
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels)
	Registry.MustRegister(h)
	return h
}

// Backups, counted by the service that makes the final transition, once
// per backup (the catalog tells it whether this call made the change, so
// a redelivery is not counted twice).
var (
	BackupSuccess  = counter("strata_backup_success_total", "Backups that reached verified.")
	BackupFailure  = counter("strata_backup_failure_total", "Backups that ended failed (cancelled, deadline, source gone, …).")
	BackupDuration = histogram("strata_backup_duration_seconds", "From request to verified, of backups that succeeded.",
		prometheus.ExponentialBuckets(1, 2, 18)) // 1 s … 36 h
)

// Transfer workers: what each segment read and what became of it.
var (
	BytesRead         = counter("strata_transfer_read_bytes_total", "Bytes read from sources.")
	BytesStored       = counter("strata_transfer_stored_bytes_total", "Bytes written to the repository (after compression and encryption).")
	BytesDeduplicated = counter("strata_transfer_deduplicated_bytes_total", "Bytes read whose chunk the repository already held.")
	// reason: zero (all-zero chunks, never stored), unallocated (not
	// allocated in the source or free in its filesystem: never read),
	// unchanged (an incremental's unchanged blocks: never read).
	BytesSkipped    = counterVec("strata_transfer_skipped_bytes_total", "Bytes of disks not stored, by reason.", "reason")
	ChunksUploaded  = counter("strata_transfer_chunks_uploaded_total", "Chunks written to the repository.")
	ChunksRefused   = counter("strata_transfer_chunks_refused_total", "Conditional chunk writes the store refused: the chunk was there already.")
	SegmentDuration = histogram("strata_transfer_segment_duration_seconds", "Time to read, chunk and store one segment.",
		prometheus.ExponentialBuckets(0.05, 2, 16)) // 50 ms … 27 min
	SegmentFailures = counter("strata_transfer_segment_failures_total", "Segments a worker gave up on.")
)

// JetStream work queues, by durable consumer.
var (
	Redeliveries = counterVec("strata_queue_redeliveries_total", "Messages handled again after a failed or unacknowledged attempt.", "consumer")
	DeadLetters  = counterVec("strata_dead_letters_total", "Messages given up on and dead-lettered.", "consumer")
	Handled      = counterVec("strata_queue_handled_total", "Messages handled, by result (ok, retry, dead).", "consumer", "result")
)

// Verification and the repository's maintenance.
var (
	// mode: trivial, chunks, digest, certify, restore; result: passed,
	// failed (damage found), error (could not be checked).
	Verifications = counterVec("strata_verification_total", "Verifications run, by mode and result.", "mode", "result")
	GCFreedBytes  = counter("strata_gc_freed_bytes_total", "Bytes of objects a collection deleted.")
	// LockSoonest: under Object Lock, when the first of the backups a VM's
	// retention keeps stops being immutable (set by each prune of the VM;
	// every merge replica reports the VMs it pruned: max by (vm)).
	LockSoonest = gaugeVec("strata_backup_lock_soonest_expiry_timestamp_seconds",
		"When the Object Lock of the first backup the VM's retention keeps ends (Unix time).", "vm")
	GCRuns = counterVec("strata_gc_runs_total", "Collections run, by result (ok, error).", "result")
)

// Object store requests, per operation (get, put, put_if_absent, delete,
// list, head, …), each attempt counted: retries show as requests.
var (
	S3Requests = counterVec("strata_s3_requests_total", "Object store requests, by operation.", "op")
	S3Errors   = counterVec("strata_s3_errors_total", "Object store requests that failed (not found excluded), by operation.", "op")
	S3Duration = histogramVec("strata_s3_request_duration_seconds", "Object store request latency, by operation.",
		prometheus.ExponentialBuckets(0.001, 2, 16), "op") // 1 ms … 33 s
)

// ObserveS3 counts one object store request (objstore.Observer).
func ObserveS3(op string, took time.Duration, err error) {
	S3Requests.WithLabelValues(op).Inc()
	S3Duration.WithLabelValues(op).Observe(took.Seconds())
	if err != nil {
		S3Errors.WithLabelValues(op).Inc()
	}
}

// QueueDepth reports, at each scrape, the messages waiting for and held by
// each durable consumer this process pulls from (strata_queue_pending,
// strata_queue_ack_pending). Every replica of a service reports the same
// shared consumer: aggregate with max by (consumer).
var QueueDepth = &queues{by: map[string]func(context.Context) (pending, ackPending uint64, err error){}}

func init() { Registry.MustRegister(QueueDepth) }

type queues struct {
	mu sync.Mutex
	by map[string]func(context.Context) (pending, ackPending uint64, err error)
}

var (
	pendingDesc    = prometheus.NewDesc("strata_queue_pending", "Messages of a durable consumer not yet delivered.", []string{"consumer"}, nil)
	ackPendingDesc = prometheus.NewDesc("strata_queue_ack_pending", "Messages of a durable consumer delivered and not yet acknowledged.", []string{"consumer"}, nil)
)

// Watch adds a consumer whose depth info reads.
func (q *queues) Watch(consumer string, info func(context.Context) (pending, ackPending uint64, err error)) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.by[consumer] = info
}

func (q *queues) Describe(ch chan<- *prometheus.Desc) {
	ch <- pendingDesc
	ch <- ackPendingDesc
}

// Collect asks JetStream once per consumer, bounded: a scrape while NATS
// is unreachable reports nothing for the queues rather than hanging.
func (q *queues) Collect(ch chan<- prometheus.Metric) {
	q.mu.Lock()
	by := maps.Clone(q.by)
	q.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for name, info := range by {
		p, a, err := info(ctx)
		if err != nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(pendingDesc, prometheus.GaugeValue, float64(p), name)
		ch <- prometheus.MustNewConstMetric(ackPendingDesc, prometheus.GaugeValue, float64(a), name)
	}
}

var (
	installedMu sync.Mutex
	installed   = map[string]prometheus.Collector{}
)

// Install registers a collector under a name, replacing the one installed
// under it before (a service started again in the same process, as tests
// do, reports its own state, not its predecessor's).
func Install(name string, c prometheus.Collector) {
	installedMu.Lock()
	defer installedMu.Unlock()
	if old := installed[name]; old != nil {
		Registry.Unregister(old)
	}
	installed[name] = c
	Registry.MustRegister(c)
}
