package objstore

import (
	"context"
	"errors"
	"time"
)

// Observer is told of every request a store answers: its operation (get,
// get_range, put, put_if_absent, stat, delete, list), how long it took
// and its error (nil when it succeeded). The metrics package counts them;
// the store knows nothing of metrics.
type Observer func(op string, took time.Duration, err error)

// Observed wraps a store and reports every request to an Observer. Under
// Retry, each attempt is one request.
type Observed struct {
	Store
	Observe Observer
}

// WithObserver wraps s so that obs sees each of its requests.
func WithObserver(s Store, obs Observer) *Observed { return &Observed{Store: s, Observe: obs} }

// Unwrap is the store observed (As).
func (o *Observed) Unwrap() Store { return o.Store }

func (o *Observed) String() string { return o.Store.String() }

func (o *Observed) done(op string, start time.Time, err error) {
	if errors.Is(err, ErrNotFound) {
		err = nil // an answer, not a failure: how presence is asked
	}
	o.Observe(op, time.Since(start), err)
}

func (o *Observed) Put(ctx context.Context, key string, data []byte) error {
	start := time.Now()
	err := o.Store.Put(ctx, key, data)
	o.done("put", start, err)
	return err
}

func (o *Observed) PutIfAbsent(ctx context.Context, key string, data []byte) (bool, error) {
	start := time.Now()
	created, err := o.Store.PutIfAbsent(ctx, key, data)
	o.done("put_if_absent", start, err)
	return created, err
}

func (o *Observed) Get(ctx context.Context, key string) ([]byte, error) {
	start := time.Now()
	b, err := o.Store.Get(ctx, key)
	o.done("get", start, err)
	return b, err
}

func (o *Observed) GetRange(ctx context.Context, key string, off, n int64) ([]byte, error) {
	start := time.Now()
	b, err := o.Store.GetRange(ctx, key, off, n)
	o.done("get_range", start, err)
	return b, err
}

func (o *Observed) Stat(ctx context.Context, key string) (Info, error) {
	start := time.Now()
	in, err := o.Store.Stat(ctx, key)
	o.done("stat", start, err)
	return in, err
}

func (o *Observed) Delete(ctx context.Context, key string) error {
	start := time.Now()
	err := o.Store.Delete(ctx, key)
	o.done("delete", start, err)
	return err
}

// List is one observation for the whole listing (its pages are the
// backend's business).
func (o *Observed) List(ctx context.Context, prefix string, fn func(Info) error) error {
	start := time.Now()
	err := o.Store.List(ctx, prefix, fn)
	o.done("list", start, err)
	return err
}
