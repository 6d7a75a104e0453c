// Package objstore is Strata's view of object storage: a flat namespace of
// immutable-by-convention objects addressed by slash-separated keys.
//
// Contract every backend honours (checked by objstoretest.Run):
//   - Put is atomic: a reader sees the whole new object or the old one/none,
//     never a prefix. Writing the same key twice is harmless (chunks are
//     content-addressed), which makes every caller idempotent under at-least-
//     once delivery.
//   - Get and Stat of an absent key return an error wrapping ErrNotFound.
//   - PutIfAbsent stores only when the key holds no object (S3's
//     If-None-Match: *) and says whether it did; an existing object is left
//     as it was. Callers may treat "not created" as "already stored" only
//     for content-addressed keys.
//   - Delete of an absent key succeeds.
//   - List visits keys under a prefix in lexical order.
//   - Backends do not retry; wrap them with Retry. Errors that retrying cannot
//     fix (ErrNotFound, ErrBadRange, ErrLocked, context cancellation) are not retried
//     by Retry.
package objstore

import (
	"context"
	"errors"
	"time"
)

// ErrNotFound is wrapped by errors for absent objects.
var ErrNotFound = errors.New("object not found")

// ErrBadRange is wrapped by errors for a range read that starts at or
// past the object's end (or asks for nothing): retrying cannot help.
var ErrBadRange = errors.New("range outside the object")

// Info describes one stored object.
type Info struct {
	Key      string
	Size     int64
	Modified time.Time
}

// Store is an object store. Implementations are safe for concurrent use,
// and never keep or change the data given to Put or PutIfAbsent after they
// return: callers reuse those buffers.
type Store interface {
	Put(ctx context.Context, key string, data []byte) error
	PutIfAbsent(ctx context.Context, key string, data []byte) (created bool, err error)
	Get(ctx context.Context, key string) ([]byte, error)
	// GetRange returns n bytes of the object from off, fewer when the
	// object ends sooner; off at or past the end, or n < 1, is an error
	// wrapping ErrBadRange.
	GetRange(ctx context.Context, key string, off, n int64) ([]byte, error)
	Stat(ctx context.Context, key string) (Info, error)
	Delete(ctx context.Context, key string) error
	List(ctx context.Context, prefix string, fn func(Info) error) error
	// String names the store for logs and error messages.
	String() string
}
