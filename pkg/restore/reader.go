package restore

import (
	"bytes"
	"container/list"
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/nbd"
	"github.com/strata-backup/strata/pkg/repo"
)

// Reader gives random access to one backed-up disk (an NBD export of a
// backup point): reads come from the chunk store through a cache of
// decoded chunks bounded in bytes, and a miss also fetches the chunks
// that follow it (read-ahead), several runs at once. Every chunk is
// checked against its id by the repository; a chunk that fails fails the
// read that needs it, and is not cached, so a later read tries again.
type Reader struct {
	r     *repo.Repository
	man   *manifest.Manifest
	ctx   context.Context // fetches outlive the read that started them
	ahead int64           // the most chunks fetched past a miss
	fetch chan struct{}   // a slot per fetch running

	mu      sync.Mutex
	flights map[chunk.ID]*flight
	cache   *chunkCache
	fetched struct {
		chunks int
		bytes  int64
	}
	// Read-ahead grows while misses follow each other (a copy, a boot,
	// a big file) and starts small at a random miss (a directory, an
	// inode): window chunks past the miss, doubling up to ahead.
	window, seqEnd int64
}

// Fetched says how many chunks, and how many bytes of disk they hold,
// were fetched from the repository so far.
func (rd *Reader) Fetched() (chunks int, bytes int64) {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	return rd.fetched.chunks, rd.fetched.bytes
}

// ReaderOptions size a Reader.
type ReaderOptions struct {
	CacheBytes int64 // decoded chunks kept (default 256 MiB)
	Ahead      int64 // the most chunks fetched past a miss, reached while reads are sequential (default 32)
	Parallel   int   // fetches at once (default 8)
}

type flight struct {
	done chan struct{}
	data []byte
	err  error
}

// NewReader returns a Reader of man's disk; ctx bounds its fetches.
func NewReader(ctx context.Context, r *repo.Repository, man *manifest.Manifest, opt ReaderOptions) *Reader {
	if opt.CacheBytes <= 0 {
		opt.CacheBytes = 256 << 20
	}
	if opt.Ahead <= 0 {
		opt.Ahead = 32
	}
	if opt.Parallel <= 0 {
		opt.Parallel = 8
	}
	return &Reader{r: r, man: man, ctx: ctx, ahead: opt.Ahead, fetch: make(chan struct{}, opt.Parallel),
		flights: map[chunk.ID]*flight{}, cache: newChunkCache(opt.CacheBytes)}
}

// Size is the disk's size in bytes.
func (rd *Reader) Size() int64 { return rd.man.DiskSize }

// ReadAt fills p with the disk's bytes at off, entirely or not at all.
func (rd *Reader) ReadAt(ctx context.Context, p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > rd.man.DiskSize {
		return fmt.Errorf("read [%d, +%d) beyond the disk's %d bytes", off, len(p), rd.man.DiskSize)
	}
	cs := int64(rd.man.ChunkSize)
	for len(p) > 0 {
		i := off / cs
		within := off - i*cs
		n := min(int64(len(p)), int64(rd.man.ChunkLen(i))-within)
		if ref := rd.man.Ref(i); ref.ID.IsZero() {
			clear(p[:n])
		} else {
			data, err := rd.chunk(ctx, i, ref.ID)
			if err != nil {
				return err
			}
			copy(p[:n], data[within:])
		}
		p, off = p[n:], off+n
	}
	return nil
}

// Extents describes the disk from off as runs of data and of zero chunks
// (reported as holes: NBD clients skip them), at most 4096 runs of at most
// 1 GiB. It walks the manifest's data, not its chunks: a 16 TiB disk that
// holds little answers in a few steps.
func (rd *Reader) Extents(off, length int64) []nbd.Extent {
	cs := int64(rd.man.ChunkSize)
	end := min(off+length, rd.man.DiskSize)
	var out []nbd.Extent
	add := func(n int64, flags uint32) bool {
		for n > 0 {
			k := len(out)
			if k > 0 && out[k-1].Flags == flags && out[k-1].Length < 1<<30 {
				take := min(n, 1<<30-int64(out[k-1].Length))
				out[k-1].Length += uint32(take)
				n -= take
				continue
			}
			if k > 4096 {
				return false
			}
			take := min(n, 1<<30)
			out = append(out, nbd.Extent{Length: uint32(take), Flags: flags})
			n -= take
		}
		return true
	}
	const hole = nbd.StateHole | nbd.StateZero
	pos := off
	for i := range rd.man.DataIn(off/cs, (end+cs-1)/cs) {
		start, stop := max(i*cs, off), min((i+1)*cs, end)
		if start > pos && !add(start-pos, hole) || !add(stop-start, 0) {
			return out
		}
		pos = stop
	}
	if end > pos {
		add(end-pos, hole)
	}
	return out
}

