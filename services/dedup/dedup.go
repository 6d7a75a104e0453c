// Package dedup is the chunk index: it answers "which of these chunk ids
// does the repository lack?" for transfer workers.
//
// The object store is the source of truth (a chunk exists when its object
// does), so the answer can never claim a chunk that was lost; a bounded
// cache of ids recently confirmed present spares repeat lookups. The cost
// of a request is proportional to its batch, never to the repository size.
package dedup

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/bus"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/repo/packindex"
	"github.com/strata-backup/strata/pkg/runtime"
)

// Config of the dedup service (prefix STRATA_).
type Config struct {
	runtime.Common
	CacheEntries int           `envconfig:"DEDUP_CACHE_ENTRIES" default:"262144"`
	GCGrace      time.Duration `envconfig:"GC_GRACE" default:"24h"`
	// GCShards splits a collection by chunk-id prefix into this many
	// passes: the mark holds one pass's ids (memory ÷ shards), and every
	// manifest is read once per pass. A power of two, 1–256.
	GCShards int `envconfig:"GC_SHARDS" default:"1"`
	// IndexDir holds the index of a packed repository (a file per
	// repository; empty: the user's cache directory, ~/.cache/strata/dedup
	// or $XDG_CACHE_HOME/strata/dedup — it can always be rebuilt). Kept
	// across restarts it saves a rebuild that reads every pack's trailer.
	IndexDir string `envconfig:"DEDUP_INDEX_DIR"`
	// GCRepackBelow: a collection rewrites packs whose live bytes are
	// under this fraction of their size (0: never).
	GCRepackBelow float64 `envconfig:"GC_REPACK_BELOW" default:"0.5"`
	// GCLockStale: a gc.lock older than this was left by a collector that
	// stopped, and the next collection takes it over.
	GCLockStale time.Duration `envconfig:"GC_LOCK_STALE" default:"6h"`
	// GCRecompressLevel: the zstd level gc --recompress stores with,
	// fastest (what backups use) or better (smaller, about 2.5× the CPU:
	// a background pass can afford it).
	GCRecompressLevel string `envconfig:"GC_RECOMPRESS_LEVEL" default:"better"`
	// Hooks observe a collection step by step; nil in production (the e2e
	// suite stops a collection at each step with them).
	Hooks Hooks `ignored:"true"`
}

// Start registers the dedup endpoint.
func Start(ctx context.Context, rt *runtime.Runtime, cfg Config) error {
	if err := validShards(cfg.GCShards); err != nil {
		return err
	}
	if cfg.GCRepackBelow < 0 || cfg.GCRepackBelow > 1 {
		return fmt.Errorf("STRATA_GC_REPACK_BELOW %v: want a fraction from 0 to 1", cfg.GCRepackBelow)
	}
	recompress := map[string]chunk.Codec{"fastest": chunk.Zstd, "better": chunk.ZstdBetter}[cfg.GCRecompressLevel]
	if recompress == 0 {
		return fmt.Errorf("STRATA_GC_RECOMPRESS_LEVEL %q: want fastest or better", cfg.GCRecompressLevel)
	}
	cache := NewPresentCache(cfg.CacheEntries)
	d := &Index{chunks: rt.Repo.Chunks, cache: cache, bad: map[chunk.ID]bool{}, packExists: rt.Repo.PackExists}
	d.gc = &gcGuard{gc: rt.GC, store: rt.Repo.Store, forget: d.forget}
	packs, err := packindex.Start(ctx, rt.Repo, rt.Bus, func() (string, error) { return indexDir(cfg.IndexDir) }, rt.Log)
	if err != nil {
		return err
	}
	if packs != nil { // a nil *Index is no locator
		d.packs = packs
	}
	// Chunks the verifier found corrupt or missing are answered "missing"
	// whatever the store says, so the next backup holding those bytes
	// uploads them again: that repairs every backup referencing them.
	if err := rt.Bad.Watch(ctx, d.setBad); err != nil {
		return err
	}
	svc, err := rt.Bus.AddService("chunk index: which chunks are missing; garbage collection")
	if err != nil {
		return err
	}
	if err := bus.ConcurrentEndpoint(ctx, rt.Bus, svc, "missing", contracts.SubjectDedupMissing, 64, func(ctx context.Context, req *contracts.MissingRequest) (contracts.Message, error) {
		return d.Missing(ctx, req)
	}); err != nil {
		return err
	}
	if err := bus.Endpoint(ctx, rt.Bus, svc, "stats", contracts.SubjectDedupStats, func(ctx context.Context, req *contracts.RepoStatsRequest) (contracts.Message, error) {
		return stats(ctx, rt, cfg.GCRepackBelow)
	}); err != nil {
		return err
	}
	return bus.Endpoint(ctx, rt.Bus, svc, "gc", contracts.SubjectDedupGC, func(ctx context.Context, req *contracts.GCRequest) (contracts.Message, error) {
		grace := cfg.GCGrace
		if req.Grace != "" {
			grace, _ = time.ParseDuration(req.Grace) // validated
		}
		opts := gcOptions{repackBelow: cfg.GCRepackBelow, recompress: req.Recompress, recompressCodec: recompress, rateLimit: req.RateLimit, hooks: cfg.Hooks}
		if packs != nil {
			opts.lockDates = packs.RetainedUntil
		}
		if req.RepackBelow != nil {
			opts.repackBelow = *req.RepackBelow
		}
		return collect(ctx, rt, grace, req.DryRun, cfg.GCShards, cfg.GCLockStale, opts) // every instance forgets its cache on its next request (gcGuard)
	})
}

