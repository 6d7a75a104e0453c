// Package mirror keeps standby mirrors (XSIBackup's OneDiff, Xen
// Orchestra's continuous replication): a VM's disk kept, as a raw disk
// ready to start, at the point of its latest verified backup. Each update
// writes only the chunks that differ between the point the target holds
// and the new one (known from the two manifests), then checks the target
// (trivially: its size and first MiB; or, certified, every chunk against
// the backup). A target changed behind Strata's back is refused until a
// reseed, which compares every chunk and writes the ones that differ.
// The mirrors and the point each holds live in the KV bucket
// contracts.BucketMirrors; only this package writes it.
package mirror

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/nbd"
	"github.com/strata-backup/strata/pkg/repo"
)

// Store is the bucket of mirrors.
type Store struct{ kv jetstream.KeyValue }

// Open binds to the bucket (created by bus.EnsureStreams).
func Open(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	kv, err := js.KeyValue(ctx, contracts.BucketMirrors)
	if err != nil {
		return nil, fmt.Errorf("open mirrors: %w", err)
	}
	return &Store{kv: kv}, nil
}

// Get reads a VM's mirror; ok is false when it has none.
func (s *Store) Get(ctx context.Context, vm string) (m contracts.Mirror, ok bool, err error) {
	e, err := s.kv.Get(ctx, contracts.MirrorKey(vm))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return m, false, nil
	}
	if err != nil {
		return m, false, fmt.Errorf("read mirror of %s: %w", vm, err)
	}
	if err := contracts.Decode(e.Value(), &m); err != nil {
		return m, false, fmt.Errorf("mirror of %s: %w", vm, err)
	}
	return m, true, nil
}

// Set stores a VM's mirror: a new target starts with no point (the next
// update seeds it: compares every chunk).
func (s *Store) Set(ctx context.Context, vm, target string, disk int, certify bool) (*contracts.Mirror, error) {
	if _, err := ParseTarget(target); err != nil {
		return nil, err
	}
	m := &contracts.Mirror{Schema: contracts.SchemaVersion, VM: vm, Target: target, Disk: disk, Certify: certify, UpdatedAt: time.Now().UTC()}
	if old, ok, err := s.Get(ctx, vm); err != nil {
		return nil, err
	} else if ok && old.Target == target && old.Disk == disk {
		old.Certify, old.UpdatedAt = certify, m.UpdatedAt
		m = &old
	}
	return m, s.put(ctx, m)
}

func (s *Store) put(ctx context.Context, m *contracts.Mirror) error {
	b, err := contracts.Encode(m)
	if err != nil {
		return err
	}
	if _, err := s.kv.Put(ctx, contracts.MirrorKey(m.VM), b); err != nil {
		return fmt.Errorf("store mirror of %s: %w", m.VM, err)
	}
	return nil
}

// List returns every mirror.
func (s *Store) List(ctx context.Context) ([]contracts.Mirror, error) {
	lister, err := s.kv.ListKeys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list mirrors: %w", err)
	}
	defer lister.Stop()
	var out []contracts.Mirror
	for k := range lister.Keys() {
		e, err := s.kv.Get(ctx, k)
		if err != nil {
			continue
		}
		var m contracts.Mirror
		if contracts.Decode(e.Value(), &m) == nil {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].VM < out[j].VM })
	return out, nil
}

// Delete removes a VM's mirror (the target itself is left as it is).
func (s *Store) Delete(ctx context.Context, vm string) error {
	if err := s.kv.Delete(ctx, contracts.MirrorKey(vm)); err != nil {
		return fmt.Errorf("delete mirror of %s: %w", vm, err)
	}
	return nil
}

// Target is a mirror's disk.
type Target interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	Size() int64
	// Resize makes the target size bytes (a file); a fixed-size target
	// refuses any other size.
	Resize(size int64) error
	Flush() error
	Close() error
}

// Spec is a parsed target.
type Spec struct {
	Path           string // file
	Addr, Export   string // nbd
	NBD            bool
	Original, Kind string
}

