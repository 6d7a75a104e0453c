package objstore

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// S3Config selects any S3-compatible endpoint. Empty credentials fall back
// to the AWS default chain (AWS_ACCESS_KEY_ID, profiles, instance roles).
type S3Config struct {
	Endpoint  string // e.g. http://127.0.0.1:7070; empty: AWS
	Region    string
	Bucket    string
	Prefix    string // optional key prefix inside the bucket
	AccessKey string
	SecretKey string
	PathStyle bool // most self-hosted servers need path-style addressing
	// NoCreate: a missing bucket is an error, not created (commands that
	// only read).
	NoCreate bool
	// SignPayload puts the SHA-256 of every request body into its
	// signature. Off (the default), bodies are sent as UNSIGNED-PAYLOAD
	// with a CRC-32C the server checks instead: the SHA-256 cost a core
	// about a second per GB on each side (client and server; a fifth of a
	// deployed full's CPU), and protects only against someone who can
	// rewrite traffic between Strata and a plain-HTTP endpoint — which
	// HTTPS prevents anyway, and which the chunks' own SHA-256 ids (and,
	// with a key, their authenticated encryption) expose at verification
	// and restore.
	SignPayload bool
	// Lock: every object is written under S3 Object Lock (see Lock). The
	// bucket must have Object Lock enabled (it is created with it);
	// Delete then removes versions, never just hides the current one.
	Lock *Lock
}

// S3 is a Store over aws-sdk-go-v2.
type S3 struct {
	client   *s3.Client
	cfg      S3Config
	lockMode types.ObjectLockMode // set with cfg.Lock
}

// NewS3 connects to the endpoint and makes sure the bucket exists.
func NewS3(ctx context.Context, cfg S3Config) (*S3, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("s3: bucket must be set")
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	opts := []func(*awsconfig.LoadOptions) error{awsconfig.WithRegion(cfg.Region)}
	if cfg.AccessKey != "" {
		opts = append(opts, awsconfig.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(cfg.AccessKey, cfg.SecretKey, "")))
	}
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3: load config: %w", err)
	}
	// Keep as many idle connections as requests run at once (dedup asks up
	// to 64×32 in parallel, a transfer worker uploads 32): the SDK's default
	// of 10 per host closes and redials connections all the time, a TCP
	// (and TLS) handshake per request.
	awsCfg.HTTPClient = awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
		t.MaxIdleConnsPerHost = 256
		t.MaxIdleConns = 256
	})
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.PathStyle
		// Checksums only where the API requires them: not every S3 server
		// implements the newer flexible checksums, and chunks carry their own
		// content hash anyway.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		// Retries are the Retry wrapper's job, with one policy for all stores.
		o.RetryMaxAttempts = 1
		if !cfg.SignPayload {
			o.APIOptions = append(o.APIOptions, v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware)
		}
	})
	s := &S3{client: client, cfg: cfg}
	if cfg.Lock != nil {
		switch m := strings.ToUpper(cfg.Lock.Mode); m {
		case "GOVERNANCE", "COMPLIANCE":
			s.lockMode = types.ObjectLockMode(m)
		default:
			return nil, fmt.Errorf("s3: object lock mode %q: want governance or compliance", cfg.Lock.Mode)
		}
	}
	if err := s.ensureBucket(ctx); err != nil {
		return nil, err
	}
	if cfg.Lock != nil {
		if err := s.checkLockable(ctx); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *S3) String() string {
	return fmt.Sprintf("s3:%s/%s/%s", s.cfg.Endpoint, s.cfg.Bucket, s.cfg.Prefix)
}

func (s *S3) ensureBucket(ctx context.Context) error {
	if s.cfg.NoCreate {
		if _, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &s.cfg.Bucket}); err != nil {
			return fmt.Errorf("bucket %s at %s: %w (it is not created by a command that only reads)", s.cfg.Bucket, s.cfg.Endpoint, err)
		}
		return nil
	}
	var lastErr error
	for attempt := 0; attempt < 10; attempt++ {
		if _, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &s.cfg.Bucket}); err == nil {
			return nil
		}
		in := &s3.CreateBucketInput{Bucket: &s.cfg.Bucket}
		if s.cfg.Lock != nil {
			in.ObjectLockEnabledForBucket = aws.Bool(true) // and with it, versioning
		}
		_, err := s.client.CreateBucket(ctx, in)
		if err == nil {
			return nil
		}
		lastErr = err
		var re *smithyhttp.ResponseError
		if errors.As(err, &re) && (re.HTTPStatusCode() == http.StatusForbidden || re.HTTPStatusCode() == http.StatusBadRequest) {
			break // wrong credentials or a bad bucket name: retrying cannot help
		}
		// Several services start at once and race to create the bucket; some
		// servers answer the loser with an error. The bucket existing
		// afterwards is what counts, so loop back to HeadBucket.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt+1) * 200 * time.Millisecond):
		}
	}
	return fmt.Errorf("s3: bucket %s at %s: %w", s.cfg.Bucket, s.cfg.Endpoint, lastErr)
}

func (s *S3) key(k string) string { return s.cfg.Prefix + k }

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32c is the body checksum the server verifies when the payload is not
// signed (x-amz-checksum-crc32c): a damaged transfer is refused at the PUT
// instead of found at the next verification. CRC-32C runs at ~10 GB/s.
func (s *S3) crc32c(data []byte) *string {
	// A PUT with Object Lock parameters must carry a checksum (S3 refuses
	// it otherwise), signed payload or not.
	if s.cfg.SignPayload && s.cfg.Lock == nil {
		return nil
	}
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], crc32.Checksum(data, castagnoli))
	return aws.String(base64.StdEncoding.EncodeToString(sum[:]))
}

