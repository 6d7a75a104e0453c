// Package bus is Strata's use of NATS: JetStream streams and durable pull
// consumers for work, micro endpoints for request/reply, W3C trace context
// in message headers, and a dead-letter path for messages nobody can handle.
//
// Delivery contract for Consume handlers: at least once. A handler must be
// idempotent; returning an error redelivers the message with backoff,
// returning Permanent(err) (or failing to decode/validate) dead-letters it
// at once, and a message that fails MaxDeliver times is dead-lettered too.
package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/metrics"
)

// Bus is one service's connection to NATS.
type Bus struct {
	NC      *nats.Conn
	JS      jetstream.JetStream
	Service string // e.g. "transfer"
	Tracer  trace.Tracer
	Log     *slog.Logger
}

// Dial says where NATS is and how to prove who we are.
type Dial struct {
	URL     string // comma-separated server URLs (tls://… for TLS)
	Service string // the client's name, e.g. "transfer"
	// NkeyFile: a file holding this service's nkey seed (natsauth); none:
	// no credential (NATS on loopback, strata dev).
	NkeyFile string
	// CAFile: the CA that signed the servers' certificates; set, the
	// connection requires TLS.
	CAFile string
}

// Connect dials NATS, retrying until ctx ends, and reconnecting forever
// afterwards: a service outlives NATS restarts.
func Connect(ctx context.Context, d Dial, tracer trace.Tracer, log *slog.Logger) (*Bus, error) {
	url, service := d.URL, d.Service
	opts := []nats.Option{
		nats.Name("strata-" + service),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("nats reconnected", "url", c.ConnectedUrl()) }),
		// A permission refused is a bug in a role or an attempt beyond it:
		// said loudly, whatever call it came from.
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if err != nil {
				log.Error("nats error", "err", err)
			}
		}),
	}
	if d.NkeyFile != "" {
		opt, err := nats.NkeyOptionFromSeed(d.NkeyFile)
		if err != nil {
			return nil, fmt.Errorf("nats credential %s: %w", d.NkeyFile, err)
		}
		opts = append(opts, opt)
	}
	if d.CAFile != "" {
		opts = append(opts, nats.RootCAs(d.CAFile))
	}
	var nc *nats.Conn
	var err error
	for {
		nc, err = nats.Connect(url, opts...)
		if err == nil {
			break
		}
		log.Warn("waiting for nats", "url", url, "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to nats %s: %w", url, err)
		case <-time.After(time.Second):
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return &Bus{NC: nc, JS: js, Service: service, Tracer: tracer, Log: log}, nil
}

// Close drains the connection.
func (b *Bus) Close() { b.NC.Drain() }

// StreamConfigs are Strata's streams. Every service creates them at start;
// creating an existing stream with the same config is a no-op.
func StreamConfigs(replicas int) []jetstream.StreamConfig {
	week := 7 * 24 * time.Hour
	return []jetstream.StreamConfig{
		{Name: contracts.StreamBackups, Subjects: []string{"strata.backup.>", "strata.trigger.>"}, MaxAge: week, Replicas: replicas, Duplicates: 10 * time.Minute},
		{Name: contracts.StreamSegments, Subjects: []string{contracts.SubjectSegmentPrefix + ">", contracts.SubjectChunkCheckPrefix + ">"}, Retention: jetstream.WorkQueuePolicy, MaxAge: week, Replicas: replicas, Duplicates: 10 * time.Minute},
		// One message per subject: a redelivered segment's result replaces
		// its earlier one, so the stream itself deduplicates; merge reads
		// results back by direct get.
		{Name: contracts.StreamResults, Subjects: []string{contracts.SubjectSegmentDonePrefix + ">", contracts.SubjectChunkCheckedPrefix + ">"}, MaxMsgsPerSubject: 1, AllowDirect: true, MaxAge: week, Replicas: replicas},
		{Name: contracts.StreamDLQ, Subjects: []string{contracts.SubjectDLQPrefix + ">"}, MaxAge: 30 * 24 * time.Hour, Replicas: replicas},
		// Stored packs, replayed by each dedup instance into its index
		// from where it left off; one that fell further behind than MaxAge
		// rebuilds its index from the packs themselves.
		{Name: contracts.StreamPacks, Subjects: []string{contracts.SubjectPackStoredPrefix + ">", contracts.SubjectPackRetained}, MaxAge: week, Replicas: replicas},
	}
}

