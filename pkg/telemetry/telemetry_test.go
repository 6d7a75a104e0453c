package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
)

func TestLoggerCarriesTraceID(t *testing.T) {
	tp, err := Tracing(context.Background(), "test")
	if err != nil {
		t.Fatal(err)
	}
	ctx, span := tp.Tracer("t").Start(context.Background(), "op")
	defer span.End()
	var buf bytes.Buffer
	Logger(&buf, "test", "info").InfoContext(ctx, "hello")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatal(err)
	}
	if rec["trace_id"] != span.SpanContext().TraceID().String() || rec["service"] != "strata-test" {
		t.Fatalf("log record %v lacks the trace id or service", rec)
	}
}
