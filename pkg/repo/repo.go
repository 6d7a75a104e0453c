// Package repo lays Strata's repository out on an object store:
//
//	config                                repository parameters (chunk size, id)
//	chunks/ab/abcdef…                     a chunk stored on its own (see package chunk)
//	packs/ab/abcdef…                      many stored chunks and their index (pack.go)
//	moved/ab/<pack>/<collection>          where compaction moved a pack's chunks (moved.go)
//	manifests/<vm>/<disk>/<backup-id>     chunk maps (see package manifest)
//	backups/<vm>/<backup-id>.json         backup records (pkg/catalog, sealed here)
//
// (<vm> is path-escaped, or in an encrypted repository a keyed hash.) Where a chunk lives is behind ChunkStore so that
// packing small chunks into larger objects later changes one type.
package repo

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sync/errgroup"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/objstore"
)

// FormatVersion of the repository layout.
const FormatVersion = 1

// Config holds the parameters fixed when the repository is created.
type Config struct {
	Version   int       `json:"version"`
	ID        string    `json:"id"`
	ChunkSize int       `json:"chunk_size"`
	CreatedAt time.Time `json:"created_at"`
	// Encrypted repositories store chunks and manifests sealed with
	// AES-256-GCM under keyed chunk ids; KeyCheck recognises the key.
	Encrypted bool   `json:"encrypted,omitempty"`
	KeyCheck  string `json:"key_check,omitempty"`
	// Packs: new chunks are stored many to an object (see pack.go), not
	// one object each. Chosen at creation.
	Packs bool `json:"packs,omitempty"`
	// Lock: every object a backup needs is written under S3 Object Lock
	// (lock.go). Chosen at creation: a repository is never locked later.
	Lock *LockPolicy `json:"lock,omitempty"`
}

// Options are the parameters of a repository Open creates; an existing
// repository keeps its own.
type Options struct {
	ChunkSize int
	Keys      *Keys // nil: plaintext
	Packs     bool
	// Existing: a store with no repository is an error (ErrNoRepository),
	// never a new repository (commands that only read).
	Existing bool
	// Lock: create the repository under Object Lock with this policy (the
	// store must write with Lock.StoreLock()). Opening an existing locked
	// repository to write requires it (its period may grow: the one given
	// here is used for new objects).
	Lock *LockPolicy
}

// ErrNoRepository: the store holds no repository (no config object).
var ErrNoRepository = errors.New("no repository")

// ChunkStore is where chunks live: the content layer. It alone knows an
// object's key for a chunk and how a stored chunk is opened (decompressed,
// unsealed, checked against its id), so packing chunks into larger objects
// changes this type and nothing else. Contract: PutChunk is idempotent (a
// chunk's key is its id); PutChunkIfAbsent stores only when no object holds
// the id yet and reports whether it did (an existing object, good or bad,
// is left alone); GetChunk returns the verified bytes or an error wrapping
// chunk.ErrCorrupt / objstore.ErrNotFound naming the object; Missing
// returns the subset of ids not stored, in input order; List calls f for
// every stored chunk whose first id byte is in [lo, hi) (objects that are
// not chunks where they lie are skipped, never reported); Delete removes
// one chunk (absent: no error).
type ChunkStore interface {
	PutChunk(ctx context.Context, id chunk.ID, stored []byte) error
	PutChunkIfAbsent(ctx context.Context, id chunk.ID, stored []byte) (created bool, err error)
	GetChunk(ctx context.Context, id chunk.ID) ([]byte, error)
	Missing(ctx context.Context, ids []chunk.ID) ([]chunk.ID, error)
	List(ctx context.Context, lo byte, hi int, f func(StoredChunk) error) error
	Delete(ctx context.Context, id chunk.ID) error
}

// StoredChunk describes one stored chunk.
type StoredChunk struct {
	ID       chunk.ID
	Name     string // where it lives, for messages
	Size     int64  // stored bytes
	Modified time.Time
}

