// Package badchunks keeps the marks of chunks found corrupt or missing, in
// their own KV bucket (contracts.BucketBadChunks). The verifier and
// `strata check` write them; dedup watches them and answers a marked chunk
// "missing", so the next backup holding those bytes stores them again; a
// check that reads a marked chunk back good clears its mark. Nobody else
// touches the bucket.
package badchunks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
)

// Marks is the bucket.
type Marks struct{ kv jetstream.KeyValue }

// Open binds to the bucket (created by bus.EnsureStreams).
func Open(ctx context.Context, js jetstream.JetStream) (*Marks, error) {
	kv, err := js.KeyValue(ctx, contracts.BucketBadChunks)
	if err != nil {
		return nil, fmt.Errorf("open bad-chunk marks: %w", err)
	}
	return &Marks{kv: kv}, nil
}

// Mark records a bad chunk (again: the newest reason wins).
func (m *Marks) Mark(ctx context.Context, b contracts.BadChunk) error {
	if err := contracts.ValidChunkID(b.ID); err != nil {
		return err
	}
	v, _ := json.Marshal(b)
	if _, err := m.kv.Put(ctx, b.ID, v); err != nil {
		return fmt.Errorf("mark chunk %s bad: %w", b.ID, err)
	}
	return nil
}

// Clear removes a chunk's mark (it reads back good now).
func (m *Marks) Clear(ctx context.Context, id chunk.ID) error {
	if err := m.kv.Delete(ctx, id.String()); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("clear mark of chunk %s: %w", id, err)
	}
	return nil
}

// List returns every mark. An unreadable entry is an error: a check must
// not report healthy over a mark it could not read.
func (m *Marks) List(ctx context.Context) ([]contracts.BadChunk, error) {
	lister, err := m.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list bad chunks: %w", err)
	}
	defer lister.Stop()
	var out []contracts.BadChunk
	for key := range lister.Keys() {
		e, err := m.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var b contracts.BadChunk
		if err := json.Unmarshal(e.Value(), &b); err != nil || contracts.ValidChunkID(b.ID) != nil || b.ID != key {
			return nil, fmt.Errorf("bad chunk entry %s: unreadable", key)
		}
		out = append(out, b)
	}
	return out, nil
}

// Watch calls f for every mark now and for every later change (bad false:
// cleared) until ctx ends.
func (m *Marks) Watch(ctx context.Context, f func(id chunk.ID, bad bool)) error {
	w, err := m.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch bad chunks: %w", err)
	}
	go func() {
		defer w.Stop()
		for e := range w.Updates() {
			if e == nil {
				continue
			}
			id, err := chunk.ParseID(e.Key())
			if err != nil {
				continue
			}
			f(id, e.Operation() == jetstream.KeyValuePut)
		}
	}()
	return nil
}
