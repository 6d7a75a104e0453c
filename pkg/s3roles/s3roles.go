// Package s3roles gives each service its own S3 credential and the bucket
// a policy of least privilege, as natsauth does for NATS: someone holding a
// transfer worker's keys can add objects but not delete one.
//
// The rule: every role reads the whole bucket and writes new objects
// (packs, manifests, record copies, retention on what it wrote); only the
// roles that remove data by design may delete — merge (retention, prune)
// and dedup (garbage collection, compaction). The operator's CLI keeps the
// store's own (root) credential.
//
// Generate makes a key pair per role (kept in DIR/<role>.env, reused when
// present; readable, as natsauth's seeds are, by the unprivileged user the
// containers run as: keep the directory's parent private); Policy is the bucket policy in standard S3 JSON with the
// access key ids as principals, which is how versitygw names accounts
// (AWS would want IAM ARNs); Apply creates the accounts through versitygw's
// admin API, the bucket, and sets the policy.
package s3roles

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// Role is one credential's rights on the bucket.
type Role struct {
	Name string
	// Delete: it removes objects (prune, garbage collection, compaction).
	Delete bool
}

// Roles are the services' credentials, named as natsauth names them.
func Roles() []Role {
	return []Role{
		{Name: "scheduler"},
		{Name: "snapshotter"},
		{Name: "transfer"},
		{Name: "merge", Delete: true},
		{Name: "dedup", Delete: true},
		{Name: "verifier"},
		{Name: "api"},
	}
}

// Key is an S3 credential.
type Key struct {
	Access string `json:"access"`
	Secret string `json:"-"`
}

// File is where a role's credential is kept in a Generate directory (the
// format STRATA_S3_CREDENTIALS_FILE reads).
func File(role string) string { return role + ".env" }

const (
	accessVar = "STRATA_S3_ACCESS_KEY"
	secretVar = "STRATA_S3_SECRET_KEY"
)

// Generate returns a credential per role, read from dir where its file
// exists and made where it does not, so running it again never changes
// keys a deployment already uses.
func Generate(dir string) (map[string]Key, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("s3 roles: %w", err)
	}
	keys := map[string]Key{}
	for _, r := range Roles() {
		path := filepath.Join(dir, File(r.Name))
		k, err := ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			k = Key{Access: "strata-" + r.Name + "-" + random(6), Secret: random(24)}
			body := fmt.Sprintf("%s=%s\n%s=%s\n", accessVar, k.Access, secretVar, k.Secret)
			if err = os.WriteFile(path, []byte(body), 0o644); err != nil {
				return nil, fmt.Errorf("s3 roles: %w", err)
			}
		} else if err != nil {
			return nil, err
		}
		keys[r.Name] = k
	}
	return keys, nil
}

// ReadFile reads a credential file: STRATA_S3_ACCESS_KEY=… and
// STRATA_S3_SECRET_KEY=… lines (blank lines and # comments allowed).
func ReadFile(path string) (Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return Key{}, err
	}
	defer f.Close()
	var k Key
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		switch {
		case ok && name == accessVar:
			k.Access = value
		case ok && name == secretVar:
			k.Secret = value
		default:
			return Key{}, fmt.Errorf("S3 credentials %s line %d: want %s=… or %s=…", path, n, accessVar, secretVar)
		}
	}
	if err := sc.Err(); err != nil {
		return Key{}, fmt.Errorf("S3 credentials %s: %w", path, err)
	}
	if k.Access == "" || k.Secret == "" {
		return Key{}, fmt.Errorf("S3 credentials %s: both %s and %s are needed", path, accessVar, secretVar)
	}
	return k, nil
}

func random(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}

// What every role may do: read the bucket, write new objects, set the
// retention of what it writes under Object Lock (which only lengthens:
// shortening governance retention needs s3:BypassGovernanceRetention,
// granted to nobody), and clean up its own multipart uploads.
var (
	readActions   = []string{"s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket", "s3:ListBucketVersions", "s3:GetObjectRetention", "s3:GetBucketObjectLockConfiguration", "s3:GetBucketVersioning"}
	writeActions  = []string{"s3:PutObject", "s3:PutObjectRetention", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts", "s3:ListBucketMultipartUploads"}
	deleteActions = []string{"s3:DeleteObject", "s3:DeleteObjectVersion"}
)

type statement struct {
	Sid       string              `json:"Sid"`
	Effect    string              `json:"Effect"`
	Principal map[string][]string `json:"Principal"`
	Action    []string            `json:"Action"`
	Resource  []string            `json:"Resource"`
}

// Policy is the bucket policy for keys (role → credential): read and write
// for every role, delete for the roles that delete.
func Policy(bucket string, keys map[string]Key) ([]byte, error) {
	var all, deleters []string
	for _, r := range Roles() {
		k, ok := keys[r.Name]
		if !ok {
			return nil, fmt.Errorf("s3 policy: no credential for role %s", r.Name)
		}
		all = append(all, k.Access)
		if r.Delete {
			deleters = append(deleters, k.Access)
		}
	}
	res := []string{"arn:aws:s3:::" + bucket, "arn:aws:s3:::" + bucket + "/*"}
	doc := map[string]any{
		"Version": "2012-10-17",
		"Statement": []statement{
			{Sid: "StrataServicesRead", Effect: "Allow", Principal: map[string][]string{"AWS": all}, Action: readActions, Resource: res},
			{Sid: "StrataServicesWrite", Effect: "Allow", Principal: map[string][]string{"AWS": all}, Action: writeActions, Resource: res},
			{Sid: "StrataCollectorsDelete", Effect: "Allow", Principal: map[string][]string{"AWS": deleters}, Action: deleteActions, Resource: res},
		},
	}
	return json.MarshalIndent(doc, "", "  ")
}

// account is versitygw's admin API body (auth.Account, XML).
type account struct {
	XMLName xml.Name `xml:"Account"`
	Access  string   `xml:"Access"`
	Secret  string   `xml:"Secret"`
	Role    string   `xml:"Role"`
	UserID  int      `xml:"UserID"`
	GroupID int      `xml:"GroupID"`
}

// CreateVersityAccounts makes an account of role "user" (no bucket of its
// own, no admin right: only what a bucket policy grants) per key through
// versitygw's admin API at endpoint, signed with the root credential. An
// account that exists already is left as it is.
func CreateVersityAccounts(ctx context.Context, endpoint, region string, root Key, keys map[string]Key) error {
	for _, r := range Roles() {
		k := keys[r.Name]
		body, err := xml.Marshal(account{Access: k.Access, Secret: k.Secret, Role: "user"})
		if err != nil {
			return err
		}
		if err := adminCall(ctx, endpoint, region, root, "/create-user", body); err != nil {
			if strings.Contains(err.Error(), "UserAlreadyExists") || strings.Contains(err.Error(), "already exists") {
				continue
			}
			return fmt.Errorf("create the %s account: %w", r.Name, err)
		}
	}
	return nil
}

func adminCall(ctx context.Context, endpoint, region string, root Key, path string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPatch, strings.TrimSuffix(endpoint, "/")+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	sum := sha256.Sum256(body)
	hash := hex.EncodeToString(sum[:])
	req.Header.Set("X-Amz-Content-Sha256", hash)
	if err := v4.NewSigner().SignHTTP(ctx, aws.Credentials{AccessKeyID: root.Access, SecretAccessKey: root.Secret}, req, hash, "s3", region, time.Now()); err != nil {
		return err
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s: %s: %s", path, resp.Status, strings.TrimSpace(string(msg)))
	}
	return nil
}
