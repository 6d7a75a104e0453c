package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/objstore"
)

// Without NATS, records come from their copies: by id, or the newest
// verified one for "latest"; a missing VM or id is ErrNotFound; a copy
// filed under another backup's key is refused, not trusted.
func TestFromCopies(t *testing.T) {
	ctx := context.Background()
	store := objstore.NewMem()
	put := func(vm, id string, state contracts.State, key string) {
		b, _ := json.Marshal(&contracts.BackupRecord{Schema: contracts.SchemaVersion, ID: id, VM: vm, State: state, ChunkSize: 64 << 10})
		if key == "" {
			key = RecordKey(vm, id)
		}
		store.Put(ctx, key, b)
	}
	ids := []string{"01a23600-0000-7000-8000-000000000001", "01a23600-0000-7000-8000-000000000002", "01a23600-0000-7000-8000-000000000003"}
	put("web", ids[0], contracts.StateVerified, "")
	put("web", ids[1], contracts.StateVerified, "")
	put("web", ids[2], contracts.StateFailed, "")
	put("web-2", ids[0], contracts.StateVerified, "") // a VM whose name extends another's
	if r, err := FromCopies(ctx, store, nil, "web", "latest"); err != nil || r.ID != ids[1] {
		t.Fatalf("latest: %+v %v, want %s", r, err, ids[1])
	}
	if r, err := FromCopies(ctx, store, nil, "web", ids[2]); err != nil || r.State != contracts.StateFailed {
		t.Fatalf("by id: %+v %v", r, err)
	}
	if _, err := FromCopies(ctx, store, nil, "db", "latest"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown vm: %v", err)
	}
	if _, err := FromCopies(ctx, store, nil, "web", "01a23600-0000-7000-8000-000000000009"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown id: %v", err)
	}
	put("web", ids[0], contracts.StateVerified, RecordKey("web", "01a23600-0000-7000-8000-000000000004"))
	if _, err := FromCopies(ctx, store, nil, "web", "01a23600-0000-7000-8000-000000000004"); err == nil || !strings.Contains(err.Error(), "holds backup") {
		t.Fatalf("misfiled copy: %v", err)
	}
}
