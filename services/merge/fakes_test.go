package merge

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/catalog"
)

// In-memory fakes of merge's ports (merge.go): enough of the catalog's
// transitions, the results stream and the bus to unit-test merge's logic
// without a NATS server. The real ones run in the integration tests.

type fakeRecords struct {
	mu      sync.Mutex
	recs    map[string]*contracts.BackupRecord
	commits int
}

func newFakeRecords(recs ...*contracts.BackupRecord) *fakeRecords {
	f := &fakeRecords{recs: map[string]*contracts.BackupRecord{}}
	for _, r := range recs {
		f.recs[r.VM+"/"+r.ID] = clone(r)
	}
	return f
}

func clone(r *contracts.BackupRecord) *contracts.BackupRecord {
	b, _ := json.Marshal(r)
	var c contracts.BackupRecord
	json.Unmarshal(b, &c)
	return &c
}

func (f *fakeRecords) Get(_ context.Context, vm, id string) (*contracts.BackupRecord, uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.recs[vm+"/"+id]
	if !ok {
		return nil, 0, fmt.Errorf("backup %s: %w", id, catalog.ErrNotFound)
	}
	return clone(r), 1, nil
}

func (f *fakeRecords) RecordSegment(_ context.Context, vm, id string, s catalog.SegmentResult) (*contracts.BackupRecord, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.recs[vm+"/"+id]
	if !ok {
		return nil, false, catalog.ErrNotFound
	}
	if r.State != contracts.StateTransferring {
		return clone(r), false, nil
	}
	if s.Disk >= len(r.Disks) || s.Index >= r.Disks[s.Disk].Segments {
		return nil, false, catalog.ErrInvalid
	}
	done := r.Disks[s.Disk].MarkSegmentDone(s.Index)
	if done {
		r.Disks[s.Disk].UploadedChunks += s.UploadedChunks
	}
	return clone(r), done, nil
}

func (f *fakeRecords) Commit(_ context.Context, vm, id string, disks []catalog.CommittedDisk) (*contracts.BackupRecord, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.recs[vm+"/"+id]
	if r.State != contracts.StateTransferring {
		return clone(r), false, nil
	}
	r.State = contracts.StateCommitted
	for i, d := range disks {
		r.Disks[i].Manifest, r.Disks[i].Chunks, r.Disks[i].ZeroChunks = d.Manifest, d.Chunks, d.ZeroChunks
	}
	f.commits++
	return clone(r), true, nil
}

func (f *fakeRecords) List(_ context.Context, vm string) ([]*contracts.BackupRecord, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*contracts.BackupRecord
	for _, r := range f.recs {
		if r.VM == vm {
			out = append(out, clone(r))
		}
	}
	sortRecords(out)
	return out, nil
}

func (f *fakeRecords) DeleteCopy(context.Context, string, string) error { return nil }

func (f *fakeRecords) Delete(_ context.Context, vm, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.recs, vm+"/"+id)
	return nil
}

type fakeResults struct {
	mu     sync.Mutex
	msgs   map[string][]byte
	purged []string
	// lag: reads of a subject answer not found this many times first, as a
	// replica behind the stream's leader does
	lag    int
	lagged map[string]int
}

func (f *fakeResults) put(d *contracts.SegmentDone) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.msgs == nil {
		f.msgs = map[string][]byte{}
	}
	b, _ := json.Marshal(d)
	f.msgs[contracts.SegmentDoneSubject(d.BackupID, d.Disk, d.Index)] = b
}

func (f *fakeResults) GetLastMsgForSubject(_ context.Context, subject string) (*jetstream.RawStreamMsg, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.msgs[subject]
	if f.lagged == nil {
		f.lagged = map[string]int{}
	}
	if f.lagged[subject] < f.lag {
		f.lagged[subject]++
		ok = false
	}
	if !ok {
		return nil, jetstream.ErrMsgNotFound
	}
	return &jetstream.RawStreamMsg{Subject: subject, Data: b}, nil
}

func (f *fakeResults) Purge(context.Context, ...jetstream.StreamPurgeOpt) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.purged = append(f.purged, "purge")
	return nil
}

type fakeBus struct {
	mu   sync.Mutex
	sent []contracts.Message
}

func (f *fakeBus) Publish(_ context.Context, _ string, m contracts.Message, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent = append(f.sent, m)
	return nil
}

// sortRecords orders records as catalog.List does: oldest first.
func sortRecords(rs []*contracts.BackupRecord) {
	slices.SortFunc(rs, func(a, b *contracts.BackupRecord) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
}
