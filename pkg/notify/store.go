// Package notify sends job reports: after each backup's outcome, one
// report to each notification target that wants it — an e-mail over SMTP
// or a signed JSON webhook. Targets live in the JetStream KV bucket
// contracts.BucketNotify; a report delivered is marked in
// contracts.BucketNotifySent, so that a redelivered outcome sends none
// again, and every report carries a stable id (Message-ID, the
// X-Strata-Delivery header) by which a receiver recognises the one
// resent after a crash between its delivery and that mark.
package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-backup/strata/contracts"
)

// Store is the notification targets.
type Store struct{ kv jetstream.KeyValue }

// Open binds to the targets' bucket (made by bus.EnsureStreams).
func Open(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	kv, err := js.KeyValue(ctx, contracts.BucketNotify)
	if err != nil {
		return nil, fmt.Errorf("open notification targets: %w", err)
	}
	return &Store{kv: kv}, nil
}

// Put stores a target (normalized and validated).
func (s *Store) Put(ctx context.Context, t *contracts.NotifyTarget) error {
	t.Normalize()
	if err := t.Validate(); err != nil {
		return err
	}
	b, _ := json.Marshal(t)
	if _, err := s.kv.Put(ctx, contracts.NotifyKey(t.Name), b); err != nil {
		return fmt.Errorf("store target %s: %w", t.Name, err)
	}
	return nil
}

// ErrNotFound: no such target.
var ErrNotFound = errors.New("no such notification target")

// Delete removes a target.
func (s *Store) Delete(ctx context.Context, name string) error {
	if _, err := s.kv.Get(ctx, contracts.NotifyKey(name)); errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	return s.kv.Delete(ctx, contracts.NotifyKey(name))
}

// List returns every target, by name; a stored value that is not a valid
// target is skipped (and reported in bad).
func (s *Store) List(ctx context.Context) (targets []contracts.NotifyTarget, bad []string, err error) {
	keys, err := s.kv.ListKeysFiltered(ctx, "t.>")
	if err != nil {
		return nil, nil, fmt.Errorf("list targets: %w", err)
	}
	for k := range keys.Keys() {
		e, err := s.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("target %s: %w", k, err)
		}
		var t contracts.NotifyTarget
		if err := contracts.Decode(e.Value(), &t); err != nil {
			bad = append(bad, fmt.Sprintf("%s: %v", strings.TrimPrefix(k, "t."), err))
			continue
		}
		targets = append(targets, t)
	}
	sort.Slice(targets, func(i, j int) bool { return targets[i].Name < targets[j].Name })
	return targets, bad, nil
}
