package objstore_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/strata-backup/strata/internal/testserver"
	. "github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/objstore/internal/objstoretest"
)

// A store writing under Object Lock on a real lock-capable server
// (versitygw with versioning): the conformance suite holds for unlocked
// keys, and for locked ones nothing the store's own credentials can do
// through the S3 API destroys the version Strata wrote or shortens its
// retention, while GetChecked reads through delete markers and garbage
// written over the key.
func TestS3ObjectLock(t *testing.T) {
	srv := testserver.VersityVersioned(t)
	ctx := context.Background()
	const hold = 4 * time.Second
	lock := &Lock{Mode: "compliance", Until: func(key string, w time.Time) time.Time {
		if strings.HasPrefix(key, "locked/") {
			return w.Add(hold)
		}
		return time.Time{}
	}}
	cfg := S3Config{Endpoint: srv.Endpoint, Bucket: "locked", AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true, Lock: lock}
	s, err := NewS3(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	objstoretest.Run(t, WithRetry(s))
	// The whole suite again with every object it writes locked (for 2 s).
	all, err := NewS3(ctx, S3Config{Endpoint: srv.Endpoint, Bucket: "all-locked", AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true,
		Lock: &Lock{Mode: "compliance", Until: func(_ string, w time.Time) time.Time { return w.Add(2 * time.Second) }}})
	if err != nil {
		t.Fatal(err)
	}
	objstoretest.Run(t, WithRetry(all))

	// A bucket made without Object Lock is refused, clearly.
	if _, err := NewS3(ctx, S3Config{Endpoint: srv.Endpoint, Bucket: "plain", AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true}); err != nil {
		t.Fatal(err)
	}
	cfg2 := cfg
	cfg2.Bucket = "plain"
	if _, err := NewS3(ctx, cfg2); err == nil || !strings.Contains(err.Error(), "Object Lock") {
		t.Fatalf("a bucket without Object Lock: %v, want a refusal naming Object Lock", err)
	}

	// The attacker: the same keys, straight to the S3 API.
	raw := s3.New(s3.Options{Region: "us-east-1", BaseEndpoint: aws.String(srv.Endpoint), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(srv.AccessKey, srv.SecretKey, "")})

	data := []byte("the bytes Strata wrote")
	check := func(b []byte) error {
		if !bytes.Equal(b, data) {
			return errors.New("not ours")
		}
		return nil
	}
	if err := s.Put(ctx, "locked/a", data); err != nil {
		t.Fatal(err)
	}
	until, err := s.RetainedUntil(ctx, "locked/a")
	if err != nil || until.Before(time.Now().Add(hold-2*time.Second)) {
		t.Fatalf("retained until %v (%v), want about now+%v", until, err, hold)
	}
	var le *LockedError
	if err := s.Delete(ctx, "locked/a"); !errors.As(err, &le) || !errors.Is(err, ErrLocked) || le.Until.Before(until) {
		t.Fatalf("Delete of a locked object: %v, want a LockedError until %v", err, until)
	}
	if got, err := s.Get(ctx, "locked/a"); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("a refused delete must leave the object: %q %v", got, err)
	}

	// The attacks, with the store's own keys.
	vs, _ := s.Versions(ctx, "locked/a")
	if len(vs) != 1 {
		t.Fatalf("versions %+v", vs)
	}
	key := aws.String("locked/a")
	if _, err := raw.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &cfg.Bucket, Key: key, VersionId: aws.String(vs[0].ID)}); err == nil {
		t.Fatal("permanently deleting a locked version succeeded")
	}
	if _, err := raw.PutObjectRetention(ctx, &s3.PutObjectRetentionInput{Bucket: &cfg.Bucket, Key: key, VersionId: aws.String(vs[0].ID),
		Retention: &types.ObjectLockRetention{Mode: types.ObjectLockRetentionModeCompliance, RetainUntilDate: aws.Time(time.Now().Add(time.Second))}}); err == nil {
		t.Fatal("shortening a compliance retention succeeded")
	}
	if _, err := raw.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &cfg.Bucket, Key: key}); err != nil {
		t.Fatalf("a delete marker: %v", err)
	}
	if _, err := s.Get(ctx, "locked/a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("under a delete marker Get = %v, want not found", err)
	}
	if got, err := GetChecked(ctx, WithRetry(s), "locked/a", check); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("GetChecked through a delete marker: %q %v", got, err)
	}
	if _, err := raw.PutObject(ctx, &s3.PutObjectInput{Bucket: &cfg.Bucket, Key: key, Body: strings.NewReader("garbage garbage garbage")}); err != nil {
		t.Fatalf("garbage over the key: %v", err)
	}
	if got, err := GetRangeChecked(ctx, WithRetry(s), "locked/a", 4, 5, func(b []byte) error {
		if !bytes.Equal(b, data[4:9]) {
			return errors.New("not ours")
		}
		return nil
	}); err != nil || !bytes.Equal(got, data[4:9]) {
		t.Fatalf("GetRangeChecked under garbage: %q %v", got, err)
	}

	// Extension: later only, and of the original version, not the
	// garbage above it.
	later := time.Now().Add(hold + 3*time.Second)
	if err := s.Retain(ctx, "locked/a", later); err != nil {
		t.Fatal(err)
	}
	if err := s.Retain(ctx, "locked/a", time.Now()); err != nil {
		t.Fatalf("asking for an earlier date must be a no-op: %v", err)
	}
	if got, _ := s.RetainedUntil(ctx, "locked/a"); got.Before(later.Truncate(time.Second)) {
		t.Fatalf("retained until %v after extending to %v", got, later)
	}

	// Once the retention has passed, Delete destroys every version.
	time.Sleep(time.Until(later) + time.Second)
	if err := s.Delete(ctx, "locked/a"); err != nil {
		t.Fatalf("delete after the retention: %v", err)
	}
	if vs, err := s.Versions(ctx, "locked/a"); err != nil || len(vs) != 0 {
		t.Fatalf("versions left after delete: %+v %v", vs, err)
	}
}
