package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// checkLockable refuses a bucket without Object Lock: objects written
// there would look protected and be deletable by anyone with the keys.
func (s *S3) checkLockable(ctx context.Context) error {
	out, err := s.client.GetObjectLockConfiguration(ctx, &s3.GetObjectLockConfigurationInput{Bucket: &s.cfg.Bucket})
	if err == nil && out.ObjectLockConfiguration != nil && out.ObjectLockConfiguration.ObjectLockEnabled == types.ObjectLockEnabledEnabled {
		return nil
	}
	why := "it has no Object Lock configuration"
	if err != nil && !isLockConfigMissing(err) {
		why = err.Error()
	}
	return fmt.Errorf("bucket %s at %s cannot hold a locked repository: %s (Object Lock is enabled when a bucket is created: let Strata create a new bucket, or create it with object lock enabled, e.g. aws s3api create-bucket --object-lock-enabled-for-bucket)", s.cfg.Bucket, s.cfg.Endpoint, why)
}

func isLockConfigMissing(err error) bool {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode() {
		case "ObjectLockConfigurationNotFoundError", "NoSuchObjectLockConfiguration":
			return true
		}
	}
	return false
}

// lockPut sets the retention of an object being written.
func (s *S3) lockPut(key string, in *s3.PutObjectInput) {
	if s.cfg.Lock == nil || s.cfg.Lock.Until == nil {
		return
	}
	until := s.cfg.Lock.Until(key, time.Now())
	if until.IsZero() {
		return
	}
	in.ObjectLockMode = s.lockMode
	in.ObjectLockRetainUntilDate = aws.Time(ceilSecond(until))
}

// ceilSecond: S3 keeps retain-until dates to the second; rounding down
// would lock for less than asked.
func ceilSecond(t time.Time) time.Time {
	if r := t.Truncate(time.Second); r.Before(t) {
		return r.Add(time.Second).UTC()
	}
	return t.UTC()
}

func isAccessDenied(err error) bool {
	var re *smithyhttp.ResponseError
	return errors.As(err, &re) && re.HTTPStatusCode() == http.StatusForbidden
}

// Versions lists the versions of key newest first, delete markers left out.
func (s *S3) Versions(ctx context.Context, key string) ([]Version, error) {
	vs, _, err := s.versions(ctx, key)
	return vs, err
}

// versions lists the versions and the delete markers of exactly key.
func (s *S3) versions(ctx context.Context, key string) ([]Version, []string, error) {
	full := s.key(key)
	var vs []Version
	var markers []string
	p := s3.NewListObjectVersionsPaginator(s.client, &s3.ListObjectVersionsInput{Bucket: &s.cfg.Bucket, Prefix: aws.String(full)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, nil, fmt.Errorf("list versions of %s: %w", key, err)
		}
		for _, v := range page.Versions {
			if aws.ToString(v.Key) == full {
				vs = append(vs, Version{ID: aws.ToString(v.VersionId), Size: aws.ToInt64(v.Size), Modified: aws.ToTime(v.LastModified)})
			}
		}
		for _, m := range page.DeleteMarkers {
			if aws.ToString(m.Key) == full {
				markers = append(markers, aws.ToString(m.VersionId))
			}
		}
	}
	// S3 lists a key's versions newest first; sort anyway, stably, so a
	// server that does not keeps the contract.
	sort.SliceStable(vs, func(i, j int) bool { return vs[i].Modified.After(vs[j].Modified) })
	return vs, markers, nil
}

func (s *S3) GetVersion(ctx context.Context, key, id string) ([]byte, error) {
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(s.key(key)), VersionId: aws.String(id)})
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("get %s version %s: %w", key, id, ErrNotFound)
		}
		return nil, fmt.Errorf("get %s version %s: %w", key, id, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	if err != nil {
		return nil, fmt.Errorf("get %s version %s: read body: %w", key, id, err)
	}
	return b, nil
}

func (s *S3) GetVersionRange(ctx context.Context, key, id string, off, n int64) ([]byte, error) {
	if off < 0 || n <= 0 {
		return nil, fmt.Errorf("get %s: %w: %d+%d", key, ErrBadRange, off, n)
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(s.key(key)), VersionId: aws.String(id),
		Range: aws.String(fmt.Sprintf("bytes=%d-%d", off, off+n-1))})
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("get %s version %s: %w", key, id, ErrNotFound)
		}
		if isBadRange(err) {
			return nil, fmt.Errorf("get %s version %s: %w: %v", key, id, ErrBadRange, err)
		}
		return nil, fmt.Errorf("get %s version %s: %w", key, id, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(io.LimitReader(out.Body, n))
	if err != nil {
		return nil, fmt.Errorf("get %s version %s: read body: %w", key, id, err)
	}
	if out.ContentRange == nil && off > 0 {
		return nil, fmt.Errorf("get %s: the server ignored the range request", key)
	}
	return b, nil
}

