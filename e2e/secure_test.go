package e2e

import (
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
)

// NATS with TLS and one nkey per service: every service does its work on
// its own credential (a full and an incremental, verified and restored
// bit-exact), no permission is refused on the way, and the transfer
// worker's credential is refused when it requests a backup, writes the
// catalog or takes the GC lock. Without a credential, or without TLS,
// nothing connects.
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
	nc.Flush()
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	for _, want := range []string{contracts.SubjectBackupRequested, "$KV." + contracts.BucketCatalog, "$KV." + contracts.BucketGC, "$JS.API.STREAM.PURGE"} {
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
