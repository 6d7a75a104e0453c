package repo

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/objstore"
)

// OpenCopy opens the copy of r in the store to (another bucket, prefix or
// directory), creating it when to holds no repository: the same config
// (id, chunk size, sealing, layout), so chunk ids, keys and sealed objects
// are the same there and are copied as they are — an encrypted
// repository's copy is encrypted with the same key, and nothing is ever
// decrypted to be written. lock, when not nil, puts a new copy under
// Object Lock (to must write with lock.StoreLock()). A store holding
// another repository is refused.
func (r *Repository) OpenCopy(ctx context.Context, to objstore.Store, lock *LockPolicy) (*Repository, error) {
	cfg, err := readConfig(ctx, to)
	if errors.Is(err, objstore.ErrNotFound) {
		cfg = r.Config
		cfg.Lock = lock
		b, _ := json.Marshal(cfg)
		if _, err := to.PutIfAbsent(ctx, configKey, b); err != nil {
			return nil, fmt.Errorf("create the copy in %s: %w", to, err)
		}
		cfg, err = readConfig(ctx, to)
	}
	if err != nil {
		return nil, err
	}
	if cfg.ID != r.Config.ID {
		return nil, fmt.Errorf("%s holds repository %s, not a copy of %s (%s): copy into an empty bucket, prefix or directory", to, cfg.ID, r.Config.ID, r.Store)
	}
	if cfg.Lock != nil && lock != nil {
		cfg.Lock = lock
	}
	return &Repository{Store: to, Config: cfg, Chunks: &looseChunks{store: to, seal: r.seal}, seal: r.seal}, nil
}

// CopyStats counts what a Copier did.
type CopyStats struct {
	Objects  int64 // objects written to the target
	Bytes    int64 // their bytes
	Present  int64 // objects the target had already (not read, not written)
	Chunks   int64 // chunks checked against their ids on the way
	Extended int   // lock extensions at the target (Object Lock)
}

// Copier copies what backups need from one repository to its copy
// (OpenCopy): packs and loose chunks their manifests reference
// (following compaction's moved records), then the manifests. Every
// chunk of every object copied is checked against its id on the way
// (sealed ones opened in memory and dropped: only stored bytes are
// written); an object the target has is skipped after one Stat, which is
// what makes a copy resumable after a kill and a second copy move
// nothing. Safe for concurrent use.
type Copier struct {
	From, To *Repository
	Parallel int           // objects at once (default 8)
	Limit    *rate.Limiter // bytes per second read, nil: unlimited
	// Progress, if set, is told of every object handled.
	Progress func(st CopyStats)

	mu    sync.Mutex
	known map[string]bool // keys known present at the target
	stats CopyStats
}

// Stats returns what the copier did so far.
func (c *Copier) Stats() CopyStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

func (c *Copier) add(f func(*CopyStats)) {
	c.mu.Lock()
	f(&c.stats)
	st := c.stats
	c.mu.Unlock()
	if c.Progress != nil {
		c.Progress(st)
	}
}

// copyWindow: distinct objects a copy gathers before copying them.
const copyWindow = 1 << 16

