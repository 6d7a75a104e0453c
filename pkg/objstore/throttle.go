package objstore

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"golang.org/x/time/rate"
)

// IsThrottled reports whether err is a store asking the client to slow
// down: S3's 503 SlowDown, 429, and the throttling codes other
// S3-compatible services answer.
func IsThrottled(err error) bool {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode() {
		case "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
			"RequestThrottled", "TooManyRequestsException", "ServiceUnavailable", "503 SlowDown":
			return true
		}
	}
	var re *smithyhttp.ResponseError
	return errors.As(err, &re) && (re.HTTPStatusCode() == http.StatusServiceUnavailable || re.HTTPStatusCode() == http.StatusTooManyRequests)
}

// ThrottleConfig configures a Throttle.
type ThrottleConfig struct {
	// MaxConcurrency is the most requests in flight at once, and where
	// the adaptive limit starts (0: 64).
	MaxConcurrency int
	// MaxRPS caps requests per second (0: no cap).
	MaxRPS float64
	// MaxBytesPerSec caps the bytes sent and received per second (0: no
	// cap).
	MaxBytesPerSec int64
	Log            *slog.Logger
}

// Throttle wraps a store with adaptive concurrency: a throttling answer
// halves the number of requests it lets run at once (once per burst: an
// answer to a request admitted before the last cut does not cut again),
// every successful request
// raises it by 1/limit (about one more per round of requests) back up to
// MaxConcurrency — TCP's AIMD. Below one request at a time the same
// happens to a pause before each request (doubled by a throttling answer,
// shortened by 1/32 by a success): a store that throttles at 50 requests
// a second is throttled by a client that answers in milliseconds even one
// request at a time. Optional fixed caps on the request rate and
// bandwidth come on top, and it counts requests per kind. Restic, kopia
// and PBS retry a throttled request but keep the rate that caused it; a
// store that throttles at 50 requests a second otherwise sees every
// backup fail once its retries run out.
type Throttle struct {
	Store
	max   float64
	rps   *rate.Limiter
	bytes *rate.Limiter
	log   *slog.Logger

	mu       sync.Mutex
	limit    float64
	inflight int
	wake     chan struct{}
	epoch    int           // cuts so far
	pace     time.Duration // at a limit of one: the pause before each request
	stats    map[string]*OpStats
}

// OpStats counts the requests of one kind.
type OpStats struct {
	Requests, Throttled, Failed int64
}

// NewThrottle wraps s.
func NewThrottle(s Store, cfg ThrottleConfig) *Throttle {
	if cfg.MaxConcurrency <= 0 {
		cfg.MaxConcurrency = 64
	}
	t := &Throttle{Store: s, max: float64(cfg.MaxConcurrency), limit: float64(cfg.MaxConcurrency), log: cfg.Log,
		wake: make(chan struct{}), stats: map[string]*OpStats{}}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxRPS > 0 {
		t.rps = rate.NewLimiter(rate.Limit(cfg.MaxRPS), max(1, int(cfg.MaxRPS/10)))
	}
	if cfg.MaxBytesPerSec > 0 {
		t.bytes = rate.NewLimiter(rate.Limit(cfg.MaxBytesPerSec), int(max(cfg.MaxBytesPerSec/4, 1<<20)))
	}
	return t
}

func (t *Throttle) String() string { return t.Store.String() }

// Unwrap is the store underneath (As).
func (t *Throttle) Unwrap() Store { return t.Store }

// Limit is the current concurrency limit.
func (t *Throttle) Limit() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return int(t.limit)
}

// Stats returns the request counts per kind (get, put, head, …).
func (t *Throttle) Stats() map[string]OpStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]OpStats, len(t.stats))
	for k, v := range t.stats {
		out[k] = *v
	}
	return out
}

