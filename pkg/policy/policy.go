// Package policy keeps the backup policies (KV bucket
// contracts.BucketPolicies): the CLI writes them, the scheduler watches
// them, merge reads a VM's retention rules. Nobody else touches the bucket.
package policy

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/schedule"
)

// Store is the bucket.
type Store struct{ kv jetstream.KeyValue }

// Open binds to the bucket (created by bus.EnsureStreams).
func Open(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	kv, err := js.KeyValue(ctx, contracts.BucketPolicies)
	if err != nil {
		return nil, fmt.Errorf("open policies: %w", err)
	}
	return &Store{kv: kv}, nil
}

// Put validates and stores a VM's policy (replacing any).
func (s *Store) Put(ctx context.Context, p *contracts.Policy) error {
	if _, err := schedule.Parse(p.Schedule); err != nil {
		return err
	}
	b, err := contracts.Encode(p)
	if err != nil {
		return err
	}
	if _, err := s.kv.Put(ctx, contracts.PolicyKey(p.VM), b); err != nil {
		return fmt.Errorf("store policy of %s: %w", p.VM, err)
	}
	return nil
}

// Get reads a VM's policy; ok is false when it has none.
func (s *Store) Get(ctx context.Context, vm string) (p contracts.Policy, ok bool, err error) {
	e, err := s.kv.Get(ctx, contracts.PolicyKey(vm))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return p, false, nil
	}
	if err != nil {
		return p, false, fmt.Errorf("read policy of %s: %w", vm, err)
	}
	if err := contracts.Decode(e.Value(), &p); err != nil {
		return p, false, fmt.Errorf("policy of %s: %w", vm, err)
	}
	return p, true, nil
}

// List returns every readable policy.
func (s *Store) List(ctx context.Context) ([]contracts.Policy, error) {
	lister, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list policies: %w", err)
	}
	defer lister.Stop()
	var out []contracts.Policy
	for k := range lister.Keys() {
		e, err := s.kv.Get(ctx, k)
		if err != nil {
			continue
		}
		var p contracts.Policy
		if contracts.Decode(e.Value(), &p) == nil {
			out = append(out, p)
		}
	}
	return out, nil
}

// Delete removes a VM's policy.
func (s *Store) Delete(ctx context.Context, vm string) error {
	if err := s.kv.Delete(ctx, contracts.PolicyKey(vm)); err != nil {
		return fmt.Errorf("remove policy of %s: %w", vm, err)
	}
	return nil
}

// Change is one policy as a watch sees it: Policy nil when it was removed,
// Err set when the stored value is not a valid policy.
type Change struct {
	Key    string
	Policy *contracts.Policy
	Err    error
}

// Watch sends every policy now and every later change until ctx ends.
func (s *Store) Watch(ctx context.Context) (<-chan Change, error) {
	w, err := s.kv.WatchAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("watch policies: %w", err)
	}
	out := make(chan Change)
	go func() {
		defer close(out)
		defer w.Stop()
		for e := range w.Updates() {
			if e == nil {
				continue // end of the initial values
			}
			c := Change{Key: e.Key()}
			if e.Operation() == jetstream.KeyValuePut {
				var p contracts.Policy
				if c.Err = contracts.Decode(e.Value(), &p); c.Err == nil {
					_, c.Err = schedule.Parse(p.Schedule)
				}
				if c.Err == nil {
					c.Policy = &p
				}
			}
			select {
			case out <- c:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}