// Repository is an opened repository.
type Repository struct {
	Store    objstore.Store
	Config   Config
	Chunks   ChunkStore
	seal     sealer
	moved    moveCache // records of packs found gone (moved.go)
	retained retained  // retain-until dates known (lock.go)
}

// sealer turns a plaintext object into its stored form and back, bound to
// the object's identity (ad), and names chunks. Encryption is a sealer
// (Keys); a plaintext repository has the identity one: no code elsewhere
// asks whether the repository is encrypted.
type sealer interface {
	seal(plain, ad []byte) []byte
	open(obj, ad []byte) ([]byte, error)
	// overhead is how many bytes seal adds.
	overhead() int
	// sealFile and openFile do seal and open for an object too big to hold
	// (n bytes of f), into a temporary file they return (f itself when
	// there is nothing to do; the caller closes both).
	sealFile(f *os.File, n int64, ad []byte) (*os.File, int64, error)
	openFile(f *os.File, n int64, ad []byte) (*os.File, int64, error)
	ChunkID(data []byte) chunk.ID
	nameInKey(name string) string
}

// plain is a plaintext repository's sealer: SHA-256 ids, objects as they are.
type plain struct{}

func (plain) seal(p, _ []byte) []byte            { return p }
func (plain) open(obj, _ []byte) ([]byte, error) { return obj, nil }
func (plain) ChunkID(data []byte) chunk.ID       { return chunk.Hash(data) }
func (plain) overhead() int                      { return 0 }
func (plain) sealFile(f *os.File, n int64, _ []byte) (*os.File, int64, error) {
	return f, n, nil
}
func (plain) openFile(f *os.File, n int64, _ []byte) (*os.File, int64, error) {
	return f, n, nil
}
func (plain) nameInKey(name string) string { return url.PathEscape(name) }

// SealObject is the stored form of a small object of another layer (a
// backup record's copy) under key: as it is, or sealed and bound to key in
// an encrypted repository.
func (r *Repository) SealObject(key string, plain []byte) []byte {
	return r.seal.seal(plain, []byte(key))
}

// OpenObject reverses SealObject; a sealed object stored under another
// key, tampered with or sealed with another key does not open.
func (r *Repository) OpenObject(key string, obj []byte) ([]byte, error) {
	b, err := r.seal.open(obj, []byte(key))
	if err != nil {
		return nil, fmt.Errorf("object %s: %w", key, err)
	}
	return b, nil
}

// NameInKey is how a VM name appears in object keys: path-escaped, or in
// an encrypted repository a keyed hash (the listing names no VM).
func (r *Repository) NameInKey(name string) string { return r.seal.nameInKey(name) }

const configKey = "config"

// Open reads the repository's config, creating the repository with
// chunkSize (encrypted when keys is not nil) when there is none. An
// existing repository keeps its own chunk size whatever chunkSize says: it
// is fixed at creation. Opening an encrypted repository without its key, a
// plaintext one with a key, or with the wrong key, is refused before
// anything is written.
func Open(ctx context.Context, store objstore.Store, chunkSize int, keys *Keys) (*Repository, error) {
	return OpenWith(ctx, store, Options{ChunkSize: chunkSize, Keys: keys})
}

