package dedup

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/internal/svctest"
)

// testGC is a collection's shared state as the tests drive it: the guard's
// side (gcState) and the collector's.
type testGC interface {
	gcState
	Take(ctx context.Context, l contracts.GCLock, stale time.Duration) (uint64, error)
	Claim(ctx context.Context, gcID, unit string) (bool, error)
	Deleted(ctx context.Context, gcID, unit string) error
	Release(ctx context.Context) error
}

// memGC is gclock.GC in memory: the lock with the sequence of its changes,
// and the create-only holds.
type memGC struct {
	mu    sync.Mutex
	seq   uint64
	lock  *contracts.GCLock
	holds map[string]string
}

func (m *memGC) Take(_ context.Context, l contracts.GCLock, _ time.Duration) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lock != nil {
		return 0, fmt.Errorf("a garbage collection is already running")
	}
	m.seq++
	m.lock = &l
	return m.seq, nil
}

func (m *memGC) Release(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seq++
	m.lock = nil
	return nil
}

func (m *memGC) Current(context.Context) (uint64, *contracts.GCLock, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lock == nil {
		return m.seq, nil, nil
	}
	l := *m.lock
	return m.seq, &l, nil
}

func (m *memGC) create(key, state string) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.holds == nil {
		m.holds = map[string]string{}
	}
	if old, ok := m.holds[key]; ok {
		return old, false
	}
	m.holds[key] = state
	return state, true
}

func (m *memGC) Hold(ctx context.Context, gcID, unit string) (bool, error) {
	key := contracts.GCHoldKey(gcID, unit)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		state, _ := m.create(key, contracts.GCHeld)
		switch state {
		case contracts.GCHeld:
			return true, nil
		case contracts.GCDeleted:
			return false, nil
		}
		if err := ctx.Err(); err != nil {
			return false, err
		}
	}
	return false, fmt.Errorf("%s is still being deleted", unit)
}

func (m *memGC) Claim(_ context.Context, gcID, unit string) (bool, error) {
	_, created := m.create(contracts.GCHoldKey(gcID, unit), contracts.GCDeleting)
	return created, nil
}

func (m *memGC) Deleted(_ context.Context, gcID, unit string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.holds[contracts.GCHoldKey(gcID, unit)] = contracts.GCDeleted
	return nil
}

func (m *memGC) state(gcID, unit string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.holds[contracts.GCHoldKey(gcID, unit)]
}

// eachGC runs f on the shared state in memory (no NATS: the unit test of
// dedup's answers) and on a real nats-server's buckets (the same protocol
// through gclock).
func eachGC(t *testing.T, f func(t *testing.T, ctx context.Context, gc testGC)) {
	t.Run("memory", func(t *testing.T) { f(t, context.Background(), &memGC{}) })
	t.Run("nats", func(t *testing.T) {
		ctx, rt := svctest.Runtime(t, "dedup", 64<<10)
		f(t, ctx, rt.GC)
	})
}