// CopyBackup copies what the backup of these manifests (keys in From)
// needs, the manifests last, and in a locked copy keeps all of it locked
// as long as a backup made now (Cover). The caller writes the backup's
// record after it: a record at the target says everything it needs is
// there.
func (c *Copier) CopyBackup(ctx context.Context, manifestKeys []string) error {
	var mans []*manifest.Manifest
	defer func() {
		for _, m := range mans {
			m.Close()
		}
	}()
	for _, key := range manifestKeys {
		m, err := c.From.GetManifest(ctx, key)
		if err != nil {
			return fmt.Errorf("copy: %w", err)
		}
		mans = append(mans, m)
	}
	// What to copy, a window of distinct objects at a time: a disk full of
	// data names tens of millions of chunks, and a pack or chunk a later
	// window names again is known present by then (c.present).
	units := map[string]func(context.Context) error{}
	run := func() error {
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(cmp.Or(max(c.Parallel, 0), 8))
		for _, f := range units {
			g.Go(func() error { return f(gctx) })
		}
		units = map[string]func(context.Context) error{}
		return g.Wait()
	}
	for _, m := range mans {
		for _, r := range m.Data() {
			id := r.ID
			if loc := r.Loc; loc.InPack() {
				if k := PackKey(loc.Pack); units[k] == nil {
					p := loc.Pack
					units[k] = func(ctx context.Context) error { return c.copyPack(ctx, p, 0) }
				}
			} else if k := ChunkKey(id); units[k] == nil {
				units[k] = func(ctx context.Context) error { return c.copyChunk(ctx, id) }
			}
			if len(units) >= copyWindow {
				if err := run(); err != nil {
					return err
				}
			}
		}
	}
	if err := run(); err != nil {
		return err
	}
	for k, key := range manifestKeys {
		if mans[k].Spilled() {
			// Too big to hold: written from the map read above (checked as
			// it was read), encoded as the source stored it.
			if ok, err := c.present(ctx, key); err != nil {
				return err
			} else if !ok {
				if _, err := c.To.putManifestAt(ctx, key, mans[k]); err != nil {
					return fmt.Errorf("copy %s: %w", key, err)
				}
				c.remember(key)
				c.add(func(s *CopyStats) { s.Objects++ })
			}
			continue
		}
		if err := c.copyObject(ctx, key, func(b []byte) error {
			_, err := c.From.decodeManifest(key, b)
			return err
		}); err != nil {
			return err
		}
	}
	st, err := c.To.Cover(ctx, time.Now(), mans...)
	if err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	if st.Extended > 0 {
		c.add(func(s *CopyStats) { s.Extended += st.Extended })
	}
	return nil
}

// present reports (and remembers) whether the target has key.
func (c *Copier) present(ctx context.Context, key string) (bool, error) {
	c.mu.Lock()
	ok := c.known[key]
	c.mu.Unlock()
	if ok {
		return true, nil
	}
	_, err := c.To.Store.Stat(ctx, key)
	switch {
	case err == nil:
		c.remember(key)
		c.add(func(s *CopyStats) { s.Present++ })
		return true, nil
	case errors.Is(err, objstore.ErrNotFound):
		return false, nil
	}
	return false, fmt.Errorf("copy: target %w", err)
}

func (c *Copier) remember(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.known == nil || len(c.known) >= 1<<20 { // bounded: forgetting costs a Stat
		c.known = map[string]bool{}
	}
	c.known[key] = true
}

// copyObject copies one object as stored, after check passes on it (the
// version Strata wrote, in a locked source someone tampered with).
func (c *Copier) copyObject(ctx context.Context, key string, check func([]byte) error) error {
	if ok, err := c.present(ctx, key); err != nil || ok {
		return err
	}
	b, err := objstore.GetChecked(ctx, c.From.Store, key, check)
	if err != nil {
		return fmt.Errorf("copy %s: %w", key, err)
	}
	if c.Limit != nil {
		if err := waitN(ctx, c.Limit, len(b)); err != nil {
			return err
		}
	}
	if err := c.To.Store.Put(ctx, key, b); err != nil {
		return fmt.Errorf("copy %s: %w", key, err)
	}
	c.remember(key)
	c.add(func(s *CopyStats) { s.Objects++; s.Bytes += int64(len(b)) })
	return nil
}

// CopyObject copies one object of another layer (a backup record's copy)
// as stored, after check passes on it.
func (c *Copier) CopyObject(ctx context.Context, key string, check func([]byte) error) error {
	return c.copyObject(ctx, key, check)
}

func (c *Copier) copyChunk(ctx context.Context, id chunk.ID) error {
	return c.copyObject(ctx, ChunkKey(id), func(b []byte) error {
		if _, err := openStored(c.From.seal, id, b); err != nil {
			return err
		}
		c.add(func(s *CopyStats) { s.Chunks++ })
		return nil
	})
}

