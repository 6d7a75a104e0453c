// Package catalog owns the backup records: the JetStream KV bucket
// contracts.BucketCatalog for queries, and each record's copy in the
// repository (backups/<vm>/<id>.json), from which Rebuild restores the
// bucket after NATS is lost. Every change is a compare-and-set on the key's
// revision, so concurrent writers (several merge instances, a verifier and
// a failing transfer worker) never lose each other's updates, and a final
// state (verified, failed) is never left. No other package writes either.
package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/bus"
	"github.com/strata-backup/strata/pkg/objstore"
)

// ErrNotFound: no such backup.
var ErrNotFound = errors.New("backup not found")

// ErrUnchanged is returned by an update function to leave a record unchanged.
var ErrUnchanged = errors.New("unchanged")

// Catalog is the KV bucket and the repository's record copies.
type Catalog struct {
	kv    jetstream.KeyValue
	store objstore.Store // nil: read-only (a CLI that only lists)
	seal  Sealer
}

// Sealer is how the repository protects the record copies
// (repo.Repository is one): an encrypted repository seals them and names
// VMs in their keys by a keyed hash, so its bucket names no VM and holds
// no record in plaintext.
type Sealer interface {
	SealObject(key string, plain []byte) []byte
	OpenObject(key string, obj []byte) ([]byte, error)
	NameInKey(name string) string
}

// plainCopies is the Sealer of a plaintext repository.
type plainCopies struct{}

func (plainCopies) SealObject(_ string, p []byte) []byte            { return p }
func (plainCopies) OpenObject(_ string, obj []byte) ([]byte, error) { return obj, nil }
func (plainCopies) NameInKey(name string) string                    { return url.PathEscape(name) }

func orPlain(s Sealer) Sealer {
	if s == nil {
		return plainCopies{}
	}
	return s
}

// Open binds to the bucket (created by bus.EnsureStreams) and the object
// store that holds the record copies (nil: this catalog only reads),
// sealed by seal (nil: a plaintext repository).
func Open(ctx context.Context, js jetstream.JetStream, store objstore.Store, seal Sealer) (*Catalog, error) {
	kv, err := read(ctx, true, func(ctx context.Context) (jetstream.KeyValue, error) {
		return js.KeyValue(ctx, contracts.BucketCatalog)
	})
	if err != nil {
		return nil, fmt.Errorf("open catalog: %w", err)
	}
	return &Catalog{kv: kv, store: store, seal: orPlain(seal)}, nil
}

// RecordKey is the object key of a backup record's copy in a plaintext
// repository.
func RecordKey(vm, backupID string) string { return recordKey(plainCopies{}, vm, backupID) }

func recordKey(seal Sealer, vm, backupID string) string {
	return fmt.Sprintf("backups/%s/%s.json", seal.NameInKey(vm), backupID)
}

// CopyKey is the key of the record copy of backup id of vm in a
// repository sealed by seal (strata copy copies it last).
func CopyKey(seal Sealer, vm, id string) string { return recordKey(orPlain(seal), vm, id) }

// CheckCopy reports whether b is a good record copy to find at key.
func CheckCopy(seal Sealer, key string, b []byte) error {
	_, err := decodeCopy(orPlain(seal), key, b)
	return err
}

// decodeCopy opens and checks the record copy b read from key: it must
// open, decode, validate and belong there.
func decodeCopy(seal Sealer, key string, b []byte) (*contracts.BackupRecord, error) {
	b, err := seal.OpenObject(key, b)
	if err != nil {
		return nil, fmt.Errorf("record copy: %w", err)
	}
	var r contracts.BackupRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("record copy %s: %w", key, err)
	}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("record copy %s: %w", key, err)
	}
	if recordKey(seal, r.VM, r.ID) != key {
		return nil, fmt.Errorf("%w: record copy %s holds backup %s of %q, which belongs at %s", errMisplaced, key, r.ID, r.VM, recordKey(seal, r.VM, r.ID))
	}
	return &r, nil
}