func isNotFound(err error) bool {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode() {
		case "NoSuchKey", "NotFound", "404":
			return true
		}
	}
	var re *smithyhttp.ResponseError
	return errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound
}

// isBadRange: 416 Range Not Satisfiable.
func isBadRange(err error) bool {
	var re *smithyhttp.ResponseError
	return errors.As(err, &re) && re.HTTPStatusCode() == http.StatusRequestedRangeNotSatisfiable
}

func (s *S3) Put(ctx context.Context, key string, data []byte) error {
	in := &s3.PutObjectInput{
		Bucket:         &s.cfg.Bucket,
		Key:            aws.String(s.key(key)),
		Body:           bytes.NewReader(data),
		ContentLength:  aws.Int64(int64(len(data))),
		ChecksumCRC32C: s.crc32c(data),
	}
	s.lockPut(key, in)
	_, err := s.client.PutObject(ctx, in)
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

// PutIfAbsent is a conditional PUT (If-None-Match: *): 412 means the key
// holds an object already. A server that ignores the header overwrites,
// which for content-addressed keys stores the same bytes.
func (s *S3) PutIfAbsent(ctx context.Context, key string, data []byte) (bool, error) {
	in := &s3.PutObjectInput{
		Bucket:         &s.cfg.Bucket,
		Key:            aws.String(s.key(key)),
		Body:           bytes.NewReader(data),
		ContentLength:  aws.Int64(int64(len(data))),
		IfNoneMatch:    aws.String("*"),
		ChecksumCRC32C: s.crc32c(data),
	}
	s.lockPut(key, in)
	_, err := s.client.PutObject(ctx, in)
	var re *smithyhttp.ResponseError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &re) && re.HTTPStatusCode() == http.StatusPreconditionFailed:
		return false, nil
	}
	// 409 (a concurrent conditional write of the same key) and the rest:
	// Retry tries again and then finds the object.
	return false, fmt.Errorf("put %s: %w", key, err)
}

func (s *S3) GetRange(ctx context.Context, key string, off, n int64) ([]byte, error) {
	if off < 0 || n <= 0 {
		return nil, fmt.Errorf("get %s: %w: %d+%d", key, ErrBadRange, off, n)
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(s.key(key)),
		Range: aws.String(fmt.Sprintf("bytes=%d-%d", off, off+n-1))})
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("get %s: %w", key, ErrNotFound)
		}
		if isBadRange(err) {
			return nil, fmt.Errorf("get %s: %w: %v", key, ErrBadRange, err)
		}
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	defer out.Body.Close()
	// A server that ignores Range sends the whole object: read at most
	// what was asked for, and only from the start of the range. The buffer
	// is sized once (ReadAll grows it by doubling: a coalesced 8 MiB read
	// copied 16 MiB).
	size := n
	if out.ContentLength != nil && *out.ContentLength >= 0 && *out.ContentLength < n {
		size = *out.ContentLength
	}
	b := make([]byte, size)
	got, err := io.ReadFull(out.Body, b)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("get %s: read body: %w", key, err)
	}
	b = b[:got]
	if out.ContentRange == nil && off > 0 {
		return nil, fmt.Errorf("get %s: the server ignored the range request", key)
	}
	return b, nil
}

func (s *S3) Get(ctx context.Context, key string) ([]byte, error) {
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(s.key(key))})
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("get %s: %w", key, ErrNotFound)
		}
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	defer out.Body.Close()
	var buf bytes.Buffer
	if out.ContentLength != nil && *out.ContentLength > 0 {
		buf.Grow(int(*out.ContentLength))
	}
	if _, err := io.Copy(&buf, out.Body); err != nil {
		return nil, fmt.Errorf("get %s: read body: %w", key, err)
	}
	return buf.Bytes(), nil
}

func (s *S3) Stat(ctx context.Context, key string) (Info, error) {
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(s.key(key))})
	if err != nil {
		if isNotFound(err) {
			return Info{}, fmt.Errorf("stat %s: %w", key, ErrNotFound)
		}
		return Info{}, fmt.Errorf("stat %s: %w", key, err)
	}
	return Info{Key: key, Size: aws.ToInt64(out.ContentLength), Modified: aws.ToTime(out.LastModified)}, nil
}

func (s *S3) Delete(ctx context.Context, key string) error {
	if s.cfg.Lock != nil {
		return s.deleteVersions(ctx, key)
	}
	_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(s.key(key))})
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

func (s *S3) List(ctx context.Context, prefix string, fn func(Info) error) error {
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: &s.cfg.Bucket, Prefix: aws.String(s.key(prefix))})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("list %s: %w", prefix, err)
		}
		for _, o := range page.Contents {
			k := strings.TrimPrefix(aws.ToString(o.Key), s.cfg.Prefix)
			if err := fn(Info{Key: k, Size: aws.ToInt64(o.Size), Modified: aws.ToTime(o.LastModified)}); err != nil {
				return err
			}
		}
	}
	return nil
}

// SetBucketPolicy replaces the bucket's policy (standard S3 policy JSON).
// Only the store's owner (root) may; the services' own credentials never
// call it.
func (s *S3) SetBucketPolicy(ctx context.Context, policy []byte) error {
	_, err := s.client.PutBucketPolicy(ctx, &s3.PutBucketPolicyInput{Bucket: &s.cfg.Bucket, Policy: aws.String(string(policy))})
	if err != nil {
		return fmt.Errorf("set the policy of bucket %s: %w", s.cfg.Bucket, err)
	}
	return nil
}
