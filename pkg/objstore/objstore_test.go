package objstore_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/strata-backup/strata/internal/testserver"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/objstore/internal/objstoretest"
)

func TestConformanceDir(t *testing.T) {
	s, err := objstore.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	objstoretest.Run(t, s)
}

func TestConformanceMem(t *testing.T) { objstoretest.Run(t, objstore.NewMem()) }

// The retry wrapper over a store that fails every method at least once must
// still honour the whole contract, and every scripted fault must have fired.
func TestConformanceRetryOverFaults(t *testing.T) {
	faulty := objstore.NewFaulty(objstore.NewMem(),
		&objstore.Fault{Method: "Put", KeyPrefix: "t/obj/", Times: 2},
		&objstore.Fault{Method: "Get", KeyPrefix: "t/obj/"},
		&objstore.Fault{Method: "Stat", KeyPrefix: "t/obj/", Skip: 1},
		&objstore.Fault{Method: "PutIfAbsent", KeyPrefix: "t/once", Times: 2},
		&objstore.Fault{Method: "Delete", KeyPrefix: "t/del"},
		&objstore.Fault{Method: "List", KeyPrefix: "t/l/"},
	)
	r := &objstore.Retry{Store: faulty, Attempts: 4, Base: time.Millisecond, Max: 5 * time.Millisecond}
	objstoretest.Run(t, r)
	if err := faulty.Verify(); err != nil {
		t.Fatal(err)
	}
}

func TestRetryGivesUpAndKeepsNotFound(t *testing.T) {
	ctx := context.Background()
	faulty := objstore.NewFaulty(objstore.NewMem(), &objstore.Fault{Method: "Put", Times: 3})
	r := &objstore.Retry{Store: faulty, Attempts: 3, Base: time.Millisecond, Max: time.Millisecond}
	if err := r.Put(ctx, "k", []byte("v")); !errors.Is(err, objstore.ErrInjected) {
		t.Fatalf("want the injected error after 3 attempts, got %v", err)
	}
	if err := faulty.Verify(); err != nil {
		t.Fatal(err)
	}
	counting := objstore.NewFaulty(objstore.NewMem(), &objstore.Fault{Method: "Get", Err: objstore.ErrNotFound})
	r = &objstore.Retry{Store: counting, Attempts: 5, Base: time.Millisecond, Max: time.Millisecond}
	if _, err := r.Get(ctx, "nope"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("not found must pass through: %v", err)
	}
}

func TestFaultyVerifyNamesUnfiredFault(t *testing.T) {
	f := objstore.NewFaulty(objstore.NewMem(), &objstore.Fault{Method: "Delete", KeyPrefix: "never/"})
	if err := f.Verify(); err == nil || !strings.Contains(err.Error(), "never/") {
		t.Fatalf("Verify = %v, want it to name the unfired fault", err)
	}
}

func TestDirRejectsEscapingKeys(t *testing.T) {
	s, _ := objstore.NewDir(t.TempDir())
	for _, k := range []string{"../x", "/abs", "a/../../b"} {
		if err := s.Put(context.Background(), k, nil); err == nil {
			t.Errorf("Put(%q) accepted", k)
		}
	}
}

// The same suite against a real S3 server process (versitygw).
func TestConformanceS3Versity(t *testing.T) {
	srv := testserver.Versity(t)
	s, err := objstore.NewS3(context.Background(), objstore.S3Config{
		Endpoint: srv.Endpoint, Bucket: "conformance", Prefix: "pre/", AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	objstoretest.Run(t, objstore.WithRetry(s))
	signed, err := objstore.NewS3(context.Background(), objstore.S3Config{
		Endpoint: srv.Endpoint, Bucket: "conformance-signed", AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true, SignPayload: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	objstoretest.Run(t, signed)
	if _, err := objstore.NewS3(context.Background(), objstore.S3Config{
		Endpoint: srv.Endpoint, Bucket: "conformance", AccessKey: srv.AccessKey, SecretKey: "wrong", PathStyle: true,
	}); err == nil {
		t.Fatal("a wrong secret key must be refused")
	}
}
