// Package telemetry sets up tracing and structured logging the same way in
// every service: OTLP/HTTP export configured by the standard OTEL_*
// variables (none set: spans are still created, so trace ids reach the
// logs, but nothing is exported), W3C trace context propagation, and slog
// JSON logs that carry trace_id and span_id.
package telemetry

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
)

var propagatorOnce sync.Once

// Exporting reports whether OTEL_* variables ask for OTLP export.
func Exporting() bool {
	if os.Getenv("OTEL_SDK_DISABLED") == "true" || os.Getenv("OTEL_TRACES_EXPORTER") == "none" {
		return false
	}
	return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// Tracing sets up a tracer provider for one service. The service name is
// always strata-<service> (so the six services of `strata dev` stay apart
// in one process); OTEL_RESOURCE_ATTRIBUTES adds attributes. Call Shutdown
// on the provider to flush.
func Tracing(ctx context.Context, service string) (*sdktrace.TracerProvider, error) {
	propagatorOnce.Do(func() {
		otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	})
	in := Instance(service)
	res, err := resource.New(ctx, resource.WithAttributes(semconv.ServiceInstanceID(in.ID), semconv.HostName(in.Host)),
		resource.WithFromEnv(), resource.WithAttributes(semconv.ServiceName(ServiceName(service))))
	if err != nil {
		return nil, err
	}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if Exporting() {
		exp, err := otlptracehttp.New(ctx)
		if err != nil {
			return nil, err
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	return sdktrace.NewTracerProvider(opts...), nil
}

// ServiceName is the name a service registers under everywhere.
func ServiceName(service string) string { return "strata-" + service }

// Logger returns a JSON slog logger for one service that adds trace_id and
// span_id from the context to every record.
func Logger(w io.Writer, service, level string) *slog.Logger {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(strings.ToUpper(level))); err != nil {
		lv = slog.LevelInfo
	}
	h := slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lv})
	in := Instance(service)
	return slog.New(traceHandler{h}).With("service", ServiceName(service), "instance", in.ID, "host", in.Host)
}

// InstanceInfo names one running instance of a service.
type InstanceInfo struct {
	ID   string // service.instance.id: host, then a random suffix
	Host string // host.name
}

var instances sync.Map // service → InstanceInfo

// Instance is this process's identity as an instance of service, the same
// in its spans (service.instance.id, host.name) and its log lines
// (instance, host): which worker did what is visible in Jaeger and in the
// logs. STRATA_INSTANCE_ID replaces the generated id.
func Instance(service string) InstanceInfo {
	if v, ok := instances.Load(service); ok {
		return v.(InstanceInfo)
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	id := os.Getenv("STRATA_INSTANCE_ID")
	if id == "" {
		id = host + "-" + uuid.NewString()[:8]
	}
	v, _ := instances.LoadOrStore(service, InstanceInfo{ID: id, Host: host})
	return v.(InstanceInfo)
}

type traceHandler struct{ slog.Handler }

func (h traceHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

func (h traceHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return traceHandler{h.Handler.WithAttrs(as)}
}

func (h traceHandler) WithGroup(name string) slog.Handler {
	return traceHandler{h.Handler.WithGroup(name)}
}
