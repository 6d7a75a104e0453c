package e2e

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/demodisk"
	"github.com/strata-backup/strata/pkg/natsauth"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/s3roles"
)

// NATS with TLS and one nkey per service: every service does its work on
// its own credential (a full and an incremental, verified and restored
// bit-exact), no permission is refused on the way, and the transfer
// worker's credential is refused when it requests a backup, writes the
// catalog or takes the GC lock. Without a credential, or without TLS,
// nothing connects. S3 the same way: each service on its own account
// (strata s3-roles), the transfer worker's refused when it deletes.
func TestSecuredNATS(t *testing.T) {
	st := startStack(t, stackOptions{secured: true})
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := demodisk.Write(img, 48<<20, 7); err != nil {
		t.Fatal(err)
	}
	full := st.verifiedBackup("sec", "file://"+img)
	if f, err := os.OpenFile(img, os.O_WRONLY, 0); err == nil {
		f.WriteAt([]byte(strings.Repeat("changed ", 4096)), 9<<20)
		f.Close()
	}
	inc := st.verifiedBackup("sec", "file://"+img)
	out := filepath.Join(t.TempDir(), "restored.img")
	st.mustCLI("restore", "--vm", "sec", "--backup", inc.ID, "--to", out)
	if sha256File(t, out) != sha256File(t, img) {
		t.Fatal("restore on the secured deployment is not bit-exact")
	}
	// The rest of the work, each on its owner's credential: a certify
	// verification, a repository check (chunk checks through the
	// workers), retention, garbage collection.
	st.mustCLI("verify", "--vm", "sec", "--backup", inc.ID, "--mode", "certify")
	st.mustCLI("check", "--json")
	st.mustCLI("prune", "--vm", "sec", "--keep-last", "1", "--yes", "--json")
	st.gc("--grace", "0s")
	if n := len(st.records("sec")); n != 1 {
		t.Fatalf("%d backups after keeping the last one", n)
	}
	if violations := permissionViolations(st); len(violations) > 0 {
		t.Fatalf("a service was refused a permission it needs:\n%s", strings.Join(violations, "\n"))
	}
	t.Logf("full %s and incremental %s verified on per-service credentials over TLS", full.ID, inc.ID)

	transferRefused(t, st.nats, st.authDir, "sec", inc.ID)
	s3TransferCannotDelete(t, st)
	ca := filepath.Join(st.authDir, natsauth.CAFile)
	if rec := st.record("sec", inc.ID); rec.State != contracts.StateVerified {
		t.Fatalf("the record changed: %s", rec.State)
	}
	if n := len(st.records("sec")); n != 1 {
		t.Fatalf("%d backups of sec, want 1", n)
	}

	// No credential, a wrong one, or no TLS: refused.
	if c, err := nats.Connect(st.nats, nats.RootCAs(ca)); err == nil {
		c.Close()
		t.Fatal("connected without a credential")
	}
	plain := "nats://" + strings.TrimPrefix(st.nats, "tls://")
	if c, err := nats.Connect(plain, seedOpt(t, st.authDir, "admin")); err == nil {
		c.Close()
		t.Fatal("connected without TLS")
	} else if !errors.Is(err, nats.ErrSecureConnRequired) && !strings.Contains(err.Error(), "tls") {
		t.Logf("without TLS: %v", err)
	}
}

// permissionViolations are the services' log lines about a refused
// permission.
func permissionViolations(st *stack) []string {
	var out []string
	for name, ps := range st.procs {
		for _, p := range ps {
			for _, line := range strings.Split(p.Output(), "\n") {
				if strings.Contains(line, "Permissions Violation") || strings.Contains(line, "permissions violation") {
					out = append(out, name+": "+line)
				}
			}
		}
	}
	return out
}