// OpenWith is Open with every creation option.
func OpenWith(ctx context.Context, store objstore.Store, o Options) (*Repository, error) {
	chunkSize, keys := o.ChunkSize, o.Keys
	cfg, err := readConfig(ctx, store)
	if errors.Is(err, objstore.ErrNotFound) && o.Existing {
		return nil, fmt.Errorf("%w in %s (no config object): check STRATA_STORE_DIR, or STRATA_S3_ENDPOINT, STRATA_S3_BUCKET and STRATA_S3_PREFIX", ErrNoRepository, store)
	}
	if errors.Is(err, objstore.ErrNotFound) {
		if err := contracts.ValidChunkSize(chunkSize); err != nil {
			return nil, fmt.Errorf("create repository in %s: %w", store, err)
		}
		cfg = Config{Version: FormatVersion, ID: uuid.NewString(), ChunkSize: chunkSize, CreatedAt: time.Now().UTC(), Packs: o.Packs, Lock: o.Lock}
		if keys != nil {
			cfg.Encrypted, cfg.KeyCheck = true, keys.check
		}
		b, _ := json.Marshal(cfg)
		// Several services may create at once: the first config stored is
		// the repository's, never replaced (a plain Put let the last writer
		// win, and a service that read the first one could have sealed
		// with a key check or chunk size the repository no longer has).
		if _, err := store.PutIfAbsent(ctx, configKey, b); err != nil {
			return nil, fmt.Errorf("create repository in %s: %w", store, err)
		}
		cfg, err = readConfig(ctx, store)
	}
	if err != nil {
		return nil, err
	}
	switch {
	case cfg.Encrypted && keys == nil:
		return nil, fmt.Errorf("repository in %s is encrypted: set STRATA_ENCRYPTION_KEY_FILE", store)
	case !cfg.Encrypted && keys != nil:
		return nil, fmt.Errorf("repository in %s is not encrypted, and a repository never mixes encrypted and plaintext objects: unset STRATA_ENCRYPTION_KEY_FILE or use another bucket or prefix", store)
	case keys != nil && !hmac.Equal([]byte(cfg.KeyCheck), []byte(keys.check)):
		return nil, fmt.Errorf("repository in %s: %w (the key check in its config differs)", store, ErrWrongKey)
	case cfg.Lock == nil && o.Lock != nil && !o.Existing:
		return nil, fmt.Errorf("repository in %s was created without Object Lock, and a repository cannot be locked afterwards (old objects would stay deletable): unset STRATA_S3_OBJECT_LOCK, or use a new bucket or prefix", store)
	case cfg.Lock != nil && o.Lock == nil && !o.Existing:
		return nil, fmt.Errorf("repository in %s is under Object Lock (%s, %v): set STRATA_S3_OBJECT_LOCK=%s and STRATA_LOCK_DAYS, or new objects would be written unlocked", store, cfg.Lock.Mode, cfg.Lock.Period, cfg.Lock.Mode)
	case cfg.Lock != nil && o.Lock != nil && !o.Existing:
		if _, ok := objstore.As[objstore.Locker](store); !ok {
			return nil, fmt.Errorf("repository in %s is under Object Lock, but its store cannot lock", store)
		}
		cfg.Lock = o.Lock // the period configured now rules new objects
	}
	var s sealer = plain{}
	if keys != nil {
		s = keys
	}
	return &Repository{Store: store, Config: cfg, Chunks: &looseChunks{store: store, seal: s}, seal: s}, nil
}

// Packed reports whether new chunks go into packs.
func (r *Repository) Packed() bool { return r.Config.Packs }

// Encrypted reports whether chunks and manifests are sealed.
func (r *Repository) Encrypted() bool { return r.Config.Encrypted }

// ChunkID is the id of a chunk's bytes in this repository: SHA-256, or
// the keyed hash of an encrypted repository.
func (r *Repository) ChunkID(data []byte) chunk.ID { return r.seal.ChunkID(data) }

// EncodeChunk is the stored form of a chunk: compressed with zstd, then
// sealed.
func (r *Repository) EncodeChunk(id chunk.ID, data []byte) []byte {
	return r.AppendChunk(nil, id, data, chunk.Zstd)
}

// AppendChunk appends the stored form of a chunk, compressed with c, to
// dst, which the caller may reuse once the result is no longer needed (a
// plaintext repository returns dst's memory; a sealed one allocates its
// own). A stored chunk names its codec, so changing c rewrites nothing.
func (r *Repository) AppendChunk(dst []byte, id chunk.ID, data []byte, c chunk.Codec) []byte {
	b, _ := r.appendChunk(dst, id, data, c)
	return b
}

// appendChunk is AppendChunk that also says which codec the chunk got
// (raw when compression gave up).
func (r *Repository) appendChunk(dst []byte, id chunk.ID, data []byte, c chunk.Codec) ([]byte, chunk.Codec) {
	enc := chunk.AppendEncode(dst, data, c)
	got, _ := chunk.StoredCodec(enc[len(dst):])
	return r.seal.seal(enc, id[:]), got
}