// Kinds lists the request kinds seen, sorted.
func (t *Throttle) Kinds() []string {
	st := t.Stats()
	out := make([]string, 0, len(st))
	for k := range st {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// stat is op's counters (t.mu held).
func (t *Throttle) stat(op string) *OpStats {
	st := t.stats[op]
	if st == nil {
		st = &OpStats{}
		t.stats[op] = st
	}
	return st
}

func (t *Throttle) acquire(ctx context.Context) (epoch int, err error) {
	if t.rps != nil {
		if err := t.rps.Wait(ctx); err != nil {
			return 0, err
		}
	}
	t.mu.Lock()
	pace := t.pace
	t.mu.Unlock()
	if pace > 0 {
		select {
		case <-time.After(pace):
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	for {
		t.mu.Lock()
		if t.inflight < max(1, int(t.limit)) {
			t.inflight++
			epoch := t.epoch
			t.mu.Unlock()
			return epoch, nil
		}
		ch := t.wake
		t.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

func (t *Throttle) release(op string, err error, epoch int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.inflight--
	st := t.stat(op)
	st.Requests++
	switch {
	case IsThrottled(err):
		st.Throttled++
		if epoch == t.epoch {
			t.epoch++
			if t.limit >= 2 {
				before := t.limit
				t.limit = max(1, t.limit/2)
				t.log.Warn("object store throttling: fewer requests at once", "from", int(before), "to", int(t.limit))
			} else {
				t.pace = min(time.Second, max(10*time.Millisecond, 2*t.pace))
				t.log.Warn("object store throttling: one request at a time, paced", "pause", t.pace)
			}
		}
	case err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, ErrBadRange):
		if t.pace > 0 {
			if t.pace -= t.pace / 32; t.pace < time.Millisecond {
				t.pace = 0
			}
			break
		}
		if t.limit < t.max {
			before := int(t.limit)
			t.limit = min(t.max, t.limit+1/t.limit)
			if int(t.limit) == int(t.max) && before < int(t.max) {
				t.log.Info("object store requests back to full concurrency", "limit", int(t.limit))
			}
		}
	default:
		st.Failed++
	}
	close(t.wake)
	t.wake = make(chan struct{})
}

func (t *Throttle) do(ctx context.Context, op string, n int, f func() error) error {
	if t.bytes != nil && n > 0 {
		if err := t.waitBytes(ctx, n); err != nil {
			return err
		}
	}
	epoch, err := t.acquire(ctx)
	if err != nil {
		return err
	}
	err = f()
	t.release(op, err, epoch)
	return err
}

func (t *Throttle) waitBytes(ctx context.Context, n int) error {
	for n > 0 {
		step := min(n, t.bytes.Burst())
		if err := t.bytes.WaitN(ctx, step); err != nil {
			return err
		}
		n -= step
	}
	return nil
}

func (t *Throttle) Put(ctx context.Context, key string, data []byte) error {
	return t.do(ctx, "put", len(data), func() error { return t.Store.Put(ctx, key, data) })
}

func (t *Throttle) PutIfAbsent(ctx context.Context, key string, data []byte) (created bool, err error) {
	err = t.do(ctx, "put", len(data), func() error { created, err = t.Store.PutIfAbsent(ctx, key, data); return err })
	return created, err
}

func (t *Throttle) Get(ctx context.Context, key string) (b []byte, err error) {
	err = t.do(ctx, "get", 0, func() error { b, err = t.Store.Get(ctx, key); return err })
	if err == nil && t.bytes != nil {
		err = t.waitBytes(ctx, len(b))
	}
	return b, err
}

func (t *Throttle) GetRange(ctx context.Context, key string, off, n int64) (b []byte, err error) {
	err = t.do(ctx, "get", 0, func() error { b, err = t.Store.GetRange(ctx, key, off, n); return err })
	if err == nil && t.bytes != nil {
		err = t.waitBytes(ctx, len(b))
	}
	return b, err
}

func (t *Throttle) Stat(ctx context.Context, key string) (in Info, err error) {
	err = t.do(ctx, "head", 0, func() error { in, err = t.Store.Stat(ctx, key); return err })
	return in, err
}

func (t *Throttle) Delete(ctx context.Context, key string) error {
	return t.do(ctx, "delete", 0, func() error { return t.Store.Delete(ctx, key) })
}

// List is counted, not admitted: its callback may itself make requests,
// which a held slot could starve (a limit cut to one). Listings are rare
// and paged by the store.
func (t *Throttle) List(ctx context.Context, prefix string, fn func(Info) error) error {
	err := t.Store.List(ctx, prefix, fn)
	t.mu.Lock()
	st := t.stat("list")
	st.Requests++
	if err != nil && !errors.Is(err, errCallerStopped) {
		st.Failed++
	}
	t.mu.Unlock()
	return err
}
