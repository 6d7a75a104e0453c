package objstore_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/strata-backup/strata/internal/testserver"
	"github.com/strata-backup/strata/pkg/objstore"
)

// BenchmarkS3Requests (`make bench`): the per-request cost of the S3 client
// against a real versitygw, at the concurrency the services use (32): HEADs
// of absent keys (dedup's "missing?" for new chunks), PUTs and HEADs of
// 64 KiB objects. At small chunk sizes a backup is bound by requests, not
// bytes.
func BenchmarkS3Requests(b *testing.B) {
	srv := testserver.Versity(b)
	s, err := objstore.NewS3(context.Background(), objstore.S3Config{
		Endpoint: srv.Endpoint, Bucket: "bench", AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true,
	})
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 64<<10)
	rand.Read(data)
	parallel := func(b *testing.B, op func(i int) error) { parallelN(b, 32, op) }
	ctx := context.Background()
	b.Run("head-absent", func(b *testing.B) {
		parallel(b, func(i int) error {
			_, err := s.Stat(ctx, fmt.Sprintf("absent/%d", i))
			if errors.Is(err, objstore.ErrNotFound) {
				return nil
			}
			return fmt.Errorf("stat of an absent key: %v", err)
		})
	})
	b.Run("put-64KiB", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		parallel(b, func(i int) error { return s.Put(ctx, fmt.Sprintf("obj/%d", i), data) })
	})
	b.Run("head-present", func(b *testing.B) {
		parallel(b, func(i int) error {
			_, err := s.Stat(ctx, fmt.Sprintf("obj/%d", i%1000))
			return err
		})
	})
	// A restore's reads of a packed repository: ranges of up to 8 MiB
	// from packs of ~16 MiB, 8 at once.
	pack := make([]byte, 16<<20)
	rand.Read(pack)
	for i := 0; i < 8; i++ {
		if err := s.Put(ctx, fmt.Sprintf("pack/%d", i), pack); err != nil {
			b.Fatal(err)
		}
	}
	for _, n := range []int64{1 << 20, 4 << 20, 8 << 20} {
		b.Run(fmt.Sprintf("get-range-%dMiB", n>>20), func(b *testing.B) {
			b.SetBytes(n)
			parallelN(b, 8, func(i int) error {
				off := int64(i) % (16 << 20 / n) * n
				got, err := s.GetRange(ctx, fmt.Sprintf("pack/%d", i%8), off, n)
				if err == nil && int64(len(got)) != n {
					err = fmt.Errorf("range read %d bytes of %d", len(got), n)
				}
				return err
			})
		})
	}
}

// parallelN runs op for i in [0, b.N) on n goroutines.
func parallelN(b *testing.B, n int, op func(i int) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				if err := op(i); err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
}