// locator says where chunks are stored (packindex.Index).
type locator interface {
	Lookup(ids []chunk.ID) (locs []chunk.Loc, found []bool, err error)
}

// Index answers missing-chunk questions.
type Index struct {
	chunks interface {
		Missing(ctx context.Context, ids []chunk.ID) ([]chunk.ID, error)
	}
	cache *PresentCache
	mu    sync.Mutex
	bad   map[chunk.ID]bool // known bad: answered missing
	gc    *gcGuard          // nil: no collector to coordinate with (unit tests)
	// packs, in a packed repository, says where chunks are: asked instead
	// of the store (no request per chunk), and the answer locates them.
	packs      locator
	packExists func(ctx context.Context, p chunk.PackID) (bool, error)
	packsSeen  map[chunk.PackID]bool // packs known to exist (under mu)
}

func (d *Index) setBad(id chunk.ID, bad bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if bad {
		d.bad[id] = true
		d.cache.Reset() // the cache may remember it as present
	} else {
		delete(d.bad, id)
	}
}

func (d *Index) isBad(id chunk.ID) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.bad[id]
}

// Missing returns the requested ids the repository does not hold.
func (d *Index) Missing(ctx context.Context, req *contracts.MissingRequest) (*contracts.MissingReply, error) {
	var unknown []chunk.ID
	reply := &contracts.MissingReply{Schema: contracts.SchemaVersion, Missing: []string{}}
	var gcID string
	var condemned map[chunk.ID]bool
	if d.gc != nil {
		var err error
		if gcID, condemned, err = d.gc.condemnedSet(ctx); err != nil {
			return nil, err
		}
	}
	// must be stored again: in a packed repository on its own (a repair,
	// see MissingReply.Loose)
	again := func(s string) {
		reply.Missing = append(reply.Missing, s)
		if d.packs != nil {
			reply.Loose = append(reply.Loose, s)
		}
	}
	for _, s := range req.IDs {
		id, err := chunk.ParseID(s)
		if err != nil {
			return nil, err
		}
		if d.isBad(id) {
			again(s)
			continue
		}
		if condemned[id] {
			kept, err := d.gc.hold(ctx, gcID, id)
			if err != nil {
				return nil, err
			}
			if !kept { // deleted by the collector: upload it again
				again(s)
				continue
			}
		}
		// The present cache does not know where a chunk is: a packed
		// repository asks its index about every remaining id.
		if d.packs != nil || !d.cache.Has(id) {
			unknown = append(unknown, id)
		}
	}
	if d.packs != nil {
		return d.locate(ctx, reply, unknown, gcID)
	}
	if len(unknown) == 0 {
		return reply, nil
	}
	missing, err := d.chunks.Missing(ctx, unknown)
	if err != nil {
		return nil, err
	}
	isMissing := make(map[chunk.ID]bool, len(missing))
	for _, id := range missing {
		isMissing[id] = true
		reply.Missing = append(reply.Missing, id.String())
	}
	for _, id := range unknown {
		if !isMissing[id] {
			d.cache.Add(id)
		}
	}
	return reply, nil
}