// chunk returns chunk i's bytes (not to be modified), fetching it and the
// chunks after it when it is neither cached nor on its way.
func (rd *Reader) chunk(ctx context.Context, i int64, id chunk.ID) ([]byte, error) {
	rd.mu.Lock()
	if data, ok := rd.cache.get(id); ok {
		rd.mu.Unlock()
		return data, nil
	}
	f, ok := rd.flights[id]
	if !ok {
		f = rd.startLocked(i)
	}
	rd.mu.Unlock()
	select {
	case <-f.done:
		if f.err != nil {
			return nil, fmt.Errorf("chunk %d of the disk (%s): %w", i, id, f.err)
		}
		return f.data, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// startLocked starts fetching chunk i and the read-ahead window of data
// chunks after it that are neither cached nor on their way, grouped into
// runs that lie back to back in a pack (one request each). It returns
// chunk i's flight.
func (rd *Reader) startLocked(i int64) *flight {
	if i >= rd.seqEnd-rd.window && i <= rd.seqEnd+1 && rd.window > 0 {
		rd.window = min(2*rd.window, rd.ahead)
	} else {
		rd.window = min(2, rd.ahead)
	}
	rd.seqEnd = i + rd.window
	var refs []chunk.Ref
	var mine *flight
	for k, ref := range rd.man.DataIn(i, i+rd.window+1) {
		id := ref.ID
		if rd.cache.has(id) || rd.flights[id] != nil {
			continue
		}
		f := &flight{done: make(chan struct{})}
		rd.flights[id] = f
		if k == i {
			mine = f
		}
		refs = append(refs, ref)
	}
	bounds := cutRuns(len(refs), func(k int) chunk.Loc { return refs[k].Loc })
	for k, start := range bounds[:len(bounds)-1] {
		go rd.fetchRun(refs[start:bounds[k+1]])
	}
	return mine
}

func (rd *Reader) fetchRun(run []chunk.Ref) {
	var chunks [][]byte
	var err error
	select {
	case rd.fetch <- struct{}{}:
		chunks, err = rd.r.ReadRun(rd.ctx, run)
		<-rd.fetch
	case <-rd.ctx.Done():
		err = rd.ctx.Err()
	}
	rd.mu.Lock()
	defer rd.mu.Unlock()
	for k, ref := range run {
		f := rd.flights[ref.ID]
		delete(rd.flights, ref.ID)
		if err == nil && k < len(chunks) {
			f.data = chunks[k]
			rd.cache.put(ref.ID, chunks[k])
			rd.fetched.chunks++
			rd.fetched.bytes += int64(len(chunks[k]))
		} else {
			f.err = err
			if f.err == nil {
				f.err = fmt.Errorf("run of %d chunks answered with %d", len(run), len(chunks))
			}
		}
		close(f.done)
	}
}

// chunkCache keeps decoded chunks up to a byte budget, least recently
// used first out. Not safe for concurrent use (Reader.mu guards it).
type chunkCache struct {
	budget, used int64
	order        *list.List // of *cached, most recent at the front
	byID         map[chunk.ID]*list.Element
}

type cached struct {
	id   chunk.ID
	data []byte
}

func newChunkCache(budget int64) *chunkCache {
	return &chunkCache{budget: budget, order: list.New(), byID: map[chunk.ID]*list.Element{}}
}

func (c *chunkCache) has(id chunk.ID) bool { _, ok := c.byID[id]; return ok }

func (c *chunkCache) get(id chunk.ID) ([]byte, bool) {
	e, ok := c.byID[id]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(e)
	return e.Value.(*cached).data, true
}

func (c *chunkCache) put(id chunk.ID, data []byte) {
	if _, ok := c.byID[id]; ok {
		return
	}
	if cap(data) > len(data) {
		// A stored-raw chunk is a slice of its whole run's buffer: keep a
		// copy, so the budget counts what is really held.
		data = bytes.Clone(data)
	}
	c.byID[id] = c.order.PushFront(&cached{id, data})
	c.used += int64(len(data))
	for c.used > c.budget && c.order.Len() > 1 {
		e := c.order.Back()
		old := c.order.Remove(e).(*cached)
		delete(c.byID, old.id)
		c.used -= int64(len(old.data))
	}
}

// At is the backed-up disk as an io.ReaderAt for readers that take one
// (guestfs): reads past the end return io.EOF, reads use ctx.
func (r *Reader) At(ctx context.Context) interface {
	io.ReaderAt
	Size() int64
} {
	return readerAt{ctx, r}
}

type readerAt struct {
	ctx context.Context
	rd  *Reader
}

func (d readerAt) Size() int64 { return d.rd.Size() }

func (d readerAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= d.rd.Size() {
		return 0, io.EOF
	}
	n := min(int64(len(p)), d.rd.Size()-off)
	if err := d.rd.ReadAt(d.ctx, p[:n], off); err != nil {
		return 0, err
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}
