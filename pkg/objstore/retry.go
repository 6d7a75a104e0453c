package objstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Retry wraps a store and retries failed operations with exponential backoff
// and jitter. Safe because every operation is idempotent (see Store).
// ErrNotFound, ErrBadRange, ErrLocked and context errors are returned at
// once.
type Retry struct {
	Store
	Attempts int           // total attempts, ≥1
	Base     time.Duration // first backoff
	Max      time.Duration // backoff cap
}

// WithRetry wraps s with sane defaults for a network store.
func WithRetry(s Store) *Retry {
	return &Retry{Store: s, Attempts: 6, Base: 100 * time.Millisecond, Max: 5 * time.Second}
}

func (r *Retry) String() string { return r.Store.String() }

// throttledAttempts bounds the retries of a request the store throttled:
// more than other failures get (a throttling store is working, only
// busy, and the Throttle underneath slows the client down), ~2.5 min.
const throttledAttempts = 30

func (r *Retry) do(ctx context.Context, op string, f func() error) error {
	var err error
	backoff := r.Base
	throttled := 0
	for attempt := 1; ; attempt++ {
		err = f()
		if IsThrottled(err) && throttled < throttledAttempts {
			throttled++
			attempt-- // does not use up the attempts other failures get
		}
		if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, ErrBadRange) || errors.Is(err, ErrLocked) || errors.Is(err, errCallerStopped) || ctx.Err() != nil || attempt >= r.Attempts {
			break
		}
		sleep := backoff/2 + time.Duration(rand.Int64N(int64(backoff/2)+1))
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (after %v)", op, ctx.Err(), err)
		case <-time.After(sleep):
		}
		backoff = min(2*backoff, r.Max)
	}
	return err
}

func (r *Retry) Put(ctx context.Context, key string, data []byte) error {
	return r.do(ctx, "put "+key, func() error { return r.Store.Put(ctx, key, data) })
}

// PutIfAbsent retried after a lost reply finds its own object: "not
// created", which for a content-addressed key means "stored".
func (r *Retry) PutIfAbsent(ctx context.Context, key string, data []byte) (created bool, err error) {
	err = r.do(ctx, "put "+key, func() error { created, err = r.Store.PutIfAbsent(ctx, key, data); return err })
	return created, err
}

func (r *Retry) Get(ctx context.Context, key string) (b []byte, err error) {
	err = r.do(ctx, "get "+key, func() error { b, err = r.Store.Get(ctx, key); return err })
	return b, err
}

func (r *Retry) GetRange(ctx context.Context, key string, off, n int64) (b []byte, err error) {
	err = r.do(ctx, "get "+key, func() error { b, err = r.Store.GetRange(ctx, key, off, n); return err })
	return b, err
}

func (r *Retry) Stat(ctx context.Context, key string) (in Info, err error) {
	err = r.do(ctx, "stat "+key, func() error { in, err = r.Store.Stat(ctx, key); return err })
	return in, err
}

func (r *Retry) Delete(ctx context.Context, key string) error {
	return r.do(ctx, "delete "+key, func() error { return r.Store.Delete(ctx, key) })
}

// errCallerStopped marks a listing ended by the caller's callback: not a
// store failure, so never retried.
var errCallerStopped = errors.New("listing stopped by caller")

// List restarts the listing on failure, skipping keys already visited, so
// fn sees each key once.
func (r *Retry) List(ctx context.Context, prefix string, fn func(Info) error) error {
	last := ""
	var fnErr error
	err := r.do(ctx, "list "+prefix, func() error {
		return r.Store.List(ctx, prefix, func(in Info) error {
			if last != "" && in.Key <= last {
				return nil
			}
			if err := fn(in); err != nil {
				fnErr = err
				return errCallerStopped
			}
			last = in.Key
			return nil
		})
	})
	if fnErr != nil {
		return fnErr
	}
	return err
}

// Unwrap is the store retried: what it can do besides Store (see As).
func (r *Retry) Unwrap() Store { return r.Store }