// ParseTarget checks a target URL: file:///absolute/path (a raw file,
// created when missing) or nbd://host:port/export (a writable export,
// e.g. qemu-nbd of a libvirt domain's disk while the domain is shut off).
func ParseTarget(spec string) (Spec, error) {
	u, err := url.Parse(spec)
	if err != nil {
		return Spec{}, fmt.Errorf("mirror target %q: %w", spec, err)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" || !filepath.IsAbs(u.Path) || u.RawQuery != "" {
			return Spec{}, fmt.Errorf("mirror target %q: a file is file:///absolute/path", spec)
		}
		return Spec{Path: filepath.Clean(u.Path), Original: spec, Kind: "file"}, nil
	case "nbd":
		if u.Host == "" || u.Port() == "" || u.RawQuery != "" {
			return Spec{}, fmt.Errorf("mirror target %q: want nbd://host:port/export", spec)
		}
		return Spec{Addr: u.Host, Export: strings.TrimPrefix(u.Path, "/"), NBD: true, Original: spec, Kind: "nbd"}, nil
	}
	return Spec{}, fmt.Errorf("mirror target %q: want file:///path or nbd://host:port/export", spec)
}

// OpenTarget opens a target for reading and writing.
func OpenTarget(spec string) (Target, error) {
	s, err := ParseTarget(spec)
	if err != nil {
		return nil, err
	}
	if s.NBD {
		c, err := nbd.Dial(s.Addr, s.Export)
		if err != nil {
			return nil, fmt.Errorf("mirror target %s: %w", spec, err)
		}
		if c.ReadOnly() {
			c.Close()
			return nil, fmt.Errorf("mirror target %s: the export is read-only", spec)
		}
		return nbdTarget{c}, nil
	}
	f, err := os.OpenFile(s.Path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("mirror target %s: %w", spec, err)
	}
	return &fileTarget{f: f}, nil
}

type nbdTarget struct{ *nbd.Conn }

func (t nbdTarget) Resize(size int64) error {
	if size != t.Size() {
		return fmt.Errorf("the export is %d bytes, the disk %d", t.Size(), size)
	}
	return nil
}

type fileTarget struct{ f *os.File }

func (t *fileTarget) ReadAt(p []byte, off int64) (int, error)  { return t.f.ReadAt(p, off) }
func (t *fileTarget) WriteAt(p []byte, off int64) (int, error) { return t.f.WriteAt(p, off) }
func (t *fileTarget) Flush() error                             { return t.f.Sync() }
func (t *fileTarget) Close() error                             { return t.f.Close() }
func (t *fileTarget) Resize(size int64) error                  { return t.f.Truncate(size) }
func (t *fileTarget) Size() int64 {
	fi, err := t.f.Stat()
	if err != nil {
		return -1
	}
	return fi.Size()
}

// ErrChanged: the target does not hold what the last update wrote.
var ErrChanged = errors.New("the mirror target was changed behind Strata's back")

// guardSample is how many of the chunks an update wrote are checked
// before the next one (beside the first MiB).
const guardSample = 64

// Result is what an update did.
type Result struct {
	BytesWritten, ChunksWritten int64
	Check                       string
}

// Update brings m's target to the point of backup rec (its disk m.Disk),
// and records the result in m (Point, Guard, counters; Error and
// NeedsReseed on failure). prev is the manifest of the point the target
// holds (nil: none known, or a reseed: every chunk is compared). The
// caller stores m.
func Update(ctx context.Context, r *repo.Repository, m *contracts.Mirror, rec *contracts.BackupRecord, prev *manifest.Manifest, reseed bool) (Result, error) {
	res, err := update(ctx, r, m, rec, prev, reseed)
	now := time.Now().UTC()
	m.UpdatedAt = now
	if err != nil {
		m.Error = err.Error()
		if errors.Is(err, ErrChanged) {
			m.NeedsReseed = true
		}
		return res, err
	}
	m.Error, m.NeedsReseed, m.SyncedAt = "", false, &now
	m.BytesWritten, m.ChunksWritten, m.Check = res.BytesWritten, res.ChunksWritten, res.Check
	return res, nil
}

