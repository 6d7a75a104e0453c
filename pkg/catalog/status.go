package catalog

// Each VM's outcome summary (contracts.VMStatus), kept beside its records
// under contracts.StatusKey: the fleet view and the per-VM metrics read
// one key per VM, never a VM's whole list of backups.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/bus"
)

// NoteOutcome folds a finished backup into its VM's status: the newest
// verified and the newest failed backup, by finishing time. Idempotent
// and order-free (an older outcome noted late changes nothing), so the
// consumer of outcomes calls it on every delivery.
func (c *Catalog) NoteOutcome(ctx context.Context, vm, id string) (*contracts.VMStatus, error) {
	r, _, err := c.Get(ctx, vm, id)
	if err != nil {
		return nil, err
	}
	if !r.State.Final() {
		return nil, fmt.Errorf("%w: backup %s is %s, not finished", ErrInvalid, id, r.State)
	}
	key := contracts.StatusKey(vm)
	for attempt := 0; attempt < 100; attempt++ {
		st := &contracts.VMStatus{Schema: contracts.SchemaVersion, VM: vm}
		var rev uint64
		e, err := c.kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return nil, fmt.Errorf("status of %s: %w", vm, err)
		default:
			rev = e.Revision()
			if err := json.Unmarshal(e.Value(), st); err != nil || st.VM != vm {
				st = &contracts.VMStatus{Schema: contracts.SchemaVersion, VM: vm} // rebuilt from what comes
			}
		}
		at := r.UpdatedAt // a record made failed before FinishedAt was always set
		if r.FinishedAt != nil {
			at = *r.FinishedAt
		}
		switch {
		case r.State == contracts.StateVerified && (st.LastVerifiedAt == nil || at.After(*st.LastVerifiedAt)):
			st.LastVerified, st.LastVerifiedAt = r.ID, &at
		case r.State == contracts.StateFailed && (st.LastFailedAt == nil || at.After(*st.LastFailedAt)):
			st.LastFailed, st.LastFailedAt, st.LastFailReason = r.ID, &at, r.Error
		default:
			return st, nil // nothing newer
		}
		b, _ := json.Marshal(st)
		if rev == 0 {
			_, err = c.kv.Create(ctx, key, b)
		} else {
			_, err = c.kv.Update(ctx, key, b, rev)
		}
		if errors.Is(err, jetstream.ErrKeyExists) || bus.IsWrongSequence(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("status of %s: %w", vm, err)
		}
		return st, nil
	}
	return nil, fmt.Errorf("status of %s: too much contention", vm)
}

// StatusChange is one VM's status as a watch sees it (Status nil: the key
// was removed).
type StatusChange struct {
	VM     string
	Status *contracts.VMStatus
}

// WatchStatuses sends every VM's status now, then every change, until
// ctx ends; ready is closed once the current ones were sent.
func (c *Catalog) WatchStatuses(ctx context.Context, f func(StatusChange)) (ready <-chan struct{}, err error) {
	w, err := c.kv.Watch(ctx, contracts.StatusPrefix+">")
	if err != nil {
		return nil, fmt.Errorf("watch statuses: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer w.Stop()
		for e := range w.Updates() {
			if e == nil {
				close(done)
				continue
			}
			var st contracts.VMStatus
			if e.Operation() != jetstream.KeyValuePut {
				if vm, ok := statusVM(e.Key()); ok {
					f(StatusChange{VM: vm})
				}
				continue
			}
			if json.Unmarshal(e.Value(), &st) != nil || st.VM == "" {
				continue // not ours to repair: NoteOutcome rewrites it on the next outcome
			}
			f(StatusChange{VM: st.VM, Status: &st})
		}
	}()
	return done, nil
}

func statusVM(key string) (string, bool) {
	enc, ok := strings.CutPrefix(key, contracts.StatusPrefix)
	if !ok {
		return "", false
	}
	vm, err := base64.RawURLEncoding.DecodeString(enc)
	return string(vm), err == nil
}