// locate answers about ids from the pack index: unknown chunks are
// missing, the others located, without a request per chunk.
//
// The index may name a pack that is gone (deleted by a collection since it
// was indexed): each pack is confirmed to exist once (again after every
// change of gc.lock) before a chunk is located in it, and a chunk of a
// pack the running sweep condemned is held first, or answered missing if
// the collector deleted it already.
func (d *Index) locate(ctx context.Context, reply *contracts.MissingReply, ids []chunk.ID, gcID string) (*contracts.MissingReply, error) {
	var condemned map[chunk.PackID]bool
	if d.gc != nil && gcID != "" {
		var err error
		if condemned, err = d.gc.condemnedPacks(ctx); err != nil {
			return nil, err
		}
	}
	usable := map[chunk.PackID]bool{} // this request's verdict per pack
	packOK := func(p chunk.PackID) (bool, error) {
		if ok, seen := usable[p]; seen {
			return ok, nil
		}
		ok := true
		if condemned[p] {
			kept, err := d.gc.holdPack(ctx, gcID, p)
			if err != nil {
				return false, err
			}
			ok = kept
		}
		if ok && !d.packKnown(p) {
			exists, err := d.packExists(ctx, p)
			switch {
			case err != nil:
				return false, err
			case !exists:
				ok = false
			default:
				d.rememberPack(p)
			}
		}
		usable[p] = ok
		return ok, nil
	}
	locs, found, err := d.packs.Lookup(ids)
	if err != nil {
		return nil, fmt.Errorf("pack index: %w", err)
	}
	packNo := map[chunk.PackID]int{}
	for i, id := range ids {
		if found[i] {
			ok, err := packOK(locs[i].Pack)
			if err != nil {
				return nil, err
			}
			found[i] = ok
		}
		if !found[i] {
			reply.Missing = append(reply.Missing, id.String())
			continue
		}
		n, ok := packNo[locs[i].Pack]
		if !ok {
			n = len(reply.Packs)
			packNo[locs[i].Pack] = n
			reply.Packs = append(reply.Packs, locs[i].Pack.String())
		}
		reply.Located = append(reply.Located, contracts.ChunkLoc{ID: id.String(), Pack: n, Off: locs[i].Off, Len: locs[i].Len})
	}
	return reply, nil
}

// packKnown: pack p was seen to exist since gc.lock last changed.
func (d *Index) packKnown(p chunk.PackID) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.packsSeen[p]
}

func (d *Index) rememberPack(p chunk.PackID) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.packsSeen == nil || len(d.packsSeen) >= 1<<20 { // bounded: forgetting costs a HEAD
		d.packsSeen = map[chunk.PackID]bool{}
	}
	d.packsSeen[p] = true
}

// forget drops what this instance remembers as present: chunks and packs.
func (d *Index) forget() {
	d.cache.Reset()
	d.mu.Lock()
	d.packsSeen = nil
	d.mu.Unlock()
}

// PresentCache remembers up to about 2×limit ids known to be stored, in two
// generations: when the young one fills, the old one is dropped. Memory is
// bounded; a forgotten id only costs one extra lookup.
type PresentCache struct {
	mu         sync.Mutex
	limit      int
	young, old map[chunk.ID]struct{}
}

func NewPresentCache(limit int) *PresentCache {
	return &PresentCache{limit: max(1, limit), young: map[chunk.ID]struct{}{}, old: map[chunk.ID]struct{}{}}
}

func (c *PresentCache) Has(id chunk.ID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.young[id]; ok {
		return true
	}
	if _, ok := c.old[id]; ok {
		c.young[id] = struct{}{}
		return true
	}
	return false
}

// Reset forgets everything.
func (c *PresentCache) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.young, c.old = map[chunk.ID]struct{}{}, map[chunk.ID]struct{}{}
}

func (c *PresentCache) Add(id chunk.ID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.young) >= c.limit {
		c.old, c.young = c.young, map[chunk.ID]struct{}{}
	}
	c.young[id] = struct{}{}
}

// indexDir is where the pack index lives, made if missing (owner only: it
// names every chunk of the repository).
func indexDir(configured string) (string, error) {
	dir := configured
	if dir == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			return "", fmt.Errorf("no STRATA_DEDUP_INDEX_DIR and no cache directory to keep the pack index in (%v): set STRATA_DEDUP_INDEX_DIR", err)
		}
		dir = filepath.Join(cache, "strata", "dedup")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("STRATA_DEDUP_INDEX_DIR %s: %w", dir, err)
	}
	return dir, nil
}