// transferRefused connects with the transfer role's credential: it reads
// the record of vm's backup id, and is refused (a permissions violation
// from the server, nothing written) when it requests a backup, writes that
// record, creates the GC lock or purges a stream.
func transferRefused(t testing.TB, natsURL, authDir, vm, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ca := filepath.Join(authDir, natsauth.CAFile)
	var mu sync.Mutex
	var refused []string
	nc, err := nats.Connect(natsURL, nats.RootCAs(ca), seedOpt(t, authDir, "transfer"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			mu.Lock()
			refused = append(refused, err.Error())
			mu.Unlock()
		}))
	if err != nil {
		t.Fatalf("the transfer credential does not connect: %v", err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	// What a worker does is allowed: read the catalog.
	cat, err := js.KeyValue(ctx, contracts.BucketCatalog)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cat.Get(ctx, contracts.CatalogKey(vm, id)); err != nil {
		t.Fatalf("the transfer credential cannot read a record: %v", err)
	}
	short := func() context.Context {
		c, cancel := context.WithTimeout(ctx, 2*time.Second)
		t.Cleanup(cancel)
		return c
	}
	req := &contracts.BackupRequested{Schema: contracts.SchemaVersion, BackupID: "0190e1a0-0000-7000-8000-0000000000ee", VM: vm, Source: "file:///etc/shadow", RequestedAt: time.Now().UTC()}
	data, _ := contracts.Encode(req)
	if _, err := js.Publish(short(), contracts.SubjectBackupRequested, data); err == nil {
		t.Fatal("the transfer credential requested a backup")
	}
	if _, err := cat.Put(short(), contracts.CatalogKey(vm, id), []byte(`{"state":"failed"}`)); err == nil {
		t.Fatal("the transfer credential wrote the catalog")
	}
	gc, err := js.KeyValue(ctx, contracts.BucketGC)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gc.Create(short(), contracts.GCLockKey, []byte(`{}`)); err == nil {
		t.Fatal("the transfer credential took the GC lock")
	}
	if s, err := js.Stream(ctx, contracts.StreamBackups); err != nil {
		t.Fatal(err)
	} else if err := s.Purge(short()); err == nil {
		t.Fatal("the transfer credential purged a stream")
	}
	// Consumers only on its own streams: none of its own on the backups
	// stream (reading requests through it), and another service's durable
	// consumer stays.
	if _, err := js.CreateConsumer(short(), contracts.StreamBackups, jetstream.ConsumerConfig{}); err == nil {
		t.Fatal("the transfer credential created a consumer on the backups stream")
	}
	if err := js.DeleteConsumer(short(), contracts.StreamBackups, contracts.ConsumerMergeRetention); err == nil {
		t.Fatal("the transfer credential deleted merge's consumer")
	}
	admin, err := nats.Connect(natsURL, nats.RootCAs(ca), seedOpt(t, authDir, "admin"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ajs, _ := jetstream.New(admin)
	if _, err := ajs.Consumer(ctx, contracts.StreamBackups, contracts.ConsumerMergeRetention); err != nil {
		t.Fatalf("merge's consumer after the transfer credential's delete: %v", err)
	}
	nc.Flush()
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	for _, want := range []string{contracts.SubjectBackupRequested, "$KV." + contracts.BucketCatalog, "$KV." + contracts.BucketGC, "$JS.API.STREAM.PURGE",
		"$JS.API.CONSUMER.CREATE." + contracts.StreamBackups, "$JS.API.CONSUMER.DELETE." + contracts.StreamBackups} {
		found := false
		for _, r := range refused {
			found = found || strings.Contains(r, "Permissions Violation") && strings.Contains(r, want)
		}
		if !found {
			t.Errorf("no permissions violation for %s among %q", want, refused)
		}
	}
	mu.Unlock()
}

// s3TransferCannotDelete: the transfer worker's S3 credential writes a new
// object and reads one, but deleting a pack or even its own object is
// refused (403), and the pack is still there; the merge credential (a
// collector) may delete.
func s3TransferCannotDelete(t *testing.T, st *stack) {
	t.Helper()
	ctx := context.Background()
	open := func(role string) *objstore.S3 {
		k, err := s3roles.ReadFile(filepath.Join(st.authDir, "s3", s3roles.File(role)))
		if err != nil {
			t.Fatal(err)
		}
		s, err := objstore.NewS3(ctx, objstore.S3Config{Endpoint: st.s3.Endpoint, Bucket: st.bucket, AccessKey: k.Access, SecretKey: k.Secret, PathStyle: true, NoCreate: true})
		if err != nil {
			t.Fatalf("open the bucket as %s: %v", role, err)
		}
		return s
	}
	transfer := open("transfer")
	var pack string
	if err := transfer.List(ctx, "packs/", func(i objstore.Info) error {
		if pack == "" {
			pack = i.Key
		}
		return nil
	}); err != nil {
		t.Fatalf("transfer lists packs: %v", err)
	}
	if pack == "" {
		t.Fatal("no pack in the bucket")
	}
	before, err := transfer.Get(ctx, pack)
	if err != nil {
		t.Fatalf("transfer reads a pack: %v", err)
	}
	if err := transfer.Put(ctx, "e2e/transfer-probe", []byte("probe")); err != nil {
		t.Fatalf("transfer writes an object: %v", err)
	}
	for _, key := range []string{pack, "e2e/transfer-probe"} {
		err := transfer.Delete(ctx, key)
		if err == nil || !strings.Contains(err.Error(), "AccessDenied") {
			t.Fatalf("transfer's credential deleted %s (err %v)", key, err)
		}
	}
	after, err := transfer.Get(ctx, pack)
	if err != nil || !bytes.Equal(after, before) {
		t.Fatalf("the pack changed after a refused delete: %v", err)
	}
	if err := open("merge").Delete(ctx, "e2e/transfer-probe"); err != nil {
		t.Fatalf("merge (a collector) may delete: %v", err)
	}
	if _, err := transfer.Stat(ctx, "e2e/transfer-probe"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("merge's delete left the object: %v", err)
	}
}
