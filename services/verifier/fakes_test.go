package verifier

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/catalog"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/objstore"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/source"
)

// In-memory ports: the verifier's levels and damage attribution without a
// NATS server. The repository is real, on an in-memory store.

type fakeCatalog struct {
	mu   sync.Mutex
	recs map[string]*contracts.BackupRecord // vm/id
}

func (f *fakeCatalog) put(r *contracts.BackupRecord) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.recs == nil {
		f.recs = map[string]*contracts.BackupRecord{}
	}
	c := *r
	c.Disks = append([]contracts.DiskRecord(nil), r.Disks...)
	f.recs[r.VM+"/"+r.ID] = &c
}

// with applies a change to a stored record, as the catalog's transitions do.
func (f *fakeCatalog) with(vm, id string, change func(*contracts.BackupRecord) bool) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.recs[vm+"/"+id]
	if !ok {
		return false, fmt.Errorf("backup %s of %s: %w", id, vm, catalog.ErrNotFound)
	}
	return change(r), nil
}

func (f *fakeCatalog) Get(_ context.Context, vm, id string) (*contracts.BackupRecord, uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.recs[vm+"/"+id]
	if !ok {
		return nil, 0, fmt.Errorf("backup %s of %s: %w", id, vm, catalog.ErrNotFound)
	}
	c := *r
	return &c, 1, nil
}

func (f *fakeCatalog) List(_ context.Context, vm string) ([]*contracts.BackupRecord, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*contracts.BackupRecord
	for _, r := range f.recs {
		if vm == "" || r.VM == vm {
			c := *r
			out = append(out, &c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (f *fakeCatalog) MarkVerified(_ context.Context, vm, id string, mode contracts.VerifyMode, digests []contracts.DiskDigest) (*contracts.BackupRecord, bool, error) {
	ok, err := f.with(vm, id, func(r *contracts.BackupRecord) bool {
		if r.State != contracts.StateCommitted {
			return false
		}
		r.State, r.Verify = contracts.StateVerified, mode
		for _, d := range digests {
			r.Disks[d.Disk].Digest = d.Stored
		}
		return true
	})
	rec, _, _ := f.Get(context.Background(), vm, id)
	return rec, ok, err
}

func (f *fakeCatalog) RecordVerification(_ context.Context, vm, id string, mode contracts.VerifyMode, digests []contracts.DiskDigest) error {
	_, err := f.with(vm, id, func(r *contracts.BackupRecord) bool { r.Verify = mode; return true })
	return err
}

func (f *fakeCatalog) SetDamaged(_ context.Context, vm, id string, damaged bool) (bool, error) {
	return f.with(vm, id, func(r *contracts.BackupRecord) bool {
		changed := r.Damaged != damaged
		r.Damaged = damaged
		return changed
	})
}

// fail is the runtime's FailBackup on this catalog.
func (f *fakeCatalog) FailBackup(_ context.Context, vm, id, reason string) error {
	_, err := f.with(vm, id, func(r *contracts.BackupRecord) bool {
		if r.State.Final() {
			return false
		}
		r.State, r.Error = contracts.StateFailed, reason
		return true
	})
	return err
}

type fakeBad struct {
	mu    sync.Mutex
	marks map[string]contracts.BadChunk
}

func (f *fakeBad) Mark(_ context.Context, b contracts.BadChunk) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.marks == nil {
		f.marks = map[string]contracts.BadChunk{}
	}
	f.marks[b.ID] = b
	return nil
}

func (f *fakeBad) Clear(_ context.Context, id chunk.ID) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.marks, id.String())
	return nil
}

func (f *fakeBad) List(context.Context) ([]contracts.BadChunk, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []contracts.BadChunk
	for _, b := range f.marks {
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

type fakePub struct {
	mu       sync.Mutex
	outcomes []*contracts.BackupOutcome
}

func (f *fakePub) Publish(_ context.Context, subject string, m contracts.Message, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if o, ok := m.(*contracts.BackupOutcome); ok {
		f.outcomes = append(f.outcomes, o)
	}
	return nil
}

type fakePolicies []contracts.Policy

func (f fakePolicies) List(context.Context) ([]contracts.Policy, error) { return f, nil }

// testVerifier is a verifier on fakes and an in-memory repository.
type testVerifier struct {
	*verifier
	cat *fakeCatalog
	bad *fakeBad
	pub *fakePub
}

func newTestVerifier(t interface{ Fatal(...any) }) *testVerifier {
	r, err := repo.OpenWith(context.Background(), objstore.NewMem(), repo.Options{ChunkSize: testChunk})
	if err != nil {
		t.Fatal(err)
	}
	tv := &testVerifier{cat: &fakeCatalog{}, bad: &fakeBad{}, pub: &fakePub{}}
	tv.verifier = &verifier{cat: tv.cat, bad: tv.bad, pub: tv.pub, fail: tv.cat, repo: r, policies: fakePolicies{},
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), sources: source.NewOpener(source.Config{}),
		mode: contracts.VerifyStored, trivialBytes: 2 * testChunk, checkShards: 1}
	return tv
}

var testTime = time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