// copyPack copies a pack, every chunk in it checked; a pack compaction
// deleted is copied as its moved records and the packs they point to.
func (c *Copier) copyPack(ctx context.Context, p chunk.PackID, hop int) error {
	key := PackKey(p)
	err := c.copyObject(ctx, key, func(b []byte) error {
		n, err := c.From.checkPackBytes(p, b)
		if err == nil {
			c.add(func(s *CopyStats) { s.Chunks += int64(n) })
		}
		return err
	})
	if !errors.Is(err, objstore.ErrNotFound) || hop >= maxMoveHops {
		return err
	}
	prefix := movedPrefix(p)
	var recs []string
	if lerr := objstore.ListAll(ctx, c.From.Store, prefix, func(in objstore.Info) error {
		if !strings.Contains(in.Key[len(prefix):], "/") {
			recs = append(recs, in.Key)
		}
		return nil
	}); lerr != nil {
		return fmt.Errorf("%w (listing its moved records: %v)", err, lerr)
	}
	if len(recs) == 0 {
		return err
	}
	for _, rk := range recs {
		var moves []Move
		if err := c.copyObject(ctx, rk, func(b []byte) error {
			plain, err := c.From.seal.open(b, []byte(rk))
			if err != nil {
				return fmt.Errorf("%w: %v", ErrCorruptPack, err)
			}
			moves, err = decodeMoves(plain)
			return err
		}); err != nil {
			return err
		}
		if moves == nil { // present at the target: read what it says
			b, err := objstore.GetChecked(ctx, c.From.Store, rk, func([]byte) error { return nil })
			if err != nil {
				return fmt.Errorf("copy %s: %w", rk, err)
			}
			plain, err := c.From.seal.open(b, []byte(rk))
			if err == nil {
				moves, err = decodeMoves(plain)
			}
			if err != nil {
				return fmt.Errorf("copy %s: %w", rk, err)
			}
		}
		to := map[chunk.PackID]bool{}
		for _, m := range moves {
			to[m.To.Pack] = true
		}
		for q := range to {
			if err := c.copyPack(ctx, q, hop+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkPackBytes checks a whole pack held in memory: its trailer, and
// every chunk in it against its id. It returns the number of chunks.
func (r *Repository) checkPackBytes(p chunk.PackID, b []byte) (int, error) {
	key := PackKey(p)
	size := int64(len(b))
	if size < int64(packTailLen) || string(b[size-int64(len(packMagic)):]) != packMagic {
		return 0, fmt.Errorf("pack %s: %w: no pack end", key, ErrCorruptPack)
	}
	tlen := int64(binary.BigEndian.Uint32(b[size-int64(packTailLen):]))
	if tlen > size-int64(packTailLen) {
		return 0, fmt.Errorf("pack %s: %w: a %d-byte index in %d bytes", key, ErrCorruptPack, tlen, size)
	}
	end := size - int64(packTailLen) - tlen
	plain, err := r.seal.open(b[end:size-int64(packTailLen)], []byte(key))
	if err != nil {
		return 0, fmt.Errorf("pack %s: %w: index: %v", key, ErrCorruptPack, err)
	}
	entries, err := decodeTrailer(p, plain, end)
	if err != nil {
		return 0, fmt.Errorf("pack %s: %w", key, err)
	}
	for _, e := range entries {
		if _, err := openStored(r.seal, e.ID, b[e.Loc.Off:e.Loc.Off+e.Loc.Len]); err != nil {
			return 0, fmt.Errorf("pack %s: chunk %s: %w", key, e.ID, err)
		}
	}
	return len(entries), nil
}

// waitN takes n tokens from l, in bursts it can grant.
func waitN(ctx context.Context, l *rate.Limiter, n int) error {
	for n > 0 {
		take := min(n, l.Burst())
		if err := l.WaitN(ctx, take); err != nil {
			return err
		}
		n -= take
	}
	return nil
}
