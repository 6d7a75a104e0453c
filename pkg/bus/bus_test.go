package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/natstest"
)

func testBus(t *testing.T) (context.Context, *Bus) {
	nc := natstest.Start(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	b := &Bus{NC: nc, JS: js, Service: "test", Tracer: noop.NewTracerProvider().Tracer("test"), Log: slog.New(slog.DiscardHandler)}
	if err := b.EnsureStreams(ctx, 1); err != nil {
		t.Fatal(err)
	}
	return ctx, b
}

// A give-up whose outcome cannot be recorded yet is retried until it
// sticks; only then is the message dead-lettered and terminated. Before
// the fix the error of the callback was dropped after Term.
func TestGiveUpRetriedUntilRecorded(t *testing.T) {
	ctx, b := testBus(t)
	var calls atomic.Int32
	recorded := make(chan string, 1)
	err := Consume(ctx, b, Spec{Stream: contracts.StreamBackups, Durable: "t", Filters: []string{contracts.SubjectBackupCommitted},
		GiveUp: func(ctx context.Context, m contracts.Message, err error) error {
			if calls.Add(1) < 3 {
				return errors.New("catalog unavailable")
			}
			recorded <- m.(*contracts.BackupCommitted).BackupID + ": " + err.Error()
			return nil
		}}, func(ctx context.Context, m *contracts.BackupCommitted) error {
		return Permanent(errors.New("cannot read the source"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, contracts.SubjectBackupCommitted, &contracts.BackupCommitted{Schema: contracts.SchemaVersion, BackupID: "b1", VM: "vm"}, ""); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-recorded:
		if got != "b1: after 1 deliveries: cannot read the source" {
			t.Fatalf("give-up told %q", got)
		}
	case <-ctx.Done():
		t.Fatal("give-up never succeeded")
	}
	if n := calls.Load(); n != 3 {
		t.Fatalf("give-up called %d times, want 3", n)
	}
	dlq, err := b.JS.Stream(ctx, contracts.StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		info, err := dlq.Info(ctx)
		if err == nil && info.State.Msgs == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dead letters: %+v %v", info, err)
		}
	}
}

// A handler that keeps failing is dead-lettered after MaxDeliver
// deliveries, and its give-up is told so.
func TestGiveUpAfterMaxDeliver(t *testing.T) {
	ctx, b := testBus(t)
	var deliveries atomic.Int32
	recorded := make(chan error, 1)
	err := Consume(ctx, b, Spec{Stream: contracts.StreamBackups, Durable: "t", Filters: []string{contracts.SubjectBackupCommitted}, MaxDeliver: 2,
		GiveUp: func(ctx context.Context, m contracts.Message, err error) error {
			recorded <- err
			return nil
		}}, func(ctx context.Context, m *contracts.BackupCommitted) error {
		deliveries.Add(1)
		return errors.New("store unreachable")
	})
	if err != nil {
		t.Fatal(err)
	}
	b.Publish(ctx, contracts.SubjectBackupCommitted, &contracts.BackupCommitted{Schema: contracts.SchemaVersion, BackupID: "b2", VM: "vm"}, "")
	select {
	case err := <-recorded:
		if err.Error() != "after 2 deliveries: store unreachable" || deliveries.Load() != 2 {
			t.Fatalf("give-up told %v after %d deliveries", err, deliveries.Load())
		}
	case <-ctx.Done():
		t.Fatal("never gave up")
	}
}

// A lost compare-and-set is recognised whether the stream is replicated
// (code 10164, as in the compose deployment's R3 buckets) or not (10071).
func TestIsWrongSequence(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence}, true},
		{fmt.Errorf("update: %w", &jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequenceConstant}), true},
		{fmt.Errorf("update: %w", jetstream.ErrKeyRevisionMismatch), true},
		{&jetstream.APIError{Code: 503, ErrorCode: jetstream.JSErrCodeJetStreamNotEnabled}, false},
		{errors.New("timeout"), false},
	} {
		if got := IsWrongSequence(tc.err); got != tc.want {
			t.Errorf("IsWrongSequence(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestIsTransient(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("open catalog: %w", jetstream.ErrJetStreamNotEnabled), true},
		{&jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, true},
		{fmt.Errorf("get: %w", nats.ErrTimeout), true},
		{context.DeadlineExceeded, true},
		{nats.ErrNoResponders, true},
		{jetstream.ErrKeyNotFound, false},
		{&jetstream.APIError{Code: 404, ErrorCode: jetstream.JSErrCodeStreamNotFound}, false},
		{&jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence}, false},
		{nil, false},
	} {
		if got := IsTransient(tc.err); got != tc.want {
			t.Errorf("IsTransient(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// Instances share a burst by what each can do: an instance takes a
// message only into a free slot, so JetStream never has more messages out
// than the instances' slots together (no client-side hoard), and a slow
// instance ends up with few of a burst while fast ones take the rest.
// With a prefetch buffer the slow one hoarded its share and the burst
// waited on it.
func TestInstancesShareABurst(t *testing.T) {
	ctx, b := testBus(t)
	const instances, concurrency, msgs = 3, 2, 40
	var handled [instances]atomic.Int32
	all := make(chan struct{}, msgs)
	for i := 0; i < instances; i++ {
		work := 20 * time.Millisecond
		if i == 0 {
			work = 400 * time.Millisecond // the slow one, and the first to pull
		}
		err := Consume(ctx, b, Spec{Stream: contracts.StreamBackups, Durable: "share", Filters: []string{contracts.SubjectBackupCommitted}, Concurrency: concurrency},
			func(ctx context.Context, m *contracts.BackupCommitted) error {
				time.Sleep(work)
				handled[i].Add(1)
				all <- struct{}{}
				return nil
			})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			time.Sleep(300 * time.Millisecond)
		}
	}
	time.Sleep(300 * time.Millisecond)
	cons, err := b.JS.Consumer(ctx, contracts.StreamBackups, "share")
	if err != nil {
		t.Fatal(err)
	}
	for k := 0; k < msgs; k++ {
		if err := b.Publish(ctx, contracts.SubjectBackupCommitted, &contracts.BackupCommitted{Schema: contracts.SchemaVersion, BackupID: fmt.Sprint("b", k), VM: "vm"}, ""); err != nil {
			t.Fatal(err)
		}
	}
	maxOut := 0
	for k := 0; k < msgs; {
		select {
		case <-all:
			k++
		case <-ctx.Done():
			t.Fatal("not every message was handled")
		case <-time.After(10 * time.Millisecond):
			if info, err := cons.Info(ctx); err == nil {
				maxOut = max(maxOut, info.NumAckPending)
			}
		}
	}
	var shares []int32
	for i := range handled {
		shares = append(shares, handled[i].Load())
	}
	t.Logf("messages per instance (the first slow): %v; at most %d out at once", shares, maxOut)
	if maxOut > instances*concurrency {
		t.Fatalf("%d messages out at once: more than the %d slots", maxOut, instances*concurrency)
	}
	if shares[0] > msgs/4 {
		t.Fatalf("the slow instance took %d of %d messages", shares[0], msgs)
	}
}

// Pull requests that expire every 20 ms while messages arrive at random
// moments: every message is handled at its first delivery and long before
// the ack wait. A puller that drops its inbox when its own timer fires (as
// the client library's fetch did) loses the messages the server hands to
// a request in its last instant: they wait out the ack wait.
func TestNoMessageLostAtAPullsExpiry(t *testing.T) {
	saved := pullExpiry
	pullExpiry = 20 * time.Millisecond
	defer func() { pullExpiry = saved }()
	ctx, b := testBus(t)
	// Busy goroutines on every processor: the pullers run late, as a
	// CPU-throttled container's do.
	hogs, stopHogs := context.WithCancel(ctx)
	defer stopHogs()
	for range runtime.GOMAXPROCS(0) {
		go func() {
			for hogs.Err() == nil {
			}
		}()
	}
	const msgs = 300
	got := make(chan time.Time, msgs)
	err := Consume(ctx, b, Spec{Stream: contracts.StreamBackups, Durable: "expiry", Filters: []string{contracts.SubjectBackupCommitted}, Concurrency: 2, AckWait: 30 * time.Second},
		func(ctx context.Context, m *contracts.BackupCommitted) error {
			got <- time.Now()
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	for k := 0; k < msgs; k++ {
		time.Sleep(time.Duration(k%7) * 3 * time.Millisecond)
		if err := b.Publish(ctx, contracts.SubjectBackupCommitted, &contracts.BackupCommitted{Schema: contracts.SchemaVersion, BackupID: fmt.Sprint("e", k), VM: "vm"}, ""); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.After(10 * time.Second) // far below the ack wait
	for k := 0; k < msgs; k++ {
		select {
		case <-got:
		case <-deadline:
			t.Fatalf("%d of %d messages handled within 10 s: the rest wait for the ack wait", k, msgs)
		}
	}
	cons, err := b.JS.Consumer(ctx, contracts.StreamBackups, "expiry")
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.NumRedelivered > 0 {
		t.Fatalf("%d messages redelivered", info.NumRedelivered)
	}
}