var errCorruptConfig = errors.New("not a repository config")

func readConfig(ctx context.Context, store objstore.Store) (Config, error) {
	var cfg Config
	b, err := objstore.GetChecked(ctx, store, configKey, func(b []byte) error {
		if err := json.Unmarshal(b, &Config{}); err != nil {
			return fmt.Errorf("%w: %v", errCorruptConfig, err)
		}
		return nil
	})
	if errors.Is(err, errCorruptConfig) {
		return cfg, fmt.Errorf("repository config in %s is corrupt: %w", store, err)
	}
	if err != nil {
		return cfg, fmt.Errorf("read repository config from %s: %w", store, err)
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return cfg, fmt.Errorf("repository config in %s is corrupt: %w", store, err)
	}
	if cfg.Version != FormatVersion {
		return cfg, fmt.Errorf("repository in %s has format version %d; this build reads %d", store, cfg.Version, FormatVersion)
	}
	if err := contracts.ValidChunkSize(cfg.ChunkSize); err != nil {
		return cfg, fmt.Errorf("repository config in %s: %w", store, err)
	}
	return cfg, nil
}

// ChunkKey is the object key of a chunk stored on its own.
func ChunkKey(id chunk.ID) string {
	s := id.String()
	return "chunks/" + s[:2] + "/" + s
}

// looseChunks stores one object per chunk, under chunks/<first byte>/<id>.
type looseChunks struct {
	store objstore.Store
	seal  sealer
}

func (c *looseChunks) PutChunk(ctx context.Context, id chunk.ID, stored []byte) error {
	return c.store.Put(ctx, ChunkKey(id), stored)
}

func (c *looseChunks) PutChunkIfAbsent(ctx context.Context, id chunk.ID, stored []byte) (bool, error) {
	return c.store.PutIfAbsent(ctx, ChunkKey(id), stored)
}