// original is the first version written under key: the one Strata wrote.
func (s *S3) original(ctx context.Context, key string) (Version, error) {
	vs, _, err := s.versions(ctx, key)
	if err != nil {
		return Version{}, err
	}
	if len(vs) == 0 {
		return Version{}, fmt.Errorf("retention of %s: %w", key, ErrNotFound)
	}
	return vs[len(vs)-1], nil
}

// Retain extends the retention of key's original version to until.
func (s *S3) Retain(ctx context.Context, key string, until time.Time) error {
	if s.cfg.Lock == nil {
		return fmt.Errorf("retain %s: %s is not an Object Lock store", key, s)
	}
	v, err := s.original(ctx, key)
	if err != nil {
		return err
	}
	have, err := s.retention(ctx, key, v.ID)
	if err != nil {
		return err
	}
	until = ceilSecond(until)
	if !have.Before(until) {
		return nil // never shortened, and no request when it already reaches
	}
	_, err = s.client.PutObjectRetention(ctx, &s3.PutObjectRetentionInput{
		Bucket: &s.cfg.Bucket, Key: aws.String(s.key(key)), VersionId: aws.String(v.ID),
		Retention: &types.ObjectLockRetention{Mode: types.ObjectLockRetentionMode(s.lockMode), RetainUntilDate: aws.Time(until)},
	})
	if err != nil {
		return fmt.Errorf("retain %s until %s: %w", key, until.Format(time.RFC3339), err)
	}
	return nil
}

// RetainedUntil is the retain-until date of key's original version.
func (s *S3) RetainedUntil(ctx context.Context, key string) (time.Time, error) {
	v, err := s.original(ctx, key)
	if err != nil {
		return time.Time{}, err
	}
	return s.retention(ctx, key, v.ID)
}

func (s *S3) retention(ctx context.Context, key, versionID string) (time.Time, error) {
	out, err := s.client.GetObjectRetention(ctx, &s3.GetObjectRetentionInput{Bucket: &s.cfg.Bucket, Key: aws.String(s.key(key)), VersionId: aws.String(versionID)})
	if err != nil {
		if isLockConfigMissing(err) {
			return time.Time{}, nil
		}
		return time.Time{}, fmt.Errorf("retention of %s: %w", key, err)
	}
	if out.Retention == nil || out.Retention.RetainUntilDate == nil {
		return time.Time{}, nil
	}
	return out.Retention.RetainUntilDate.UTC(), nil
}

// deleteVersions removes every version and delete marker of key that is
// not under retention. A plain DELETE on a versioned bucket only adds a
// delete marker: the bytes would stay, billed, for ever.
func (s *S3) deleteVersions(ctx context.Context, key string) error {
	vs, markers, err := s.versions(ctx, key)
	if err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	var locked *LockedError
	del := func(id string) error {
		_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(s.key(key)), VersionId: aws.String(id)})
		switch {
		case err == nil || isNotFound(err):
			return nil
		case isAccessDenied(err):
			if locked == nil {
				locked = &LockedError{Key: key}
			}
			if until, rerr := s.retention(ctx, key, id); rerr == nil && until.After(locked.Until) {
				locked.Until = until
			}
			return nil
		}
		return fmt.Errorf("delete %s version %s: %w", key, id, err)
	}
	// Versions before markers: a marker removed first would expose a
	// version that may turn out to be locked, to readers that skip it.
	for _, v := range vs {
		if err := del(v.ID); err != nil {
			return err
		}
	}
	if locked != nil {
		return locked
	}
	for _, m := range markers {
		if err := del(m); err != nil {
			return err
		}
	}
	return nil
}

// ListAll lists every key with a version under prefix, once each, in
// lexical order (S3 lists versions by key, newest first).
func (s *S3) ListAll(ctx context.Context, prefix string, fn func(Info) error) error {
	p := s3.NewListObjectVersionsPaginator(s.client, &s3.ListObjectVersionsInput{Bucket: &s.cfg.Bucket, Prefix: aws.String(s.key(prefix))})
	last := ""
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("list versions under %s: %w", prefix, err)
		}
		for _, v := range page.Versions {
			k := strings.TrimPrefix(aws.ToString(v.Key), s.cfg.Prefix)
			if k == last {
				continue
			}
			last = k
			if err := fn(Info{Key: k, Size: aws.ToInt64(v.Size), Modified: aws.ToTime(v.LastModified)}); err != nil {
				return err
			}
		}
	}
	return nil
}
