package transfer

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-backup/strata/pkg/source"
)

// The pool never holds more than perDisk connections to one disk, reuses
// returned ones, and replaces a failed one.
func TestDiskPoolCapsConnectionsPerDisk(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.img")
	os.WriteFile(img, make([]byte, 1<<20), 0o644)
	src := "file://" + img
	p := newDiskPool(context.Background(), &source.Opener{}, 2)
	var inUse, peak atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := p.get(context.Background(), "b1", src)
			if err != nil {
				t.Error(err)
				return
			}
			n := inUse.Add(1)
			for {
				old := peak.Load()
				if n <= old || peak.CompareAndSwap(old, n) {
					break
				}
			}
			time.Sleep(20 * time.Millisecond)
			inUse.Add(-1)
			p.put("b1", src, d, i%3 != 0) // some fail and are replaced
		}()
	}
	wg.Wait()
	if peak.Load() > 2 {
		t.Fatalf("%d connections to one disk at once, cap 2", peak.Load())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.open[poolKey{"b1", src}] > 2 || len(p.idle[poolKey{"b1", src}]) > 2 {
		t.Fatalf("open %d, idle %d", p.open[poolKey{"b1", src}], len(p.idle[poolKey{"b1", src}]))
	}
}

// A caller waiting for a connection stops waiting when its context ends
// (a segment abandoned at shutdown must not hang on a full pool).
func TestDiskPoolWaitEndsWithContext(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.img")
	os.WriteFile(img, make([]byte, 1<<20), 0o644)
	src := "file://" + img
	p := newDiskPool(context.Background(), &source.Opener{}, 1)
	held, err := p.get(context.Background(), "b1", src)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := p.get(ctx, "b1", src); err != context.DeadlineExceeded {
		t.Fatalf("get on a full pool with an ending context: %v", err)
	}
	p.put("b1", src, held, true)
	again, err := p.get(context.Background(), "b1", src)
	if err != nil || again != held {
		t.Fatalf("returned disk not reused: %v", err)
	}
}