func (c *looseChunks) GetChunk(ctx context.Context, id chunk.ID) ([]byte, error) {
	key := ChunkKey(id)
	var data []byte
	_, err := objstore.GetChecked(ctx, c.store, key, func(obj []byte) (err error) {
		data, err = openStored(c.seal, id, obj)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("chunk object %s: %w", key, err)
	}
	return data, nil
}

func (c *looseChunks) List(ctx context.Context, lo byte, hi int, f func(StoredChunk) error) error {
	for b := int(lo); b < hi && b < 256; b++ {
		prefix := fmt.Sprintf("chunks/%02x/", b)
		err := c.store.List(ctx, prefix, func(in objstore.Info) error {
			id, err := chunk.ParseID(in.Key[len(prefix):])
			if err != nil || int(id[0]) != b || ChunkKey(id) != in.Key {
				return nil // not a chunk object where it belongs: not ours
			}
			return f(StoredChunk{ID: id, Name: in.Key, Size: in.Size, Modified: in.Modified})
		})
		if err != nil {
			return fmt.Errorf("list %s: %w", prefix, err)
		}
	}
	return nil
}

func (c *looseChunks) Delete(ctx context.Context, id chunk.ID) error {
	return c.store.Delete(ctx, ChunkKey(id))
}

// Missing stats every id, 32 at a time: the cost is proportional to the
// batch, never to the repository's size.
func (c *looseChunks) Missing(ctx context.Context, ids []chunk.ID) ([]chunk.ID, error) {
	present := make([]bool, len(ids))
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	var mu sync.Mutex
	for i, id := range ids {
		g.Go(func() error {
			_, err := c.store.Stat(ctx, ChunkKey(id))
			if errors.Is(err, objstore.ErrNotFound) {
				return nil
			}
			if err != nil {
				return err
			}
			mu.Lock()
			present[i] = true
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	var missing []chunk.ID
	for i, id := range ids {
		if !present[i] {
			missing = append(missing, id)
		}
	}
	return missing, nil
}

// ManifestKey is the object key of one disk's manifest.
func (r *Repository) ManifestKey(vm string, disk int, backupID string) string {
	return fmt.Sprintf("manifests/%s/%d/%s", r.NameInKey(vm), disk, backupID)
}

// PutManifest stores a manifest and returns its key.
func (r *Repository) PutManifest(ctx context.Context, vm string, m *manifest.Manifest) (string, error) {
	return r.putManifestAt(ctx, r.ManifestKey(vm, m.Disk, m.BackupID), m)
}

// putManifestAt stores a manifest under key.
func (r *Repository) putManifestAt(ctx context.Context, key string, m *manifest.Manifest) (string, error) {
	if m.Spilled() {
		if err := r.putBigManifest(ctx, key, m); err != nil {
			return "", fmt.Errorf("write manifest %s: %w", key, err)
		}
		return key, nil
	}
	b, err := m.Encode()
	if err != nil {
		return "", err
	}
	b = r.seal.seal(b, []byte(key))
	if err := r.Store.Put(ctx, key, b); err != nil {
		return "", fmt.Errorf("write manifest %s: %w", key, err)
	}
	return key, nil
}

// WholeManifest: a manifest object up to this size (a few hundred
// thousand data chunks: a disk holding ~100 GiB of data) is read whole
// into memory; a bigger one goes through a temporary file.
var WholeManifest int64 = 16 << 20

// GetManifest reads and decodes a manifest; errors name the object.
func (r *Repository) GetManifest(ctx context.Context, key string) (*manifest.Manifest, error) {
	var m *manifest.Manifest
	var first []byte // a big manifest's first bytes
	// One request either way: a range as long as the biggest manifest read
	// whole returns a smaller object entire.
	_, err := objstore.GetRangeChecked(ctx, r.Store, key, 0, WholeManifest, func(b []byte) (err error) {
		if int64(len(b)) == WholeManifest {
			first = b
			return nil
		}
		m, err = r.decodeManifest(key, b)
		return err
	})
	if err == nil && first != nil {
		m, err = r.getBigManifest(ctx, key, first)
	}
	if err != nil {
		return nil, fmt.Errorf("manifest object %s: %w", key, err)
	}
	return m, nil
}

// decodeManifest opens and decodes the manifest object b stored at key.
func (r *Repository) decodeManifest(key string, b []byte) (*manifest.Manifest, error) {
	b, err := r.seal.open(b, []byte(key))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", manifest.ErrCorrupt, err)
	}
	m, err := manifest.Decode(b)
	if err != nil {
		return nil, err
	}
	if m.ChunkSize != r.Config.ChunkSize {
		return nil, fmt.Errorf("%w: chunk size %d, repository's is %d", manifest.ErrCorrupt, m.ChunkSize, r.Config.ChunkSize)
	}
	return m, nil
}

// ErrNoSlice: the manifest cannot be read in part (sealed manifests are
// opened whole); the caller goes without.
var ErrNoSlice = errors.New("manifest cannot be read in part")

// ManifestSlice reads entries [first, first+count) of a manifest with a
// few range reads (manifest.ReadSlice), never the whole object: a transfer worker compares a
// segment against its parent's ids at a cost that follows the segment, not
// the disk. The slice is not checked against the manifest's checksum (that
// needs all of it), so it is a hint: a chunk whose computed id equals the
// hint is known stored, and a corrupt entry can only fail to match. locs is
// nil when the manifest records no locations.
func (r *Repository) ManifestSlice(ctx context.Context, key string, first, count int64) (ids []chunk.ID, locs []chunk.Loc, err error) {
	if r.Encrypted() {
		return nil, nil, ErrNoSlice
	}
	h, ids, locs, err := manifest.ReadSlice(func(off, n int64) ([]byte, error) { return r.Store.GetRange(ctx, key, off, n) }, first, count)
	if err == nil && h.ChunkSize != r.Config.ChunkSize {
		err = fmt.Errorf("%w: chunk size %d, repository's is %d", manifest.ErrCorrupt, h.ChunkSize, r.Config.ChunkSize)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("manifest object %s: %w", key, err)
	}
	return ids, locs, nil
}
