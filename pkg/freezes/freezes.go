// Package freezes records guests frozen for a snapshot (KV bucket
// contracts.BucketFreezes) so that one never stays frozen: the snapshotter
// that freezes writes the record first and deletes it after the thaw;
// every snapshotter watches the bucket and thaws a guest whose record has
// outlived its ThawBy (the one that froze it died between freeze and
// thaw). Nobody else touches the bucket.
package freezes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/consistency"
)

// Store is the bucket.
type Store struct{ kv jetstream.KeyValue }

// Open binds to the bucket (created by bus.EnsureStreams).
func Open(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	kv, err := js.KeyValue(ctx, contracts.BucketFreezes)
	if err != nil {
		return nil, fmt.Errorf("open freezes: %w", err)
	}
	return &Store{kv: kv}, nil
}

// Journal records the freezes of one backup (consistency.Journal).
func (s *Store) Journal(vm, backupID, source string) consistency.Journal {
	return &journal{s: s, f: contracts.Freeze{Schema: contracts.SchemaVersion, VM: vm, BackupID: backupID, Source: source}}
}

type journal struct {
	s *Store
	f contracts.Freeze
}

func (j *journal) Frozen(ctx context.Context, thawBy time.Time) error {
	j.f.ThawBy = thawBy.UTC()
	b, err := contracts.Encode(&j.f)
	if err != nil {
		return err
	}
	if _, err := j.s.kv.Put(ctx, contracts.FreezeKey(j.f.VM), b); err != nil {
		return fmt.Errorf("record the freeze of %s: %w", j.f.VM, err)
	}
	return nil
}

func (j *journal) Thawed(ctx context.Context) {
	j.s.kv.Delete(ctx, contracts.FreezeKey(j.f.VM)) // a leftover is thawed again: harmless
}

// Overdue returns the freezes whose ThawBy has passed at now.
func (s *Store) Overdue(ctx context.Context, now time.Time) ([]contracts.Freeze, error) {
	lister, err := s.kv.ListKeys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list freezes: %w", err)
	}
	defer lister.Stop()
	var out []contracts.Freeze
	for k := range lister.Keys() {
		e, err := s.kv.Get(ctx, k)
		if err != nil {
			continue
		}
		var f contracts.Freeze
		if contracts.Decode(e.Value(), &f) != nil {
			s.kv.Delete(ctx, k) // unreadable: nothing anyone could thaw
			continue
		}
		if now.After(f.ThawBy) {
			out = append(out, f)
		}
	}
	return out, nil
}

// Done removes a freeze's record once its guest is thawed.
func (s *Store) Done(ctx context.Context, vm string) error {
	return s.kv.Delete(ctx, contracts.FreezeKey(vm))
}

// Watch thaws, every tick until ctx ends, the guests whose freeze is
// overdue, with thaw (the source's agent); a thaw that fails is tried
// again at the next tick.
func (s *Store) Watch(ctx context.Context, tick time.Duration, thaw func(ctx context.Context, source string) error, log *slog.Logger) {
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		overdue, err := s.Overdue(ctx, time.Now())
		if err != nil && ctx.Err() == nil {
			log.WarnContext(ctx, "freeze watch", "err", err)
		}
		for _, f := range overdue {
			tctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			err := thaw(tctx, f.Source)
			cancel()
			if err != nil {
				log.ErrorContext(ctx, "an overdue freeze could not be thawed", "vm", f.VM, "backup", f.BackupID, "err", err)
				continue
			}
			log.WarnContext(ctx, "thawed a guest left frozen (its snapshotter died mid-freeze)", "vm", f.VM, "backup", f.BackupID, "thaw_by", f.ThawBy)
			s.Done(ctx, f.VM)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
