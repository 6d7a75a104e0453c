package repo

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/objstore"
)

// lockingMem is an in-memory Locker: retain-until dates per key, as the
// store's Lock sets them on write and Retain extends them (never shorter).
type lockingMem struct {
	*objstore.Mem
	lock    *objstore.Lock
	mu      sync.Mutex
	until   map[string]time.Time
	retains int // extension requests
	asks    int // retention queries
}

func newLockingMem(p *LockPolicy) *lockingMem {
	return &lockingMem{Mem: objstore.NewMem(), lock: p.StoreLock(), until: map[string]time.Time{}}
}

func (l *lockingMem) Put(ctx context.Context, key string, data []byte) error {
	l.mu.Lock()
	l.until[key] = l.lock.Until(key, time.Now())
	l.mu.Unlock()
	return l.Mem.Put(ctx, key, data)
}

func (l *lockingMem) PutIfAbsent(ctx context.Context, key string, data []byte) (bool, error) {
	created, err := l.Mem.PutIfAbsent(ctx, key, data)
	if created {
		l.mu.Lock()
		l.until[key] = l.lock.Until(key, time.Now())
		l.mu.Unlock()
	}
	return created, err
}

func (l *lockingMem) Retain(_ context.Context, key string, until time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.retains++
	if l.until[key].Before(until) {
		l.until[key] = until
	}
	return nil
}

func (l *lockingMem) RetainedUntil(ctx context.Context, key string) (time.Time, error) {
	if _, err := l.Mem.Stat(ctx, key); err != nil {
		return time.Time{}, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.asks++
	return l.until[key], nil
}

// Dates come in generations: whatever is needed until t is retained to
// the end of t's step plus one, so it covers t and every later need up to
// a step more.
func TestLockTargetGenerations(t *testing.T) {
	p, err := NewLockPolicy("COMPLIANCE", 30*24*time.Hour, 0)
	if err != nil || p.Mode != "compliance" || p.Step != DefaultLockStep {
		t.Fatalf("policy %+v %v", p, err)
	}
	short, _ := NewLockPolicy("governance", 12*time.Second, 0)
	if short.Step != 4*time.Second {
		t.Fatalf("a short period's step: %v, want a third of it", short.Step)
	}
	if _, err := NewLockPolicy("legal-hold", time.Hour, 0); err == nil {
		t.Fatal("an unknown mode was accepted")
	}
	base := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	for _, d := range []time.Duration{0, time.Second, 3 * 24 * time.Hour, 9*24*time.Hour + 23*time.Hour} {
		needed := base.Add(d)
		got := p.Target(needed)
		if !got.After(needed.Add(p.Step-time.Nanosecond)) || got.After(needed.Add(2*p.Step)) {
			t.Errorf("Target(%v) = %v: want within (needed+step, needed+2 steps]", needed, got)
		}
		// Every need within the next step is covered by the same date.
		if p.Target(needed.Add(p.Step - time.Second)).Before(got) {
			t.Errorf("Target is not monotonic at %v", needed)
		}
		if got.Sub(time.Unix(0, 0))%p.Step != 0 {
			t.Errorf("Target(%v) = %v is not on a generation boundary", needed, got)
		}
	}
}

// Cover locks what a backup needs at the cost of its generation: packs
// made recently enough are covered by the date they were written with (no
// request); an older one is extended once, and a second backup in the
// same generation asks nothing at all. The config is covered too.
func TestCoverExtendsOncePerGeneration(t *testing.T) {
	ctx := context.Background()
	p, _ := NewLockPolicy("compliance", time.Hour, 10*time.Minute)
	store := newLockingMem(p)
	r, err := OpenWith(ctx, store, Options{ChunkSize: 64 << 10, Packs: true, Lock: p})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Locked() || r.Config.Lock.Period != time.Hour {
		t.Fatalf("config %+v", r.Config)
	}
	// Two packs: one made now, one a day ago (its lock long passed).
	pack := func(made time.Time) chunk.PackID {
		id := uuid.Must(uuid.NewV7())
		ms := made.UnixMilli()
		for i := 0; i < 6; i++ {
			id[i] = byte(ms >> (40 - 8*i))
		}
		p := chunk.PackID(id)
		if err := store.Mem.Put(ctx, PackKey(p), []byte("pack")); err != nil {
			t.Fatal(err)
		}
		store.until[PackKey(p)] = r.Config.Lock.LockedUntil(made)
		return p
	}
	fresh, old := pack(time.Now()), pack(time.Now().Add(-24*time.Hour))
	ids := []chunk.ID{chunk.Hash([]byte("a")), chunk.Hash([]byte("b")), chunk.Zero}
	m, err := manifest.FromIDs("b", 0, 64<<10, 3*64<<10, ids, []chunk.Loc{{Pack: fresh, Off: 0, Len: 10}, {Pack: old, Off: 0, Len: 10}, {}})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	st, err := r.Cover(ctx, now, m)
	if err != nil {
		t.Fatal(err)
	}
	if st.Objects != 2 || st.Extended != 1 { // the config and the old pack; the fresh pack needs nothing
		t.Fatalf("first cover: %+v", st)
	}
	if u := store.until[PackKey(old)]; u.Before(p.Needed(now)) {
		t.Fatalf("old pack retained until %v, the backup needs %v", u, p.Needed(now))
	}
	if store.until[configKey].Before(p.Needed(now)) {
		t.Fatal("the config is not covered")
	}
	asks, retains := store.asks, store.retains
	if _, err := r.Cover(ctx, now.Add(time.Minute), m); err != nil {
		t.Fatal(err)
	}
	if store.asks != asks || store.retains != retains {
		t.Fatalf("a second backup in the same generation made %d queries and %d extensions", store.asks-asks, store.retains-retains)
	}
	// A pack that is gone cannot be covered: the commit must not happen.
	store.Mem.Delete(ctx, PackKey(old))
	r2, _ := OpenWith(ctx, store, Options{ChunkSize: 64 << 10, Lock: p})
	if _, err := r2.Cover(ctx, now.Add(2*time.Hour), m); err == nil {
		t.Fatal("cover of a backup whose pack is gone succeeded")
	}
	// Unlocked repositories cover nothing and ask nothing.
	plain, _ := OpenWith(ctx, objstore.NewMem(), Options{ChunkSize: 64 << 10})
	if st, err := plain.Cover(ctx, now, m); err != nil || st.Objects != 0 {
		t.Fatalf("cover in an unlocked repository: %+v %v", st, err)
	}
}

// A repository is locked at creation or never; a locked one is not opened
// for writing without the lock configured.
func TestLockIsChosenAtCreation(t *testing.T) {
	ctx := context.Background()
	p, _ := NewLockPolicy("compliance", time.Hour, 0)
	plainStore := objstore.NewMem()
	if _, err := OpenWith(ctx, plainStore, Options{ChunkSize: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenWith(ctx, plainStore, Options{ChunkSize: 64 << 10, Lock: p}); err == nil {
		t.Fatal("locking an existing unlocked repository was accepted")
	}
	locked := newLockingMem(p)
	if _, err := OpenWith(ctx, locked, Options{ChunkSize: 64 << 10, Lock: p}); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenWith(ctx, locked, Options{ChunkSize: 64 << 10}); err == nil {
		t.Fatal("a locked repository was opened for writing without its lock")
	}
	if _, err := OpenWith(ctx, locked, Options{ChunkSize: 64 << 10, Existing: true}); err != nil {
		t.Fatalf("a reader needs no lock: %v", err)
	}
}
