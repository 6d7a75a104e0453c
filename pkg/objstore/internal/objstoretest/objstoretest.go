// Package objstoretest is the one conformance suite every objstore backend
// (and wrapper) must pass, restic-style.
package objstoretest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/strata-backup/strata/pkg/objstore"
)

// Run checks the Store contract. The store must be empty under prefix "t/".
func Run(t *testing.T, s objstore.Store) {
	ctx := context.Background()
	t.Run("GetAbsent", func(t *testing.T) {
		if _, err := s.Get(ctx, "t/absent"); !errors.Is(err, objstore.ErrNotFound) {
			t.Fatalf("Get absent: %v, want ErrNotFound", err)
		}
		if _, err := s.Stat(ctx, "t/absent"); !errors.Is(err, objstore.ErrNotFound) {
			t.Fatalf("Stat absent: %v, want ErrNotFound", err)
		}
	})
	t.Run("PutGetStat", func(t *testing.T) {
		for _, size := range []int{0, 1, 4096, 1<<20 + 3} {
			data := make([]byte, size)
			rand.Read(data)
			key := fmt.Sprintf("t/obj/%d", size)
			if err := s.Put(ctx, key, data); err != nil {
				t.Fatalf("Put %d bytes: %v", size, err)
			}
			got, err := s.Get(ctx, key)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("Get %d bytes: err %v, equal %v", size, err, bytes.Equal(got, data))
			}
			in, err := s.Stat(ctx, key)
			if err != nil || in.Size != int64(size) {
				t.Fatalf("Stat: %+v %v, want size %d", in, err, size)
			}
		}
	})
	t.Run("GetRange", func(t *testing.T) {
		data := make([]byte, 10000)
		rand.Read(data)
		if err := s.Put(ctx, "t/range", data); err != nil {
			t.Fatal(err)
		}
		for _, r := range [][2]int64{{0, 1}, {0, 10000}, {123, 456}, {9990, 10}, {9990, 100}, {0, 1 << 20}} {
			got, err := s.GetRange(ctx, "t/range", r[0], r[1])
			want := data[r[0]:min(r[0]+r[1], int64(len(data)))]
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("GetRange %d+%d: %d bytes, err %v; want %d bytes", r[0], r[1], len(got), err, len(want))
			}
		}
		if _, err := s.GetRange(ctx, "t/range", 10000, 1); !errors.Is(err, objstore.ErrBadRange) {
			t.Fatalf("GetRange past the end: %v, want ErrBadRange", err)
		}
		if _, err := s.GetRange(ctx, "t/absent", 0, 1); !errors.Is(err, objstore.ErrNotFound) {
			t.Fatalf("GetRange absent: %v, want ErrNotFound", err)
		}
	})
	t.Run("OverwriteIsAtomicReplace", func(t *testing.T) {
		if err := s.Put(ctx, "t/over", []byte("first version")); err != nil {
			t.Fatal(err)
		}
		if err := s.Put(ctx, "t/over", []byte("2nd")); err != nil {
			t.Fatal(err)
		}
		got, err := s.Get(ctx, "t/over")
		if err != nil || string(got) != "2nd" {
			t.Fatalf("after overwrite: %q %v", got, err)
		}
	})
	t.Run("ConcurrentSameKey", func(t *testing.T) {
		data := bytes.Repeat([]byte("chunk"), 10000)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() { defer wg.Done(); errs <- s.Put(ctx, "t/same", data) }()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if got, err := s.Get(ctx, "t/same"); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("concurrent puts of one key: %v", err)
		}
	})
	t.Run("PutIfAbsent", func(t *testing.T) {
		created, err := s.PutIfAbsent(ctx, "t/once", []byte("first"))
		if err != nil || !created {
			t.Fatalf("PutIfAbsent of an absent key: created %v, %v", created, err)
		}
		created, err = s.PutIfAbsent(ctx, "t/once", []byte("second"))
		if err != nil || created {
			t.Fatalf("PutIfAbsent of a present key: created %v, %v", created, err)
		}
		if got, err := s.Get(ctx, "t/once"); err != nil || string(got) != "first" {
			t.Fatalf("PutIfAbsent replaced the object: %q %v", got, err)
		}
		// Racing writers of one key: it ends up stored once, whole.
		data := bytes.Repeat([]byte("chunk"), 10000)
		var wg sync.WaitGroup
		var mu sync.Mutex
		creators := 0
		errs := make(chan error, 8)
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := s.PutIfAbsent(ctx, "t/race", data)
				if c {
					mu.Lock()
					creators++
					mu.Unlock()
				}
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if creators == 0 {
			t.Fatal("no racing PutIfAbsent created the object")
		}
		if got, err := s.Get(ctx, "t/race"); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("racing PutIfAbsent: %v", err)
		}
	})
	t.Run("ListOrderedUnderPrefix", func(t *testing.T) {
		keys := []string{"t/l/b", "t/l/a/2", "t/l/a/1", "t/lx"}
		for _, k := range keys {
			if err := s.Put(ctx, k, []byte(k)); err != nil {
				t.Fatal(err)
			}
		}
		var got []string
		if err := s.List(ctx, "t/l/", func(in objstore.Info) error { got = append(got, in.Key); return nil }); err != nil {
			t.Fatal(err)
		}
		want := []string{"t/l/a/1", "t/l/a/2", "t/l/b"}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("List = %v, want %v", got, want)
		}
		stop := errors.New("stop")
		n := 0
		if err := s.List(ctx, "t/l/", func(objstore.Info) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
			t.Fatalf("List must stop at the callback's error: %v after %d", err, n)
		}
	})
	t.Run("DeleteIdempotent", func(t *testing.T) {
		if err := s.Put(ctx, "t/del", []byte("x")); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			err := s.Delete(ctx, "t/del")
			// A store writing under Object Lock refuses while the object
			// is retained — the object stays readable — and deletes it
			// once the retention has passed.
			var le *objstore.LockedError
			if errors.As(err, &le) && i == 0 {
				if _, gerr := s.Get(ctx, "t/del"); gerr != nil {
					t.Fatalf("a refused delete lost the object: %v", gerr)
				}
				if le.Until.IsZero() || time.Until(le.Until) > time.Minute {
					t.Fatalf("locked until %v: the suite needs a store locking for seconds", le.Until)
				}
				time.Sleep(time.Until(le.Until) + time.Second)
				err = s.Delete(ctx, "t/del")
			}
			if err != nil {
				t.Fatalf("Delete #%d: %v", i+1, err)
			}
		}
		if _, err := s.Get(ctx, "t/del"); !errors.Is(err, objstore.ErrNotFound) {
			t.Fatalf("deleted object still readable: %v", err)
		}
	})
}
