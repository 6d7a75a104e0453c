package objstore

import (
	"bytes"
	"context"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/strata-backup/strata/internal/testserver"
)

// With the payload unsigned, the CRC-32C is what stands between a body
// damaged on the way and a stored object: the server must refuse a body
// that does not match it, and the sum Put sends must match.
func TestS3UnsignedPayloadIsChecked(t *testing.T) {
	srv := testserver.Versity(t)
	ctx := context.Background()
	s, err := NewS3(ctx, S3Config{Endpoint: srv.Endpoint, Bucket: "crc", AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("pack"), 1<<16)
	if err := s.Put(ctx, "good", data); err != nil {
		t.Fatal(err)
	}
	damaged := append([]byte(nil), data...)
	damaged[12345] ^= 1
	if _, err := s.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String("crc"), Key: aws.String("bad"), Body: bytes.NewReader(damaged),
		ContentLength: aws.Int64(int64(len(damaged))), ChecksumCRC32C: s.crc32c(data),
	}); err == nil {
		t.Fatal("a body that does not match its CRC-32C was stored")
	}
	if _, err := s.Stat(ctx, "bad"); err == nil {
		t.Fatal("the refused object exists")
	}
	got, err := s.Get(ctx, "good")
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("get good: %v (equal %v)", err, bytes.Equal(got, data))
	}
}
