package objstore

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/smithy-go"
)

// busyStore throttles (S3's SlowDown) whenever more than capacity
// requests are in flight.
type busyStore struct {
	Store
	capacity, inflight, peak atomic.Int32
	refused                  atomic.Int32
}

func (b *busyStore) Get(ctx context.Context, key string) ([]byte, error) {
	n := b.inflight.Add(1)
	defer b.inflight.Add(-1)
	for p := b.peak.Load(); n > p && !b.peak.CompareAndSwap(p, n); p = b.peak.Load() {
	}
	if n > b.capacity.Load() {
		b.refused.Add(1)
		return nil, &smithy.GenericAPIError{Code: "SlowDown", Message: "Please reduce your request rate."}
	}
	time.Sleep(2 * time.Millisecond)
	return []byte("x"), nil
}

// The adaptive limit: a store that throttles above 8 requests at once
// gets its requests cut to about that (every request still succeeds,
// through Retry), and the limit climbs back to the maximum once the store
// stops throttling.
func TestThrottleAdaptsToTheStore(t *testing.T) {
	busy := &busyStore{Store: NewMem()}
	busy.capacity.Store(8)
	th := NewThrottle(busy, ThrottleConfig{MaxConcurrency: 64})
	s := &Retry{Store: th, Attempts: 6, Base: time.Millisecond, Max: 20 * time.Millisecond}
	run := func() {
		var wg sync.WaitGroup
		var failed atomic.Int32
		for g := 0; g < 64; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 30; i++ {
					if _, err := s.Get(context.Background(), fmt.Sprint(g, i)); err != nil {
						failed.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		if n := failed.Load(); n != 0 {
			t.Fatalf("%d requests failed", n)
		}
	}
	run()
	first := th.Stats()["get"]
	if first.Throttled == 0 || first.Requests != 64*30+first.Throttled {
		t.Fatalf("stats %+v", first)
	}
	// Adapted: the next round is hardly throttled (the limit saws
	// around the store's 8, as TCP's window around a link's capacity).
	run()
	second := th.Stats()["get"]
	throttled := second.Throttled - first.Throttled
	t.Logf("first round %d throttled; second %d of %d; limit %d", first.Throttled, throttled, second.Requests-first.Requests, th.Limit())
	if l := th.Limit(); l >= 32 || throttled > (second.Requests-first.Requests)/10 {
		t.Fatalf("not adapted: limit %d, %d throttled in the second round", l, throttled)
	}
	busy.capacity.Store(1000)
	for i := 0; i < 20 && th.Limit() < 64; i++ {
		run()
	}
	if l := th.Limit(); l != 64 {
		t.Fatalf("limit %d after the store stopped throttling", l)
	}
}

// Fixed caps: requests per second and bytes per second.
func TestThrottleCaps(t *testing.T) {
	th := NewThrottle(NewMem(), ThrottleConfig{MaxRPS: 100})
	start := time.Now()
	for i := 0; i < 60; i++ {
		th.Put(context.Background(), fmt.Sprint(i), []byte("x"))
	}
	// 100/s with a burst of 10: 60 requests take about half a second.
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Fatalf("60 requests at 100/s took %v", d)
	}
	th = NewThrottle(NewMem(), ThrottleConfig{MaxBytesPerSec: 4 << 20})
	start = time.Now()
	for i := 0; i < 4; i++ {
		th.Put(context.Background(), fmt.Sprint(i), make([]byte, 2<<20))
	}
	if d := time.Since(start); d < time.Second {
		t.Fatalf("8 MiB at 4 MiB/s took %v", d)
	}
}
