package bus

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/telemetry"
)

// Version is reported by every micro service.
const Version = "0.1.0"

// AddService registers the service with nats micro, so `nats micro ls`
// lists it and `nats micro info|stats` describe it.
func (b *Bus) AddService(description string) (micro.Service, error) {
	in := telemetry.Instance(b.Service)
	svc, err := micro.AddService(b.NC, micro.Config{
		Name:        "strata-" + b.Service,
		Version:     Version,
		Description: description,
		// nats micro info shows which host and instance (the id in its
		// spans and logs) each registration is.
		Metadata: map[string]string{"instance": in.ID, "host": in.Host},
	})
	if err != nil {
		return nil, fmt.Errorf("register micro service strata-%s: %w", b.Service, err)
	}
	return svc, nil
}

// Endpoint adds a request/reply endpoint whose requests are decoded and
// validated into PT; a bad request gets a 400 error reply, a handler error
// a 500, and neither stops the service. Handlers run under ctx (the
// service's): a long request (a garbage collection) stops with the service.
func Endpoint[T any, PT interface {
	*T
	contracts.Message
}](ctx context.Context, b *Bus, svc micro.Service, name, subject string, h func(context.Context, PT) (contracts.Message, error)) error {
	return ConcurrentEndpoint[T, PT](ctx, b, svc, name, subject, 1, h)
}

// ConcurrentEndpoint is Endpoint handling up to n requests at once (NATS
// delivers one subscription's messages one at a time): for short, frequent
// requests from many callers, like dedup's "which are missing?". A request
// still in flight when the service stops gets no reply; its caller times
// out (Request, DefaultRequestTimeout) and retries.
func ConcurrentEndpoint[T any, PT interface {
	*T
	contracts.Message
}](ctx context.Context, b *Bus, svc micro.Service, name, subject string, n int, h func(context.Context, PT) (contracts.Message, error)) error {
	sem := make(chan struct{}, max(1, n))
	handle := func(req micro.Request) {
		ctx := ContextFrom(ctx, nats.Header(req.Headers()))
		ctx, span := b.Tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer))
		defer span.End()
		var m PT = new(T)
		if err := contracts.Decode(req.Data(), m); err != nil {
			span.SetStatus(codes.Error, err.Error())
			b.Log.WarnContext(ctx, "bad request refused", "endpoint", name, "err", err)
			req.Error("400", err.Error(), nil)
			return
		}
		reply, err := h(ctx, m)
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
			b.Log.ErrorContext(ctx, "request failed", "endpoint", name, "err", err)
			req.Error("500", err.Error(), nil)
			return
		}
		data, err := contracts.Encode(reply)
		if err != nil {
			req.Error("500", err.Error(), nil)
			return
		}
		req.Respond(data)
	}
	return svc.AddEndpoint(name, micro.HandlerFunc(func(req micro.Request) {
		if n <= 1 {
			handle(req)
			return
		}
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			handle(req)
		}()
	}), micro.WithEndpointSubject(subject))
}

// RemoteError is a service's error reply to a request: Code "400" when
// the request was refused (it does not decode or validate), "500" when
// handling it failed.
type RemoteError struct {
	Subject, Code, Message string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("request %s: %s %s", e.Subject, e.Code, e.Message)
}

// DefaultRequestTimeout bounds a request whose context has no deadline: a
// reply lost with a responder that stopped mid-request (a restarted dedup)
// must become an error to retry, not a caller waiting forever.
const DefaultRequestTimeout = 30 * time.Second

// Request sends a request with the trace context of ctx and decodes the
// reply into out; a micro error reply becomes an error.
func Request(ctx context.Context, nc *nats.Conn, subject string, req, out contracts.Message) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultRequestTimeout)
		defer cancel()
	}
	data, err := contracts.Encode(req)
	if err != nil {
		return err
	}
	msg := nats.NewMsg(subject)
	msg.Data = data
	otel.GetTextMapPropagator().Inject(ctx, HeaderCarrier(msg.Header))
	resp, err := nc.RequestMsgWithContext(ctx, msg)
	if err != nil {
		return fmt.Errorf("request %s: %w", subject, err)
	}
	if code := resp.Header.Get(micro.ErrorCodeHeader); code != "" {
		return &RemoteError{Subject: subject, Code: code, Message: resp.Header.Get(micro.ErrorHeader)}
	}
	if err := json.Unmarshal(resp.Data, out); err != nil {
		return fmt.Errorf("reply from %s: %w", subject, err)
	}
	return out.Validate()
}