// EnsureStreams creates (or updates) every stream and KV bucket.
func (b *Bus) EnsureStreams(ctx context.Context, replicas int) error {
	if replicas < 1 {
		replicas = 1
	}
	for _, cfg := range StreamConfigs(replicas) {
		if err := retryJS(ctx, func(ctx context.Context) error {
			_, err := b.JS.CreateOrUpdateStream(ctx, cfg)
			return err
		}); err != nil {
			return fmt.Errorf("create stream %s: %w", cfg.Name, err)
		}
	}
	for _, cfg := range []jetstream.StreamConfig{
		kvStream(contracts.BucketCatalog, 5, 0, replicas),
		kvStream(contracts.BucketPolicies, 5, 0, replicas),
		kvStream(contracts.BucketMirrors, 5, 0, replicas),
		kvStream(contracts.BucketFreezes, 1, 24*time.Hour, replicas),
		kvStream(contracts.BucketGCHolds, 1, 24*time.Hour, replicas),
		kvStream(contracts.BucketBadChunks, 1, 0, replicas),
		kvStream(contracts.BucketGC, 1, 0, replicas),
		kvStream(contracts.BucketNotify, 5, 0, replicas),
		kvStream(contracts.BucketNotifySent, 1, 30*24*time.Hour, replicas),
	} {
		if err := retryJS(ctx, func(ctx context.Context) error {
			_, err := b.JS.CreateOrUpdateStream(ctx, cfg)
			return err
		}); err != nil {
			return fmt.Errorf("create kv stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}

// WaitStreams waits until every stream and KV bucket exists: a service
// whose credential may not create them starts once the one that may has.
func (b *Bus) WaitStreams(ctx context.Context) error {
	names := []string{}
	for _, cfg := range StreamConfigs(1) {
		names = append(names, cfg.Name)
	}
	for _, bucket := range contracts.Buckets {
		names = append(names, "KV_"+bucket)
	}
	for _, name := range names {
		for try := 0; ; try++ {
			_, err := b.JS.Stream(ctx, name)
			if err == nil {
				break
			}
			if !errors.Is(err, jetstream.ErrStreamNotFound) && ctx.Err() == nil {
				b.Log.Warn("stream info", "stream", name, "err", err)
			} else if try%10 == 0 {
				b.Log.Info("waiting for a stream another service creates (STRATA_NATS_SETUP=false)", "stream", name)
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("stream %s does not exist and this service may not create it: %w", name, ctx.Err())
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}

// kvStream is the stream behind a KV bucket, as nats.go would make it,
// except that reads are not "direct": with replicas, a direct get may be
// answered by a follower that has not yet applied the last write, and a
// transfer worker must never find "no such backup" for a record the
// snapshotter wrote before publishing its segments. Reads go through the
// stream leader instead: read-your-writes across services.
func kvStream(bucket string, history int64, ttl time.Duration, replicas int) jetstream.StreamConfig {
	dup := 2 * time.Minute
	if ttl > 0 && ttl < dup {
		dup = ttl
	}
	return jetstream.StreamConfig{
		Name: "KV_" + bucket, Subjects: []string{"$KV." + bucket + ".>"},
		MaxMsgsPerSubject: history, MaxBytes: -1, MaxAge: ttl, MaxMsgSize: -1, MaxMsgs: -1, MaxConsumers: -1,
		Replicas: replicas, AllowRollup: true, DenyDelete: true, Duplicates: dup, Discard: jetstream.DiscardNew,
		AllowDirect: false,
	}
}

// retryJS retries a JetStream API call with a per-attempt timeout: a request
// lost while JetStream starts or elects a leader would otherwise wait for
// the caller's whole deadline.
func retryJS(ctx context.Context, f func(context.Context) error) error {
	var err error
	for attempt := 0; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = f(actx)
		cancel()
		if err == nil || ctx.Err() != nil || attempt >= 20 {
			return err
		}
		time.Sleep(time.Duration(min(attempt+1, 5)) * 200 * time.Millisecond)
	}
}

// Publish sends m to a JetStream subject with the trace context of ctx.
// msgID, when set, lets JetStream drop a duplicate publish (a handler that
// is redelivered publishes the same message again).
func (b *Bus) Publish(ctx context.Context, subject string, m contracts.Message, msgID string) error {
	data, err := contracts.Encode(m)
	if err != nil {
		return err
	}
	msg := nats.NewMsg(subject)
	msg.Data = data
	otel.GetTextMapPropagator().Inject(ctx, HeaderCarrier(msg.Header))
	var opts []jetstream.PublishOpt
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	if _, err := b.JS.PublishMsg(ctx, msg, opts...); err != nil {
		return fmt.Errorf("publish %s: %w", subject, err)
	}
	return nil
}

// HeaderCarrier adapts NATS headers to OpenTelemetry propagation.
type HeaderCarrier nats.Header

func (c HeaderCarrier) Get(key string) string { return nats.Header(c).Get(key) }
func (c HeaderCarrier) Set(key, value string) { nats.Header(c).Set(key, value) }
func (c HeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// ContextFrom continues the trace carried by headers.
func ContextFrom(ctx context.Context, h nats.Header) context.Context {
	if h == nil {
		return ctx
	}
	return otel.GetTextMapPropagator().Extract(ctx, HeaderCarrier(h))
}

type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent marks an error that redelivery cannot fix.
func Permanent(err error) error { return permanentError{err} }

// IsPermanent reports whether err was marked Permanent.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

type laterError struct{ after time.Duration }

func (e laterError) Error() string { return fmt.Sprintf("not yet: look again in %s", e.after) }

// Later asks for the message again after d: not a failure (nothing is
// logged), a timer kept by JetStream that survives restarts.
func Later(d time.Duration) error { return laterError{d} }

// DeadLetter copies a message to strata.dlq.<subject> with the reason.
func (b *Bus) DeadLetter(ctx context.Context, subject string, data []byte, hdr nats.Header, reason string) {
	msg := nats.NewMsg(contracts.SubjectDLQPrefix + subject)
	msg.Data = data
	for k, v := range hdr {
		msg.Header[k] = v
	}
	msg.Header.Set(contracts.HeaderDLQReason, reason)
	msg.Header.Set(contracts.HeaderDLQSubject, subject)
	msg.Header.Set(contracts.HeaderDLQService, "strata-"+b.Service)
	if _, err := b.JS.PublishMsg(ctx, msg); err != nil {
		b.Log.ErrorContext(ctx, "dead-letter publish failed; message dropped", "subject", subject, "reason", reason, "err", err)
		return
	}
	b.Log.WarnContext(ctx, "message dead-lettered", "subject", subject, "reason", reason)
}

// giveUp runs spec.GiveUp until it succeeds; false if ctx ended first.
func giveUp(ctx context.Context, b *Bus, spec Spec, m contracts.Message, reason error) bool {
	for attempt := 0; ; attempt++ {
		err := spec.GiveUp(ctx, m, reason)
		if err == nil {
			return true
		}
		delay := min(time.Duration(1<<min(attempt, 5))*250*time.Millisecond, 10*time.Second)
		b.Log.WarnContext(ctx, "recording a failure failed; retrying", "consumer", spec.Durable, "reason", reason, "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(delay):
		}
	}
}

// Spec describes one durable consumer.
type Spec struct {
	Stream      string
	Durable     string
	Filters     []string
	AckWait     time.Duration // default 30s
	MaxDeliver  int           // default 10
	Concurrency int           // messages handled at once, default 1
	// GiveUp, when set, is told about a decoded message that is being
	// dead-lettered because handling it failed for good, so the backup it
	// belongs to is failed cleanly instead of waiting forever. It runs
	// before the message is terminated and is retried until it returns
	// nil (the message kept in progress meanwhile): an outcome is never
	// dropped. Should the process stop first, the message is left
	// unacknowledged, and the backup deadline catches what it could not.
	GiveUp func(ctx context.Context, m contracts.Message, err error) error
}

// pullExpiry bounds how long a pull request waits for messages before the
// client issues the next. A pull request the cluster drops — a consumer
// whose leader moved right after it was created, as happens when a 3-node
// deployment starts — is only replaced when it expires: with the client's
// 30 s default, a backup committed during that window waited 30 s for its
// verifier (seen in about one deployed full in five right after
// `docker compose up`). 5 s costs one idle request per consumer every 5 s.
// (A variable for the tests.)
var pullExpiry = 5 * time.Second

// Consume runs h for every message of a durable pull consumer until ctx
// ends. See the package comment for the delivery contract.
func Consume[T any, PT interface {
	*T
	contracts.Message
}](ctx context.Context, b *Bus, spec Spec, h func(context.Context, PT) error) error {
	if spec.AckWait == 0 {
		spec.AckWait = 30 * time.Second
	}
	if spec.MaxDeliver == 0 {
		spec.MaxDeliver = 10
	}
	if spec.Concurrency < 1 {
		spec.Concurrency = 1
	}
	err := retryJS(ctx, func(actx context.Context) error {
		_, err := b.JS.CreateOrUpdateConsumer(actx, spec.Stream, jetstream.ConsumerConfig{
			Durable:        spec.Durable,
			FilterSubjects: spec.Filters,
			AckPolicy:      jetstream.AckExplicitPolicy,
			AckWait:        spec.AckWait,
			MaxDeliver:     spec.MaxDeliver,
			MaxAckPending:  1000,
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("create consumer %s on %s: %w", spec.Durable, spec.Stream, err)
	}
	// Each of Concurrency pullers asks for one message only when it is
	// free, and handles it before asking again: an instance never holds
	// work it is not doing, so N instances share a burst (a backup's
	// segments) about evenly — JetStream hands each message to the oldest
	// waiting request. A client-side prefetch buffer (Consume) let the
	// first instance to pull take twice its concurrency while the others
	// idled.
	metrics.QueueDepth.Watch(spec.Durable, func(ctx context.Context) (uint64, uint64, error) {
		c, err := b.JS.Consumer(ctx, spec.Stream, spec.Durable)
		if err != nil {
			return 0, 0, err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return 0, 0, err
		}
		return info.NumPending, uint64(info.NumAckPending), nil
	})
	subject := "$JS.API.CONSUMER.MSG.NEXT." + spec.Stream + "." + spec.Durable
	for i := 0; i < spec.Concurrency; i++ {
		go pull(ctx, b, spec, subject, pullExpiry, h)
	}
	return nil
}

// pull asks for one message at a time on an inbox of its own that it
// keeps for as long as it runs. The client library's fetch made a new
// inbox per request and dropped it when its own timer beat the server's
// expiry: a message the server handed to the request in that instant was
// delivered to nobody and waited out the ack wait before anyone got it
// again — a 1 GiB full that takes 14 s took 59 s (ack wait 60 s) on a
// CPU-throttled worker. Here a message that arrives late is still ours,
// and is handled on the next turn.
func pull[T any, PT interface {
	*T
	contracts.Message
}](ctx context.Context, b *Bus, spec Spec, subject string, expiry time.Duration, h func(context.Context, PT) error) {
	inbox := b.NC.NewInbox()
	msgs := make(chan *nats.Msg, 16)
	sub, err := b.NC.ChanSubscribe(inbox, msgs)
	if err != nil {
		b.Log.Error("pull: subscribe", "consumer", spec.Durable, "err", err)
		return
	}
	defer sub.Unsubscribe()
	req := []byte(fmt.Sprintf(`{"batch":1,"expires":%d}`, expiry.Nanoseconds()))
	pause := func() bool { // a refusal must not spin
		select {
		case <-ctx.Done():
			return false
		case <-time.After(time.Second):
			return true
		}
	}
	// extra: requests still open beyond the current one (each timeout
	// below leaves one behind); their ends are absorbed, so a busy server
	// answering late does not make a puller hold ever more requests.
	extra := 0
	for ctx.Err() == nil {
		if err := b.NC.PublishRequest(subject, inbox, req); err != nil {
			b.Log.Debug("pull", "consumer", spec.Durable, "err", err)
			if !pause() {
				return
			}
			continue
		}
		// Wait for this request's message or its end (408 at its expiry).
		timer := time.NewTimer(expiry + time.Second)
	wait:
		for {
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case <-timer.C:
				extra = min(extra+1, 2) // a lost request never ends: count at most two
				break wait
			case m := <-msgs:
				if status := m.Header.Get("Status"); status != "" {
					if (status == "404" || status == "408") && extra > 0 {
						extra-- // an older request's end: this one is still open
						continue
					}
					timer.Stop()
					if status != "404" && status != "408" { // 409 consumer gone or leader changed, 503 no responders
						b.Log.Debug("pull", "consumer", spec.Durable, "status", status, "description", m.Header.Get("Description"))
						if !pause() {
							return
						}
					}
					break wait
				}
				timer.Stop()
				handle(ctx, b, spec, delivery{m}, h)
				break wait
			}
		}
	}
}

// delivery is a JetStream message received on a core subscription,
// settled through its reply subject (nats.Msg's acknowledgement methods).
type delivery struct{ m *nats.Msg }

func (d delivery) Data() []byte                           { return d.m.Data }
func (d delivery) Headers() nats.Header                   { return d.m.Header }
func (d delivery) Subject() string                        { return d.m.Subject }
func (d delivery) DoubleAck(ctx context.Context) error    { return d.m.AckSync(nats.Context(ctx)) }
func (d delivery) Nak() error                             { return d.m.Nak() }
func (d delivery) NakWithDelay(delay time.Duration) error { return d.m.NakWithDelay(delay) }
func (d delivery) InProgress() error                      { return d.m.InProgress() }
func (d delivery) Term() error                            { return d.m.Term() }

// delivered is how many times the server has handed the message out.
func (d delivery) delivered() uint64 {
	if md, err := d.m.Metadata(); err == nil {
		return md.NumDelivered
	}
	return 1
}

func handle[T any, PT interface {
	*T
	contracts.Message
}](ctx context.Context, b *Bus, spec Spec, msg delivery, h func(context.Context, PT) error) {
	ctx, span := b.Tracer.Start(ContextFrom(ctx, msg.Headers()), spec.Durable,
		trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(attribute.String("messaging.destination.name", msg.Subject())))
	defer span.End()

	if msg.delivered() > 1 {
		metrics.Redeliveries.WithLabelValues(spec.Durable).Inc()
	}
	var m PT = new(T)
	if err := contracts.Decode(msg.Data(), m); err != nil {
		span.SetStatus(codes.Error, err.Error())
		b.DeadLetter(ctx, msg.Subject(), msg.Data(), msg.Headers(), err.Error())
		metrics.DeadLetters.WithLabelValues(spec.Durable).Inc()
		msg.Term()
		return
	}
	// Keep the message ours while a long handler (or a give-up) runs.
	done := make(chan struct{})
	defer close(done)
	go func() {
		t := time.NewTicker(spec.AckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				msg.InProgress()
			}
		}
	}()
	err := h(ctx, m)
	var later laterError
	if errors.As(err, &later) {
		msg.NakWithDelay(later.after)
		metrics.Handled.WithLabelValues(spec.Durable, "later").Inc()
		return
	}
	if err == nil {
		metrics.Handled.WithLabelValues(spec.Durable, "ok").Inc()
		if err := msg.DoubleAck(ctx); err != nil {
			b.Log.WarnContext(ctx, "ack failed; message will be redelivered", "subject", msg.Subject(), "err", err)
		}
		return
	}
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
	delivered := msg.delivered()
	if ctx.Err() != nil { // shutting down: let another instance have it
		msg.Nak()
		return
	}
	if IsPermanent(err) || delivered >= uint64(spec.MaxDeliver) {
		reason := fmt.Sprintf("after %d deliveries: %v", delivered, err)
		if spec.GiveUp != nil && !giveUp(ctx, b, spec, m, errors.New(reason)) {
			return // shutting down before the outcome stuck: see Spec.GiveUp
		}
		b.DeadLetter(ctx, msg.Subject(), msg.Data(), msg.Headers(), reason)
		metrics.DeadLetters.WithLabelValues(spec.Durable).Inc()
		metrics.Handled.WithLabelValues(spec.Durable, "dead").Inc()
		msg.Term()
		return
	}
	metrics.Handled.WithLabelValues(spec.Durable, "retry").Inc()
	delay := min(time.Duration(1<<min(delivered, 5))*time.Second, 30*time.Second)
	b.Log.WarnContext(ctx, "handler failed; will retry", "subject", msg.Subject(), "delivery", delivered, "retry_in", delay, "err", err)
	msg.NakWithDelay(delay)
}

// KVHistory reads a KV bucket's last change of a key, deletes included,
// through the stream behind the bucket: the one place that knows KV's
// stream and subject names.
type KVHistory struct {
	bucket string
	stream jetstream.Stream
}

// OpenKVHistory binds to a bucket's stream (once: reads then cost one
// request each).
func OpenKVHistory(ctx context.Context, js jetstream.JetStream, bucket string) (*KVHistory, error) {
	stream, err := js.Stream(ctx, "KV_"+bucket)
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", bucket, err)
	}
	return &KVHistory{bucket: bucket, stream: stream}, nil
}

// Last returns the key's last change: its stream sequence (0: never
// written) and value (nil when deleted). Unlike a Get, it tells "deleted
// since" from "never there", so a reader notices any change at all since
// it last looked.
func (h *KVHistory) Last(ctx context.Context, key string) (seq uint64, value []byte, err error) {
	bucket := h.bucket
	msg, err := h.stream.GetLastMsgForSubject(ctx, "$KV."+bucket+"."+key)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("kv %s: read %s: %w", bucket, key, err)
	}
	if op := msg.Header.Get("KV-Operation"); op == "DEL" || op == "PURGE" {
		return msg.Sequence, nil, nil
	}
	return msg.Sequence, msg.Data, nil
}

// IsWrongSequence reports a compare-and-set that lost: the key changed
// since the revision it was based on. Replicated streams (R>1, the compose
// deployment) report it with another code than a single server does;
// recognising only the single-server one turned every contended catalog
// update there into a handler failure retried seconds later (merge's
// commit of a backup waited 5 s of a 8 s incremental).
func IsWrongSequence(err error) bool {
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// IsTransient reports a JetStream request that got no definite answer
// and may succeed if asked again: a timeout, nobody answering, or a
// server whose JetStream is not ready yet. A NATS node that just
// restarted accepts clients before its JetStream has caught up with the
// cluster, and answers their requests "not enabled" or "temporarily
// unavailable" (503) meanwhile.
func IsTransient(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) ||
		errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) || errors.Is(err, nats.ErrConnectionReconnecting) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.Code == 503
}
