package scheduler

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"go.opentelemetry.io/otel/trace/noop"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/catalog"
)

// In-memory ports: the scheduler's logic without a NATS server.

type fakeRecords struct {
	mu   sync.Mutex
	recs map[string]*contracts.BackupRecord // vm/id
}

func (f *fakeRecords) put(r *contracts.BackupRecord) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.recs == nil {
		f.recs = map[string]*contracts.BackupRecord{}
	}
	c := *r
	f.recs[r.VM+"/"+r.ID] = &c
}

func (f *fakeRecords) Get(_ context.Context, vm, id string) (*contracts.BackupRecord, uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.recs[vm+"/"+id]
	if !ok {
		return nil, 0, fmt.Errorf("backup %s of %s: %w", id, vm, catalog.ErrNotFound)
	}
	c := *r
	return &c, 1, nil
}

func (f *fakeRecords) List(_ context.Context, vm string) ([]*contracts.BackupRecord, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*contracts.BackupRecord
	for _, r := range f.recs {
		if r.VM == vm {
			c := *r
			out = append(out, &c)
		}
	}
	return out, nil
}

func (f *fakeRecords) Create(_ context.Context, r *contracts.BackupRecord) (*contracts.BackupRecord, bool, error) {
	f.mu.Lock()
	if old, ok := f.recs[r.VM+"/"+r.ID]; ok {
		f.mu.Unlock()
		return old, false, nil
	}
	f.mu.Unlock()
	f.put(r)
	return r, true, nil
}

type published struct {
	subject, msgID string
	msg            contracts.Message
}

type fakePub struct {
	mu   sync.Mutex
	msgs []published
	err  error // returned (and nothing published) while set
}

func (f *fakePub) Publish(_ context.Context, subject string, m contracts.Message, msgID string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	f.msgs = append(f.msgs, published{subject, msgID, m})
	return nil
}

func (f *fakePub) requests() []*contracts.BackupRequested {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*contracts.BackupRequested
	for _, m := range f.msgs {
		if r, ok := m.msg.(*contracts.BackupRequested); ok {
			out = append(out, r)
		}
	}
	return out
}

type fakeFailures struct {
	mu     sync.Mutex
	failed map[string]string // backup id → reason
}

func (f *fakeFailures) FailBackup(_ context.Context, vm, id, reason string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failed == nil {
		f.failed = map[string]string{}
	}
	f.failed[id] = reason
	return nil
}

func (f *fakeFailures) FailRequest(ctx context.Context, req *contracts.BackupRequested, reason string) error {
	return f.FailBackup(ctx, req.VM, req.BackupID, reason+" (request)")
}

// testScheduler is a scheduler on fakes.
func testScheduler() (*scheduler, *fakeRecords, *fakePub, *fakeFailures) {
	recs, pub, fail := &fakeRecords{}, &fakePub{}, &fakeFailures{}
	s := &scheduler{cat: recs, pub: pub, fail: fail, tracer: noop.NewTracerProvider().Tracer("test"),
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), chunkSize: 64 << 10}
	return s, recs, pub, fail
}