func update(ctx context.Context, r *repo.Repository, m *contracts.Mirror, rec *contracts.BackupRecord, prev *manifest.Manifest, reseed bool) (Result, error) {
	var res Result
	if m.Disk >= len(rec.Disks) {
		return res, fmt.Errorf("backup %s of %s has %d disks: no disk %d", rec.ID, rec.VM, len(rec.Disks), m.Disk)
	}
	man, err := r.GetManifest(ctx, rec.Disks[m.Disk].Manifest)
	if err != nil {
		return res, err
	}
	if m.NeedsReseed && !reseed {
		return res, fmt.Errorf("%w: run strata mirror reseed --vm %s", ErrChanged, m.VM)
	}
	t, err := OpenTarget(m.Target)
	if err != nil {
		return res, err
	}
	defer t.Close()
	compare := reseed || m.Point == "" || prev == nil || prev.ChunkSize != man.ChunkSize || prev.DiskSize != man.DiskSize
	if m.Point != "" && !reseed {
		if err := checkGuard(r, t, m.Guard, man.ChunkSize); err != nil {
			return res, err
		}
	}
	if t.Size() != man.DiskSize {
		if m.Point != "" && !reseed && prev != nil && prev.DiskSize == t.Size() {
			compare = true // the disk grew or shrank: every chunk compared
		} else if m.Point != "" && !reseed {
			return res, fmt.Errorf("%w: it is %d bytes, the point it holds %d", ErrChanged, t.Size(), prevSize(prev))
		}
		if err := t.Resize(man.DiskSize); err != nil {
			return res, fmt.Errorf("mirror target %s: %w", m.Target, err)
		}
	}
	var todo []int64
	if compare {
		for i := range man.Count() {
			todo = append(todo, i)
		}
	} else {
		for i := range man.Changed(prev) {
			todo = append(todo, i)
		}
	}
	var written, chunks atomic.Int64
	var mu sync.Mutex
	var wrote []int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	cs := int64(man.ChunkSize)
	for _, i := range todo {
		g.Go(func() error {
			off := i * cs
			n := min(cs, man.DiskSize-off)
			var data []byte
			if ref := man.Ref(i); ref.ID.IsZero() {
				data = make([]byte, n)
			} else {
				d, err := r.ReadChunk(gctx, ref.ID, ref.Loc)
				if err != nil {
					return err
				}
				data = d
			}
			if compare {
				have := make([]byte, len(data))
				if _, err := t.ReadAt(have, off); err == nil && bytes.Equal(have, data) {
					return nil
				}
			}
			if _, err := t.WriteAt(data, off); err != nil {
				return fmt.Errorf("mirror target %s: %w", m.Target, err)
			}
			written.Add(int64(len(data)))
			chunks.Add(1)
			mu.Lock()
			wrote = append(wrote, i)
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return res, err
	}
	if err := t.Flush(); err != nil {
		return res, fmt.Errorf("mirror target %s: flush: %w", m.Target, err)
	}
	res.BytesWritten, res.ChunksWritten = written.Load(), chunks.Load()
	// The check: trivial (size and first MiB), or every chunk.
	check := "trivial"
	upto := min(man.Count(), (1<<20+cs-1)/cs)
	if m.Certify {
		check, upto = "certified", man.Count()
	}
	if t.Size() != man.DiskSize {
		return res, fmt.Errorf("mirror target %s is %d bytes after the update, the disk %d", m.Target, t.Size(), man.DiskSize)
	}
	for i := range upto {
		if err := holds(r, t, i, man.ID(i), cs, man.DiskSize); err != nil {
			return res, fmt.Errorf("mirror target %s failed the %s check after the update: %w", m.Target, check, err)
		}
	}
	if reseed {
		check = "reseeded, " + check
	}
	res.Check = check
	m.Point = rec.ID
	m.Guard = guard(man, wrote)
	return res, nil
}

func prevSize(prev *manifest.Manifest) int64 {
	if prev == nil {
		return -1
	}
	return prev.DiskSize
}

// guard picks the chunks checked before the next update: those of the
// first MiB and a sample of what was just written.
func guard(man *manifest.Manifest, wrote []int64) []contracts.MirrorChunk {
	cs := int64(man.ChunkSize)
	pick := map[int64]bool{}
	for i := int64(0); i < man.Count() && i*cs < 1<<20; i++ {
		pick[i] = true
	}
	rand.Shuffle(len(wrote), func(a, b int) { wrote[a], wrote[b] = wrote[b], wrote[a] })
	for _, i := range wrote[:min(len(wrote), guardSample)] {
		pick[i] = true
	}
	var g []contracts.MirrorChunk
	for i := range pick {
		g = append(g, contracts.MirrorChunk{Index: i, ID: man.ID(i).String()})
	}
	sort.Slice(g, func(a, b int) bool { return g[a].Index < g[b].Index })
	return g
}

func checkGuard(r *repo.Repository, t Target, g []contracts.MirrorChunk, chunkSize int) error {
	size := t.Size()
	for _, c := range g {
		id, err := chunk.ParseID(c.ID)
		if err != nil {
			return fmt.Errorf("mirror guard: %w", err)
		}
		if err := holds(r, t, c.Index, id, int64(chunkSize), size); err != nil {
			return fmt.Errorf("%w (%v): run strata mirror reseed", ErrChanged, err)
		}
	}
	return nil
}

// holds checks that chunk i of the target is the chunk id.
func holds(r *repo.Repository, t Target, i int64, id chunk.ID, cs, size int64) error {
	off := i * cs
	if off >= size {
		return fmt.Errorf("chunk %d is past the target's end", i)
	}
	b := make([]byte, min(cs, size-off))
	if _, err := t.ReadAt(b, off); err != nil {
		return fmt.Errorf("chunk %d: %w", i, err)
	}
	if id.IsZero() {
		if !chunk.AllZero(b) {
			return fmt.Errorf("chunk %d is not zero", i)
		}
		return nil
	}
	if r.ChunkID(b) != id {
		return fmt.Errorf("chunk %d differs", i)
	}
	return nil
}

// Save stores m (after Update).
func (s *Store) Save(ctx context.Context, m *contracts.Mirror) error { return s.put(ctx, m) }

// Records is what Sync needs of the catalog.
type Records interface {
	Get(ctx context.Context, vm, id string) (*contracts.BackupRecord, uint64, error)
	Latest(ctx context.Context, vm string) (*contracts.BackupRecord, error)
}

// ErrNoMirror: the VM has no mirror.
var ErrNoMirror = errors.New("no mirror")

// Sync brings vm's mirror to backup id ("latest": the newest verified)
// and stores the outcome. A mirror already at a newer point is left
// alone (an old verified event redelivered); one refused as changed
// waits for reseed.
func Sync(ctx context.Context, r *repo.Repository, s *Store, cat Records, vm, id string, reseed bool) (*contracts.Mirror, Result, error) {
	m, ok, err := s.Get(ctx, vm)
	if err != nil {
		return nil, Result{}, err
	}
	if !ok {
		return nil, Result{}, fmt.Errorf("%w for %s: strata mirror set --vm %s --to …", ErrNoMirror, vm, vm)
	}
	var rec *contracts.BackupRecord
	if id == "latest" || id == "" {
		rec, err = cat.Latest(ctx, vm)
	} else {
		rec, _, err = cat.Get(ctx, vm, id)
	}
	if err != nil {
		return &m, Result{}, err
	}
	if rec.State != contracts.StateVerified {
		return &m, Result{}, fmt.Errorf("backup %s of %s is %s: a mirror follows verified backups", rec.ID, vm, rec.State)
	}
	if !reseed && m.Point != "" && m.Point >= rec.ID { // UUIDv7: creation order
		return &m, Result{}, nil
	}
	var prev *manifest.Manifest
	if m.Point != "" && !reseed {
		if p, _, err := cat.Get(ctx, vm, m.Point); err == nil && m.Disk < len(p.Disks) {
			prev, _ = r.GetManifest(ctx, p.Disks[m.Disk].Manifest) // gone (pruned): every chunk compared
		}
	}
	res, err := Update(ctx, r, &m, rec, prev, reseed)
	if serr := s.Save(ctx, &m); serr != nil && err == nil {
		err = serr
	}
	return &m, res, err
}
