package objstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
)

// Faulty wraps a store and injects scripted faults, kopia-style: each Fault
// fires on the Nth matching call of one method and is then spent. Verify
// reports faults that never fired, so a test cannot silently stop
// exercising the path it was written for.
type Faulty struct {
	Store
	mu     sync.Mutex
	faults []*Fault
}

// Fault is one scripted failure.
type Fault struct {
	Method    string // "Put", "PutIfAbsent", "Get", "Stat", "Delete", "List"
	KeyPrefix string // only calls on keys (or list prefixes) with this prefix
	Skip      int    // matching calls to let through first
	Times     int    // how many calls fail (default 1)
	Err       error  // error to return (default ErrInjected)
	Corrupt   bool   // Get only: return the object with one bit flipped instead of an error
	fired     int
}

// ErrInjected is the default injected error.
var ErrInjected = errors.New("injected fault")

func NewFaulty(s Store, faults ...*Fault) *Faulty {
	for _, f := range faults {
		if f.Times == 0 {
			f.Times = 1
		}
		if f.Err == nil {
			f.Err = ErrInjected
		}
	}
	return &Faulty{Store: s, faults: faults}
}

func (f *Faulty) String() string { return "faulty(" + f.Store.String() + ")" }

func (f *Faulty) next(method, key string) *Fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ft := range f.faults {
		if ft.Method != method || !strings.HasPrefix(key, ft.KeyPrefix) || ft.fired >= ft.Times {
			continue
		}
		if ft.Skip > 0 {
			ft.Skip--
			continue
		}
		ft.fired++
		return ft
	}
	return nil
}

// Verify returns an error naming every fault that did not fire fully.
func (f *Faulty) Verify() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	for _, ft := range f.faults {
		if ft.fired < ft.Times {
			errs = append(errs, fmt.Errorf("fault %s %q fired %d of %d times", ft.Method, ft.KeyPrefix, ft.fired, ft.Times))
		}
	}
	return errors.Join(errs...)
}

func (f *Faulty) Put(ctx context.Context, key string, data []byte) error {
	if ft := f.next("Put", key); ft != nil {
		return fmt.Errorf("put %s: %w", key, ft.Err)
	}
	return f.Store.Put(ctx, key, data)
}

func (f *Faulty) PutIfAbsent(ctx context.Context, key string, data []byte) (bool, error) {
	if ft := f.next("PutIfAbsent", key); ft != nil {
		return false, fmt.Errorf("put %s: %w", key, ft.Err)
	}
	return f.Store.PutIfAbsent(ctx, key, data)
}

func (f *Faulty) Get(ctx context.Context, key string) ([]byte, error) {
	if ft := f.next("Get", key); ft != nil {
		if ft.Corrupt {
			b, err := f.Store.Get(ctx, key)
			if err == nil && len(b) > 0 {
				b[len(b)/2] ^= 0x10
			}
			return b, err
		}
		return nil, fmt.Errorf("get %s: %w", key, ft.Err)
	}
	return f.Store.Get(ctx, key)
}

func (f *Faulty) GetRange(ctx context.Context, key string, off, n int64) ([]byte, error) {
	if ft := f.next("Get", key); ft != nil {
		return nil, fmt.Errorf("get %s: %w", key, ft.Err)
	}
	return f.Store.GetRange(ctx, key, off, n)
}

func (f *Faulty) Stat(ctx context.Context, key string) (Info, error) {
	if ft := f.next("Stat", key); ft != nil {
		return Info{}, fmt.Errorf("stat %s: %w", key, ft.Err)
	}
	return f.Store.Stat(ctx, key)
}

func (f *Faulty) Delete(ctx context.Context, key string) error {
	if ft := f.next("Delete", key); ft != nil {
		return fmt.Errorf("delete %s: %w", key, ft.Err)
	}
	return f.Store.Delete(ctx, key)
}

func (f *Faulty) List(ctx context.Context, prefix string, fn func(Info) error) error {
	if ft := f.next("List", prefix); ft != nil {
		return fmt.Errorf("list %s: %w", prefix, ft.Err)
	}
	return f.Store.List(ctx, prefix, fn)
}

// Unwrap is the store faults are injected into (see As).
func (f *Faulty) Unwrap() Store { return f.Store }
