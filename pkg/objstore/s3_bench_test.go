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
	parallel := func(b *testing.B, op func(i int) error) {
		var next atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, 32)
		for w := 0; w < 32; w++ {
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
}
