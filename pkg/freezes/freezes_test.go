package freezes

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/strata-backup/strata/internal/svctest"
)

// A freeze left by a snapshotter that died (its record outlives ThawBy)
// is thawed by the watcher, through the source, and the record removed;
// one within its window is left alone; a journaled freeze that ended
// leaves no record.
func TestWatchThawsOverdueFreezes(t *testing.T) {
	ctx, rt := svctest.Runtime(t, "snapshotter", 64<<10)
	s, err := Open(ctx, rt.Bus.JS)
	if err != nil {
		t.Fatal(err)
	}
	ended := s.Journal("ended", "b0", "file:///x.img")
	if err := ended.Frozen(ctx, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	ended.Thawed(ctx)
	dead := s.Journal("dead", "b1", "libvirt+unix:///session/dead")
	if err := dead.Frozen(ctx, time.Now().Add(300*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	alive := s.Journal("alive", "b2", "libvirt+unix:///session/alive")
	if err := alive.Frozen(ctx, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if o, err := s.Overdue(ctx, time.Now()); err != nil || len(o) != 0 {
		t.Fatalf("overdue before any ThawBy: %+v %v", o, err)
	}
	var mu sync.Mutex
	var thawed []string
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go s.Watch(wctx, 50*time.Millisecond, func(_ context.Context, source string) error {
		mu.Lock()
		defer mu.Unlock()
		thawed = append(thawed, source)
		return nil
	}, slog.New(slog.DiscardHandler))
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(thawed)
		mu.Unlock()
		if n > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(thawed) != 1 || thawed[0] != "libvirt+unix:///session/dead" {
		t.Fatalf("thawed %v, want only the dead snapshotter's guest", thawed)
	}
	if o, _ := s.Overdue(ctx, time.Now().Add(2*time.Hour)); len(o) != 1 || o[0].VM != "alive" {
		t.Fatalf("records left: %+v (want only the live freeze)", o)
	}
}
