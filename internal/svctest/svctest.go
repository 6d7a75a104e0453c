// Package svctest builds a service runtime for unit tests: an in-process
// nats-server with Strata's streams and buckets, an in-memory object
// store and a repository on it. Test scaffolding: importable only by
// Strata's own packages' tests.
package svctest

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/strata-backup/strata/internal/natstest"
	"github.com/strata-backup/strata/pkg/bus"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/runtime"
)

// Runtime returns a started runtime for service under test and a context
// that ends with the test.
func Runtime(t testing.TB, service string, chunkSize int) (context.Context, *runtime.Runtime) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	nc := natstest.Start(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	b := &bus.Bus{NC: nc, JS: js, Service: service, Tracer: noop.NewTracerProvider().Tracer(service), Log: log}
	if err := b.EnsureStreams(ctx, 1); err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, objstore.NewMem(), chunkSize, nil)
	if err != nil {
		t.Fatal(err)
	}
	rt, err := runtime.New(ctx, b, r)
	if err != nil {
		t.Fatal(err)
	}
	return ctx, rt
}
