package objstore

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrLocked is wrapped by errors for objects that cannot be deleted yet:
// a version of the key is under Object Lock retention.
var ErrLocked = errors.New("object under retention")

// LockedError names the key and, when the store said, the date until
// which it is retained.
type LockedError struct {
	Key   string
	Until time.Time // zero: not known
}

func (e *LockedError) Error() string {
	if e.Until.IsZero() {
		return fmt.Sprintf("%s: %v", e.Key, ErrLocked)
	}
	return fmt.Sprintf("%s: %v until %s", e.Key, ErrLocked, e.Until.UTC().Format(time.RFC3339))
}

func (e *LockedError) Unwrap() error { return ErrLocked }

// Lock is how a store writes objects under S3 Object Lock.
type Lock struct {
	// Mode is GOVERNANCE or COMPLIANCE (S3's names; case is ignored).
	// Only compliance stops someone holding the bucket owner's keys:
	// governance retention can be bypassed by a principal with
	// s3:BypassGovernanceRetention.
	Mode string
	// Until is the retain-until date of the object key written at
	// written; zero leaves it unlocked. The content layer owns the rule
	// (which keys, how long, rounded to which generation).
	Until func(key string, written time.Time) time.Time
}

// Locker is a store that writes objects under Object Lock. Contract: Put
// and PutIfAbsent store an object retained until Lock.Until says; Delete
// removes every version of a key that is not under retention and returns
// a *LockedError when any version is (the object stays readable: nothing
// under retention is ever destroyed); Retain extends the retention of the
// key's original version (the first written: Strata never overwrites a
// key it locks, so a newer version is someone else's) to until, and
// leaves a later date as it is (a lock is never shortened); RetainedUntil
// reports that version's date (zero: not locked).
type Locker interface {
	Store
	Retain(ctx context.Context, key string, until time.Time) error
	RetainedUntil(ctx context.Context, key string) (time.Time, error)
}

// Version is one stored version of a key.
type Version struct {
	ID       string
	Size     int64
	Modified time.Time
}

// Versioned is a store that keeps the versions of each key (an S3 bucket
// with versioning, which Object Lock requires). Versions lists a key's
// versions newest first, delete markers left out; GetVersion and
// GetVersionRange read one like Get and GetRange.
type Versioned interface {
	// ListAll is List over every key that has a version, the ones a
	// delete marker hides included (Info describes the newest version).
	ListAll(ctx context.Context, prefix string, fn func(Info) error) error
	Versions(ctx context.Context, key string) ([]Version, error)
	GetVersion(ctx context.Context, key, id string) ([]byte, error)
	GetVersionRange(ctx context.Context, key, id string, off, n int64) ([]byte, error)
}

// Unwrapper is a wrapper around a store (Retry, Faulty): As looks through
// it for what the store underneath can do.
type Unwrapper interface{ Unwrap() Store }

// As finds a T in s or the stores it wraps.
func As[T any](s Store) (T, bool) {
	for s != nil {
		if t, ok := s.(T); ok {
			return t, true
		}
		u, ok := s.(Unwrapper)
		if !ok {
			break
		}
		s = u.Unwrap()
	}
	var zero T
	return zero, false
}

// GetChecked reads key and hands it to check; when the object is gone or
// fails check and the store keeps versions, the older versions are tried
// newest first and the first that passes is returned. That is how a
// locked repository reads through what someone with its keys did to it:
// a delete marker hides an object without destroying it, and a PUT over
// a key adds a version above the one Strata wrote. The error is the
// current version's when no version passes.
func GetChecked(ctx context.Context, s Store, key string, check func([]byte) error) ([]byte, error) {
	b, err := s.Get(ctx, key)
	read := err == nil
	if read {
		if err = check(b); err == nil {
			return b, nil
		}
	}
	return olderVersion(ctx, s, key, err, read, check, func(v Versioned, id string) ([]byte, error) {
		return v.GetVersion(ctx, key, id)
	})
}

// GetRangeChecked is GetChecked for a range.
func GetRangeChecked(ctx context.Context, s Store, key string, off, n int64, check func([]byte) error) ([]byte, error) {
	b, err := s.GetRange(ctx, key, off, n)
	read := err == nil
	if read {
		if err = check(b); err == nil {
			return b, nil
		}
	}
	return olderVersion(ctx, s, key, err, read, check, func(v Versioned, id string) ([]byte, error) {
		return v.GetVersionRange(ctx, key, id, off, n)
	})
}

// olderVersion tries the versions of key after the current one failed
// with cur (read: the current version was read and failed check, so the
// newest version is that one, not worth a second read).
func olderVersion(ctx context.Context, s Store, key string, cur error, read bool, check func([]byte) error, get func(Versioned, string) ([]byte, error)) ([]byte, error) {
	v, ok := As[Versioned](s)
	if !ok || ctx.Err() != nil {
		return nil, cur
	}
	versions, err := v.Versions(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("%w (listing its versions: %v)", cur, err)
	}
	for i, ver := range versions {
		if i == 0 && read {
			continue
		}
		if b, err := get(v, ver.ID); err == nil && check(b) == nil {
			return b, nil
		}
	}
	return nil, cur
}

// ListAll lists the keys under prefix, those hidden by a delete marker
// included when the store keeps versions: the record copies of a locked
// repository are found after someone deleted every object "in" it.
func ListAll(ctx context.Context, s Store, prefix string, fn func(Info) error) error {
	if v, ok := As[Versioned](s); ok {
		return v.ListAll(ctx, prefix, fn)
	}
	return s.List(ctx, prefix, fn)
}