// readCopy reads the record copy at key: the newest version that opens
// and validates, so a copy overwritten or hidden by someone with the
// bucket's keys is read from the version Strata wrote (objstore.GetChecked).
// A copy that is not there at all, or whose every version is bad, is an
// error that says so.
func readCopy(ctx context.Context, store objstore.Store, seal Sealer, key string) (*contracts.BackupRecord, error) {
	var r *contracts.BackupRecord
	_, err := objstore.GetChecked(ctx, store, key, func(b []byte) (err error) {
		if r, err = decodeCopy(seal, key, b); err != nil {
			return &badCopy{err}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// badCopy: a record copy that was read and does not open, decode or
// validate (reported, never guessed at), as opposed to one that could
// not be read (an error of the store: the caller stops).
type badCopy struct{ err error }

func (e *badCopy) Error() string { return e.err.Error() }
func (e *badCopy) Unwrap() error { return e.err }

func isBadCopy(err error) bool {
	var b *badCopy
	return errors.As(err, &b)
}

// errMisplaced: a record copy that is not where its backup's belongs.
var errMisplaced = errors.New("misplaced record copy")

// putCopy writes the record's copy into the repository.
func (c *Catalog) putCopy(ctx context.Context, r *contracts.BackupRecord) error {
	if c.store == nil {
		return errors.New("catalog opened read-only")
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	key := recordKey(c.seal, r.VM, r.ID)
	if err := c.store.Put(ctx, key, c.seal.SealObject(key, b)); err != nil {
		return fmt.Errorf("write backup record %s: %w", key, err)
	}
	return nil
}

func decode(e jetstream.KeyValueEntry) (*contracts.BackupRecord, error) {
	var r contracts.BackupRecord
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, fmt.Errorf("catalog entry %s is corrupt: %w", e.Key(), err)
	}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("catalog entry %s is invalid: %w", e.Key(), err)
	}
	return &r, nil
}

// Reads go to the bucket's stream leader (see bus.kvStream): while a NATS
// node that led it is down, they wait for the next election. readRetries
// attempts of readTimeout each ride that out instead of failing the
// caller (a CLI `ls` in the middle of a node restart).
const (
	readTimeout = 5 * time.Second
	readRetries = 8
)

// read runs one catalog read, again on a timeout or an unanswered request
// until the bucket answers; a definite answer (found or not) is final.
// With bounded false the attempt gets the caller's context as it is: for
// a key lister, which lives on after the call and stops with its context.
func read[T any](ctx context.Context, bounded bool, f func(context.Context) (T, error)) (T, error) {
	for attempt := 1; ; attempt++ {
		actx, cancel := ctx, context.CancelFunc(func() {})
		if bounded {
			actx, cancel = context.WithTimeout(ctx, readTimeout)
		}
		v, err := f(actx)
		cancel()
		if !bus.IsTransient(err) || ctx.Err() != nil || attempt == readRetries {
			return v, err
		}
		time.Sleep(time.Duration(attempt) * 250 * time.Millisecond)
	}
}

func (c *Catalog) get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	return read(ctx, true, func(ctx context.Context) (jetstream.KeyValueEntry, error) { return c.kv.Get(ctx, key) })
}

// Get reads one record.
func (c *Catalog) Get(ctx context.Context, vm, id string) (*contracts.BackupRecord, uint64, error) {
	e, err := c.get(ctx, contracts.CatalogKey(vm, id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, fmt.Errorf("backup %s of vm %q: %w", id, vm, ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read catalog: %w", err)
	}
	r, err := decode(e)
	return r, e.Revision(), err
}

// Create stores a new record, in a state a record may start in
// (contracts.Moves); an existing one is returned unchanged (redelivered
// request), with created=false.
func (c *Catalog) Create(ctx context.Context, r *contracts.BackupRecord) (existing *contracts.BackupRecord, created bool, err error) {
	if !contracts.CanMove(contracts.StateNone, r.State) {
		return nil, false, fmt.Errorf("%w: a backup record is not created %s", ErrIllegalMove, r.State)
	}
	return c.create(ctx, r)
}

// Import stores a record that already lived elsewhere — its copy in a
// repository (Rebuild), or a backup made by another deployment — in a
// final state; an existing one is returned unchanged, with created=false.
func (c *Catalog) Import(ctx context.Context, r *contracts.BackupRecord) (existing *contracts.BackupRecord, created bool, err error) {
	if !r.State.Final() {
		return nil, false, fmt.Errorf("%w: an imported backup record is final, not %s", ErrIllegalMove, r.State)
	}
	return c.create(ctx, r)
}

func (c *Catalog) create(ctx context.Context, r *contracts.BackupRecord) (existing *contracts.BackupRecord, created bool, err error) {
	if err := r.Validate(); err != nil {
		return nil, false, err
	}
	if c.store == nil {
		return nil, false, errors.New("catalog opened read-only")
	}
	b, _ := json.Marshal(r)
	if _, err := c.kv.Create(ctx, contracts.CatalogKey(r.VM, r.ID), b); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			old, _, gerr := c.Get(ctx, r.VM, r.ID)
			return old, false, gerr
		}
		return nil, false, fmt.Errorf("create catalog entry: %w", err)
	}
	// The copy follows the entry: a crash between the two leaves a record
	// only in the bucket, which the next state change copies again.
	if err := c.putCopy(ctx, r); err != nil {
		return nil, false, err
	}
	return r, true, nil
}

// ErrIllegalMove is wrapped by errors about a state change the lifecycle
// (contracts.Moves) does not allow.
var ErrIllegalMove = errors.New("illegal backup state change")

// update applies f to the current record and stores the result by CAS,
// retrying on conflicts: the one way the named transitions below change a
// record. f may return ErrUnchanged to write nothing. A move that
// contracts.Moves does not allow is refused. A change of state or of the
// damaged flag, and any change of a finished record (digests), is copied
// to the repository too; segment progress is not: it is worth nothing once
// NATS is gone.
func (c *Catalog) update(ctx context.Context, vm, id string, f func(*contracts.BackupRecord) error) (*contracts.BackupRecord, error) {
	key := contracts.CatalogKey(vm, id)
	for attempt := 0; attempt < 100; attempt++ {
		r, rev, err := c.Get(ctx, vm, id)
		if err != nil {
			return nil, err
		}
		was, wasDamaged := r.State, r.Damaged
		if err := f(r); err != nil {
			if errors.Is(err, ErrUnchanged) {
				return r, nil
			}
			return nil, err
		}
		if !contracts.CanMove(was, r.State) {
			return nil, fmt.Errorf("%w: backup %s is %s; refusing to change it to %s", ErrIllegalMove, id, was, r.State)
		}
		r.UpdatedAt = time.Now().UTC()
		if err := r.Validate(); err != nil {
			return nil, err
		}
		b, _ := json.Marshal(r)
		if c.store == nil {
			return nil, errors.New("catalog opened read-only")
		}
		if _, err := c.kv.Update(ctx, key, b, rev); err != nil {
			if errors.Is(err, jetstream.ErrKeyExists) || bus.IsWrongSequence(err) {
				continue // someone else wrote first: re-read and re-apply
			}
			return nil, fmt.Errorf("update catalog entry %s: %w", key, err)
		}
		if r.State != was || r.Damaged != wasDamaged || r.State.Final() {
			if err := c.putCopy(ctx, r); err != nil {
				return nil, err
			}
		}
		return r, nil
	}
	return nil, fmt.Errorf("update catalog entry %s: too much contention", key)
}

// List returns the records of one VM (all VMs when vm is empty), oldest first.
func (c *Catalog) List(ctx context.Context, vm string) ([]*contracts.BackupRecord, error) {
	filter := "b.>"
	if vm != "" {
		filter = contracts.CatalogVMPrefix(vm) + "*"
	}
	lister, err := read(ctx, false, func(ctx context.Context) (jetstream.KeyLister, error) { return c.kv.ListKeysFiltered(ctx, filter) })
	if err != nil {
		return nil, fmt.Errorf("list catalog: %w", err)
	}
	var out []*contracts.BackupRecord
	for key := range lister.Keys() {
		e, err := c.get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read catalog entry %s: %w", key, err)
		}
		r, err := decode(e)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	lister.Stop() // the lister stops itself after the last key; this only covers an early return
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// Latest returns the newest verified backup of vm.
func (c *Catalog) Latest(ctx context.Context, vm string) (*contracts.BackupRecord, error) {
	all, err := c.List(ctx, vm)
	if err != nil {
		return nil, err
	}
	for i := len(all) - 1; i >= 0; i-- {
		if all[i].State == contracts.StateVerified {
			return all[i], nil
		}
	}
	return nil, fmt.Errorf("no verified backup of vm %q: %w", vm, ErrNotFound)
}

// Fail moves a non-final backup to failed with a reason. It reports
// whether this call made the change (false when already final).
func (c *Catalog) Fail(ctx context.Context, vm, id, reason string) (bool, error) {
	changed := false
	_, err := c.update(ctx, vm, id, func(r *contracts.BackupRecord) error {
		if r.State.Final() {
			return ErrUnchanged
		}
		now := time.Now().UTC()
		r.State, r.Error, r.FinishedAt = contracts.StateFailed, reason, &now
		changed = true
		return nil
	})
	return changed, err
}

// DeleteCopy removes a backup's record copy from the repository (the first
// half of removing a backup: until Delete, it stays listed).
func (c *Catalog) DeleteCopy(ctx context.Context, vm, id string) error {
	if c.store == nil {
		return errors.New("catalog opened read-only")
	}
	return c.store.Delete(ctx, recordKey(c.seal, vm, id))
}

// Delete removes a backup's entry.
func (c *Catalog) Delete(ctx context.Context, vm, id string) error {
	if err := c.kv.Delete(ctx, contracts.CatalogKey(vm, id)); err != nil {
		return fmt.Errorf("delete catalog entry of %s: %w", id, err)
	}
	return nil
}

// Watch calls f with the backup's record now (if it exists) and after every
// change, until f returns true, ctx ends, or the watch fails.
func (c *Catalog) Watch(ctx context.Context, vm, id string, f func(*contracts.BackupRecord) bool) error {
	w, err := c.kv.Watch(ctx, contracts.CatalogKey(vm, id))
	if err != nil {
		return fmt.Errorf("watch backup %s: %w", id, err)
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("catalog watch ended")
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			r, err := decode(e)
			if err != nil {
				return err
			}
			if f(r) {
				return nil
			}
		}
	}
}

// RebuildReport says what Rebuild did.
type RebuildReport struct {
	Records  int      `json:"records"`  // record copies found in the repository
	Restored int      `json:"restored"` // entries created from them
	Present  int      `json:"present"`  // entries the bucket already had
	Failed   int      `json:"failed"`   // restored unfinished backups, recorded failed
	Refused  []string `json:"refused"`  // copies that could not be read, with why
}

// Rebuild restores the bucket from the record copies in the repository:
// disaster recovery after NATS and its storage are lost. Entries the bucket
// has are left alone. A copy of a backup that had not finished is restored
// as failed (whatever ran it is gone with NATS). Unreadable copies are
// reported, never guessed at. Idempotent.
func (c *Catalog) Rebuild(ctx context.Context) (*RebuildReport, error) {
	if c.store == nil {
		return nil, errors.New("catalog opened read-only")
	}
	rep := &RebuildReport{Refused: []string{}}
	err := objstore.ListAll(ctx, c.store, "backups/", func(in objstore.Info) error {
		if !strings.HasSuffix(in.Key, ".json") {
			return nil
		}
		rep.Records++
		rp, err := readCopy(ctx, c.store, c.seal, in.Key)
		if err != nil && !isBadCopy(err) {
			return fmt.Errorf("read %s: %w", in.Key, err)
		}
		if err != nil {
			rep.Refused = append(rep.Refused, fmt.Sprintf("%s: %v", in.Key, err))
			return nil
		}
		r := *rp
		unfinished := !r.State.Final()
		if unfinished {
			now := time.Now().UTC()
			r.State, r.Error, r.FinishedAt = contracts.StateFailed, "unfinished when the catalog was rebuilt from the repository", &now
		}
		_, created, err := c.Import(ctx, &r)
		switch {
		case err != nil:
			return err
		case created:
			rep.Restored++
			if unfinished {
				rep.Failed++
			}
		default:
			rep.Present++
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("rebuild catalog: %w", err)
	}
	return rep, nil
}

// ListCopies lists the backup records of vm ("" for every VM) from their
// copies in the repository, with no NATS (strata ls --repo), by VM and
// then creation order. A copy that does not open or decode is reported in
// bad and left out. It costs O(the VM's backups), or O(all backups) for
// every VM: an operator's question, never asked on the backup path.
func ListCopies(ctx context.Context, store objstore.Store, seal Sealer, vm string) (recs []*contracts.BackupRecord, bad []string, err error) {
	seal = orPlain(seal)
	prefix := "backups/"
	if vm != "" {
		prefix = strings.TrimSuffix(recordKey(seal, vm, ""), ".json")
	}
	err = objstore.ListAll(ctx, store, prefix, func(in objstore.Info) error {
		if !strings.HasSuffix(in.Key, ".json") {
			return nil
		}
		r, err := readCopy(ctx, store, seal, in.Key)
		if err != nil && !isBadCopy(err) {
			return fmt.Errorf("read %s: %w", in.Key, err)
		}
		if err != nil {
			bad = append(bad, err.Error())
			return nil
		}
		recs = append(recs, r)
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list record copies: %w", err)
	}
	sort.Slice(recs, func(i, j int) bool {
		if recs[i].VM != recs[j].VM {
			return recs[i].VM < recs[j].VM
		}
		return recs[i].ID < recs[j].ID // UUIDv7: creation order
	})
	return recs, bad, nil
}

// FromCopies reads backup records from their copies in the repository,
// with no NATS: restore and serve at a site that lost its NATS cluster.
// id "latest" is the newest verified backup of vm. Listing one VM's
// copies costs O(its backups), never O(all backups).
func FromCopies(ctx context.Context, store objstore.Store, seal Sealer, vm, id string) (*contracts.BackupRecord, error) {
	seal = orPlain(seal)
	read := func(key string) (*contracts.BackupRecord, error) {
		r, err := readCopy(ctx, store, seal, key)
		switch {
		case err == nil || isBadCopy(err):
			return r, err
		case errors.Is(err, objstore.ErrNotFound):
			return nil, fmt.Errorf("backup %s of vm %q: no record copy in the repository: %w", id, vm, ErrNotFound)
		}
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	if id != "latest" {
		return read(recordKey(seal, vm, id))
	}
	var keys []string
	prefix := strings.TrimSuffix(recordKey(seal, vm, ""), ".json")
	if err := objstore.ListAll(ctx, store, prefix, func(in objstore.Info) error {
		if strings.HasSuffix(in.Key, ".json") {
			keys = append(keys, in.Key)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list record copies of vm %q: %w", vm, err)
	}
	// Backup ids are UUIDv7: their order is their creation order.
	sort.Sort(sort.Reverse(sort.StringSlice(keys)))
	for _, k := range keys {
		r, err := read(k)
		if err != nil {
			return nil, err
		}
		if r.State == contracts.StateVerified {
			return r, nil
		}
	}
	return nil, fmt.Errorf("no verified backup of vm %q in the repository's record copies: %w", vm, ErrNotFound)
}
