// Package transfer is the horizontally scaled data path: a worker takes one
// segment at a time from the work queue, reads it from the source, cuts it
// into the repository's fixed chunks, skips all-zero chunks, hashes the
// rest, asks dedup which ones the repository lacks, uploads only those and
// reports the segment's chunk ids to merge.
//
// A worker that dies mid-segment loses nothing: the segment was not acked,
// so JetStream redelivers it to another worker after the ack wait; chunks
// already uploaded are simply found present by dedup the second time.
package transfer

import (
	"context"
	"errors"
	"fmt"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"io"
	goruntime "runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/bus"
	"github.com/strata-backup/strata/pkg/catalog"
	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/metrics"
	"github.com/strata-backup/strata/pkg/repo"
	"github.com/strata-backup/strata/pkg/runtime"
	"github.com/strata-backup/strata/pkg/source"
)

// Config of a transfer worker (prefix STRATA_).
type Config struct {
	runtime.Common
	source.Config
	Concurrency int           `envconfig:"TRANSFER_CONCURRENCY" default:"4"`
	Uploads     int           `envconfig:"TRANSFER_UPLOADS" default:"8"`
	AckWait     time.Duration `envconfig:"TRANSFER_ACK_WAIT" default:"60s"`
	RateLimit   int64         `envconfig:"TRANSFER_RATE_LIMIT" default:"0"` // bytes/s read per worker; 0: unlimited
	// NBDConnections caps the connections one worker opens to one disk
	// (any network source; qemu-nbd serves at most -e N clients).
	NBDConnections int `envconfig:"NBD_CONNECTIONS" default:"4"`
	// Compression of newly stored chunks: auto, zstd, s2 or none. auto
	// stores a VM's first full with S2 (2.4–2.6× zstd's speed; most of its
	// bytes are new, so compression is most of its CPU) and every later
	// backup with zstd (few new bytes: spend CPU to keep growth small).
	// Stored chunks keep their codec. README "Compression" has the numbers.
	Compression string `envconfig:"COMPRESSION" default:"auto"`
}

// codecFor is the compression of the chunks a segment stores.
func (c Config) codecFor(seg *contracts.Segment) chunk.Codec {
	if c.Compression == "auto" {
		if seg.PutFirst {
			return chunk.S2
		}
		return chunk.Zstd
	}
	codec, _ := chunk.ParseCodec(c.Compression) // checked by Start
	return codec
}

// Start registers the worker.
func Start(ctx context.Context, rt *runtime.Runtime, cfg Config) error {
	if cfg.Compression != "auto" {
		if _, err := chunk.ParseCodec(cfg.Compression); err != nil {
			return fmt.Errorf("STRATA_COMPRESSION: %w (or auto)", err)
		}
	}
	w := &worker{rt: rt, cfg: cfg, disks: newDiskPool(ctx, source.NewOpener(cfg.Config), cfg.NBDConnections),
		batches: make(chan []byte, 2*max(1, cfg.Concurrency))}
	// Announced before the segment's result: a dedup instance that misses
	// it answers those chunks missing (a duplicate later, never a loss).
	w.writer = rt.Repo.NewWriter(cfg.Uploads, cfg.Concurrency, func(ctx context.Context, ann *contracts.PackStored) error {
		return rt.Bus.Publish(ctx, contracts.PackStoredSubject(ann.Pack), ann, ann.Pack)
	})
	if cfg.RateLimit > 0 {
		w.limiter = rate.NewLimiter(rate.Limit(cfg.RateLimit), max(int(cfg.RateLimit), rt.Repo.Config.ChunkSize))
	}
	if _, err := rt.Bus.AddService("transfer worker: read, chunk, dedup, upload"); err != nil {
		return err
	}
	if err := bus.Consume(ctx, rt.Bus, bus.Spec{Stream: contracts.StreamSegments, Durable: contracts.ConsumerTransferVerify,
		Filters: []string{contracts.SubjectChunkCheckPrefix + ">"}, AckWait: cfg.AckWait, MaxDeliver: 8, Concurrency: max(1, cfg.Concurrency)},
		w.checkChunks); err != nil {
		return err
	}
	return bus.Consume(ctx, rt.Bus, bus.Spec{
		Stream: contracts.StreamSegments, Durable: contracts.ConsumerTransfer, Filters: []string{contracts.SubjectSegmentPrefix + ">"},
		AckWait: cfg.AckWait, MaxDeliver: 8, Concurrency: max(1, cfg.Concurrency),
		GiveUp: func(ctx context.Context, m contracts.Message, err error) error {
			seg := m.(*contracts.Segment)
			return w.failed(ctx, seg, fmt.Sprintf("segment %d of disk %d: %v", seg.Index, seg.Disk, err))
		},
	}, w.handle)
}

type worker struct {
	rt      *runtime.Runtime
	cfg     Config
	limiter *rate.Limiter // nil: unlimited
	disks   *diskPool
	puts    putOutcomes
	active  atomic.Int32 // segments being read
	writer  *repo.Writer // where chunks go (loose or packed: its business)
	// free read-batch buffers, as packs: in a sync.Pool, emptied by every
	// garbage collection, each batch read into fresh memory (a page fault
	// per 4 KiB read)
	batches chan []byte
}

// failed reports a segment given up on to merge, which fails the backup
// (a worker's credential may not write the catalog). Its result replaces
// any earlier one of the segment.
func (w *worker) failed(ctx context.Context, seg *contracts.Segment, reason string) error {
	metrics.SegmentFailures.Inc()
	w.rt.Log.ErrorContext(ctx, "segment failed", "vm", seg.VM, "backup", seg.BackupID, "disk", seg.Disk, "segment", seg.Index, "reason", reason)
	if len(reason) > 4000 {
		reason = reason[:4000] + "…"
	}
	done := &contracts.SegmentDone{Schema: contracts.SchemaVersion, BackupID: seg.BackupID, VM: seg.VM, Disk: seg.Disk, Index: seg.Index,
		FirstChunk: seg.FirstChunk, Failed: reason}
	return w.rt.Bus.Publish(ctx, contracts.SegmentDoneSubject(seg.BackupID, seg.Disk, seg.Index), done, "")
}

// batchBytes bounds the memory one segment holds at once, whatever the
// segment and chunk sizes.
const batchBytes = 16 << 20

func (w *worker) handle(ctx context.Context, seg *contracts.Segment) error {
	start := time.Now()
	rec, _, err := w.rt.Catalog.Get(ctx, seg.VM, seg.BackupID)
	if errors.Is(err, catalog.ErrNotFound) {
		return bus.Permanent(fmt.Errorf("segment of unknown backup: %w", err))
	}
	if err != nil {
		return err
	}
	if rec.State != contracts.StateTransferring {
		w.rt.Log.InfoContext(ctx, "segment of a backup no longer transferring; skipped", "backup", seg.BackupID, "state", rec.State)
		return nil
	}
	if seg.ChunkSize != w.rt.Repo.Config.ChunkSize {
		return bus.Permanent(fmt.Errorf("segment cut for %d-byte chunks; repository uses %d", seg.ChunkSize, w.rt.Repo.Config.ChunkSize))
	}
	done := &contracts.SegmentDone{Schema: contracts.SchemaVersion, BackupID: seg.BackupID, VM: seg.VM, Disk: seg.Disk, Index: seg.Index,
		FirstChunk: seg.FirstChunk, IDs: make([]string, seg.Chunks)}
	// Chunks to read, relative to the segment; the rest of a sparse
	// segment is unallocated and stays zero (an empty id).
	var toRead []int
	if seg.Sparse {
		for _, r := range seg.Runs {
			for i := r.Start; i < r.Start+r.Count; i++ {
				toRead = append(toRead, i)
			}
		}
	} else {
		for i := 0; i < seg.Chunks; i++ {
			toRead = append(toRead, i)
		}
	}
	if seg.Inherit {
		for i := range done.IDs {
			done.IDs[i] = contracts.InheritID // overwritten below for every chunk read
		}
	}
	var stats segmentStats
	// An incremental reads only what changed, and changed chunks are almost
	// always new, as are the chunks of a VM's first full (PutFirst): store
	// them with one conditional PUT each and ask dedup only about those the
	// store already holds. Dedup still decides for
	// those — a known-bad chunk is answered missing and rewritten, a chunk a
	// running collection condemned is held — and while a collection runs
	// every segment asks dedup first.
	collecting := w.collectionRunning(ctx)
	stats.putFirst = (seg.Inherit || seg.PutFirst) && !collecting
	// A full read of a disk the VM's verified parent has: chunks equal to
	// the parent's at the same place are stored, so only the others are
	// asked about. Not while a collection runs (dedup's answer then holds
	// what it condemned), and without it if the slice cannot be read.
	if seg.Parent != "" && !collecting && len(toRead) > 0 { // nothing to read: nothing to compare
		ids, locs, err := w.rt.Repo.ManifestSlice(ctx, seg.Parent, seg.FirstChunk, int64(seg.Chunks))
		if err != nil && !errors.Is(err, repo.ErrNoSlice) {
			w.rt.Log.WarnContext(ctx, "parent manifest unreadable: asking dedup about every chunk", "backup", seg.BackupID, "segment", seg.Index, "err", err)
		}
		stats.parent, stats.parentLocs = ids, locs
	}
	stats.place = w.writer.Placement()
	stats.putFirst = stats.putFirst && stats.place.PutsFirst()
	if len(toRead) > 0 { // a segment with nothing to read never opens the source
		disk, err := w.disks.get(ctx, seg.BackupID, seg.Source)
		if err != nil {
			return fmt.Errorf("open source: %w", err)
		}
		w.active.Add(1)
		err = w.readSegment(ctx, disk, seg, toRead, done, &stats)
		w.active.Add(-1)
		w.disks.put(seg.BackupID, seg.Source, disk, err == nil)
		if err != nil {
			return err
		}
	}
	done.Stored = runsOf(stats.stored)
	locate(done, stats.place)
	if err := w.rt.Bus.Publish(ctx, contracts.SegmentDoneSubject(seg.BackupID, seg.Disk, seg.Index), done, ""); err != nil {
		return err
	}
	count(seg, len(toRead), done, &stats, time.Since(start))
	trace.SpanFromContext(ctx).SetAttributes(attribute.String("strata.vm", seg.VM), attribute.String("strata.backup", seg.BackupID),
		attribute.Int("strata.disk", seg.Disk), attribute.Int("strata.segment", seg.Index),
		attribute.Int64("strata.read_bytes", done.ReadBytes), attribute.Int("strata.uploaded_chunks", done.UploadedChunks))
	// One line per segment, with the instance (telemetry.Logger): which
	// worker did which part of a backup.
	w.rt.Log.InfoContext(ctx, "segment done", "vm", seg.VM, "backup", seg.BackupID, "disk", seg.Disk, "segment", seg.Index, "read_bytes", done.ReadBytes,
		"uploaded", done.UploadedChunks, "took", time.Since(start), "reading", stats.read, "asking", stats.ask, "uploading", stats.upload, "put_first", stats.putFirst, "same_as_parent", stats.sameAsParent)
	return nil
}

// segmentStats: where a segment's time went (debug log), and how it
// uploads.
type segmentStats struct {
	read, ask, upload time.Duration
	putFirst          bool        // conditional PUTs first, dedup for what exists
	zeroBytes         int64       // read and found all zero
	storedRaw         int64       // read and stored (before compression)
	stored            []int       // chunks (relative to the segment) written by an acknowledged PUT
	parent            []chunk.ID  // the parent's ids of this segment (nil: none)
	parentLocs        []chunk.Loc // where the parent's chunks are (nil: on their own)
	sameAsParent      int
	// place: where the segment's chunks are stored. Packs are written
	// while the next batch is hashed, while the segment is its worker's
	// only one (an incremental's run of changes often starts beside a few
	// small segments: decided per pack, not per segment), and waited for
	// before the segment's result is published.
	place *repo.Placement
}

// locate fills a result's pack locations from where its chunks are.
func locate(done *contracts.SegmentDone, place interface {
	Where(chunk.ID) (chunk.Loc, bool)
}) {
	packNo := map[chunk.PackID]int{}
	for at, s := range done.IDs {
		if s == "" || s == contracts.InheritID {
			continue
		}
		id, _ := chunk.ParseID(s) // this worker's own hex
		l, ok := place.Where(id)
		if !ok {
			continue
		}
		n, ok := packNo[l.Pack]
		if !ok {
			n = len(done.Packs)
			packNo[l.Pack] = n
			done.Packs = append(done.Packs, l.Pack.String())
		}
		done.Locs = append(done.Locs, contracts.ChunkLoc{At: at, Pack: n, Off: l.Off, Len: l.Len})
	}
}

// runsOf turns chunk positions into ascending runs.
func runsOf(at []int) []contracts.ChunkRun {
	slices.Sort(at)
	var runs []contracts.ChunkRun
	for _, a := range at {
		if n := len(runs); n > 0 && runs[n-1].Start+runs[n-1].Count == a {
			runs[n-1].Count++
			continue
		}
		runs = append(runs, contracts.ChunkRun{Start: a, Count: 1})
	}
	return runs
}

// putOutcomes counts, per backup, the conditional PUTs the store accepted
// and refused. When most are refused — changed blocks whose bytes the
// repository holds already, as when a fleet installs the same update — the
// backup goes back to asking dedup first, so that chunk bodies are not
// sent only to be refused: at most minRefusals of them per backup and
// worker.
type putOutcomes struct {
	mu sync.Mutex
	by map[string]*[2]int // backup → created, refused
}

const minRefusals = 16

func (p *putOutcomes) worthIt(backup string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.by[backup]
	return c == nil || c[1] < minRefusals || c[1] <= c[0]
}

func (p *putOutcomes) add(backup string, created, refused int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.by == nil || len(p.by) > 4096 { // bounded: forgetting costs a few refused PUTs
		p.by = map[string]*[2]int{}
	}
	c := p.by[backup]
	if c == nil {
		c = new([2]int)
		p.by[backup] = c
	}
	c[0] += created
	c[1] += refused
}

// collectionRunning: a garbage collection holds gc.lock (or the lock
// cannot be read, which is treated the same: the cautious path).
func (w *worker) collectionRunning(ctx context.Context) bool {
	return w.rt.GC.Running(ctx)
}

func (w *worker) readSegment(ctx context.Context, disk source.Disk, seg *contracts.Segment, toRead []int, done *contracts.SegmentDone, stats *segmentStats) error {
	err := w.readBatches(ctx, disk, seg, toRead, done, stats)
	if werr := stats.place.Wait(); err == nil {
		err = werr
	}
	return err
}

func (w *worker) readBatches(ctx context.Context, disk source.Disk, seg *contracts.Segment, toRead []int, done *contracts.SegmentDone, stats *segmentStats) error {
	if disk.Size() != seg.DiskSize {
		return bus.Permanent(fmt.Errorf("source %s is %d bytes, planned as %d: it changed under the backup", seg.Source, disk.Size(), seg.DiskSize))
	}
	perBatch := max(1, batchBytes/seg.ChunkSize)
	need := perBatch * seg.ChunkSize
	batches := (len(toRead) + perBatch - 1) / perBatch
	rel := func(k int) []int { return toRead[k*perBatch : min((k+1)*perBatch, len(toRead))] }
	// When this segment is the worker's only one (an incremental's one big
	// run of changes), the next batch is read while this one is hashed,
	// asked about and stored, and chunks are hashed in parallel: the
	// segment otherwise waits for its source and its store in turn
	// (through a qcow2 dirty bitmap: 0.35 s → 0.27 s). With other segments
	// running the worker is busy anyway, and a second buffer per segment
	// only cost page faults (a synthetic full 10 % slower).
	var mem [2][]byte
	buffer := func(i int) []byte {
		if mem[i] == nil {
			mem[i] = w.getBatch(need)
		}
		return mem[i]
	}
	defer func() {
		for _, b := range mem {
			if b != nil {
				w.putBatch(b)
			}
		}
	}()
	type readDone struct {
		bufs [][]byte
		err  error
	}
	readAsync := func(k, into int) <-chan readDone {
		ch := make(chan readDone, 1)
		mem := buffer(into) // allocated here: mem is only touched by this goroutine
		go func() {
			bufs, err := w.read(ctx, disk, seg, rel(k), mem)
			ch <- readDone{bufs, err}
		}()
		return ch
	}
	var pending <-chan readDone
	cur := 0 // the buffer of the batch being stored
	for k := range batches {
		t := time.Now()
		var r readDone
		if pending != nil {
			r, pending = <-pending, nil
		} else {
			r.bufs, r.err = w.read(ctx, disk, seg, rel(k), buffer(cur))
		}
		stats.read += time.Since(t) // the wait for the source, not hidden behind the previous batch
		if r.err != nil {
			return r.err
		}
		alone := w.active.Load() <= 1
		if k+1 < batches && alone {
			pending = readAsync(k+1, 1-cur)
		}
		if err := w.batch(ctx, seg, rel(k), r.bufs, alone, done, stats); err != nil {
			if pending != nil {
				<-pending // its buffer is written until the read ends
			}
			return err
		}
		if pending != nil {
			cur = 1 - cur // the next batch is in the other buffer
		}
	}
	return nil
}

// getBatch returns a read buffer of at least need bytes, reusing a free one.
func (w *worker) getBatch(need int) []byte {
	var buf []byte
	select {
	case buf = <-w.batches:
	default:
	}
	if cap(buf) < need {
		buf = make([]byte, need)
	}
	return buf[:cap(buf)]
}

func (w *worker) putBatch(buf []byte) {
	select {
	case w.batches <- buf:
	default: // enough kept
	}
}

// read reads the given chunks (indexes relative to the segment, ascending)
// into mem, one source request per contiguous run: a round trip per run,
// not per chunk, matters for network sources (NBD, vSphere).
func (w *worker) read(ctx context.Context, disk source.Disk, seg *contracts.Segment, rel []int, mem []byte) ([][]byte, error) {
	bufs := make([][]byte, len(rel))
	for start := 0; start < len(rel); {
		end := start + 1
		for end < len(rel) && rel[end] == rel[end-1]+1 {
			end++
		}
		off := (seg.FirstChunk + int64(rel[start])) * int64(seg.ChunkSize)
		size := min(int64(end-start)*int64(seg.ChunkSize), seg.DiskSize-off)
		span := mem[:size:size]
		mem = mem[size:]
		if w.limiter != nil {
			for n := int64(0); n < size; n += int64(seg.ChunkSize) { // WaitN may not exceed the burst
				if err := w.limiter.WaitN(ctx, int(min(int64(seg.ChunkSize), size-n))); err != nil {
					return nil, err
				}
			}
		}
		if _, err := disk.ReadAt(span, off); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("read %s at %d: %w", seg.Source, off, err)
		}
		for i := start; i < end; i++ {
			lo := int64(i-start) * int64(seg.ChunkSize)
			bufs[i] = span[lo:min(lo+int64(seg.ChunkSize), size)]
		}
		start = end
	}
	return bufs, nil
}

// batch hashes the given chunks (indexes relative to the segment, read
// into bufs) and uploads the ones the repository lacks.
func (w *worker) batch(ctx context.Context, seg *contracts.Segment, rel []int, bufs [][]byte, parallel bool, done *contracts.SegmentDone, stats *segmentStats) error {
	ids := w.hash(bufs, parallel)
	var ask []string
	asked := map[chunk.ID]int{} // id → position in this batch of its first chunk
	for i, r := range rel {
		buf := bufs[i]
		done.ReadBytes += int64(len(buf))
		bufs[i] = nil // kept below only for chunks dedup may want
		if ids[i] == nil {
			stats.zeroBytes += int64(len(buf))
			done.IDs[r] = "" // a zero chunk: never stored
			continue
		}
		id := *ids[i]
		done.IDs[r] = id.String()
		if r < len(stats.parent) && stats.parent[r] == id {
			if r < len(stats.parentLocs) {
				stats.place.Locate(id, stats.parentLocs[r])
			}
			stats.sameAsParent++
			continue // stored: the verified parent holds it at this place
		}
		if stats.place.Placed(id) {
			continue // stored or located by an earlier batch of this segment
		}
		if _, dup := asked[id]; !dup {
			asked[id] = i
			bufs[i] = buf
			ask = append(ask, id.String())
		}
	}
	if len(ask) == 0 {
		return nil
	}
	if stats.putFirst && w.puts.worthIt(seg.BackupID) {
		t := time.Now()
		present, err := w.upload(ctx, seg, rel, ask, asked, bufs, done, stats)
		stats.upload += time.Since(t)
		if err != nil {
			return err
		}
		w.puts.add(seg.BackupID, len(ask)-len(present), len(present))
		if len(present) == 0 {
			return nil
		}
		ask = present
	}
	t := time.Now()
	var reply contracts.MissingReply
	if err := bus.Request(ctx, w.rt.Bus.NC, contracts.SubjectDedupMissing, &contracts.MissingRequest{Schema: contracts.SchemaVersion, IDs: ask}, &reply); err != nil {
		return fmt.Errorf("ask dedup: %w", err)
	}
	stats.ask += time.Since(t)
	t = time.Now()
	err := w.store(ctx, seg, rel, &reply, asked, bufs, done, stats)
	stats.upload += time.Since(t)
	return err
}

// hash returns the id of each chunk, nil for an all-zero one, several
// at once if parallel.
func (w *worker) hash(bufs [][]byte, parallel bool) []*chunk.ID {
	ids := make([]*chunk.ID, len(bufs))
	all := make([]chunk.ID, len(bufs))
	one := func(i int) {
		if !chunk.AllZero(bufs[i]) {
			all[i] = w.rt.Repo.ChunkID(bufs[i])
			ids[i] = &all[i]
		}
	}
	if !parallel {
		for i := range bufs {
			one(i)
		}
		return ids
	}
	var g errgroup.Group
	g.SetLimit(goruntime.GOMAXPROCS(0))
	for i := range bufs {
		g.Go(func() error { one(i); return nil })
	}
	g.Wait()
	return ids
}

// upload stores the chunks named by hexIDs (each must be one of asked)
// each with a conditional write: the ids the store already held are
// returned instead of counted.
func (w *worker) upload(ctx context.Context, seg *contracts.Segment, rel []int, hexIDs []string, asked map[chunk.ID]int, bufs [][]byte, done *contracts.SegmentDone, stats *segmentStats) (present []string, err error) {
	ids, data, at, err := pick(hexIDs, asked, bufs)
	if err != nil {
		return nil, err
	}
	sizes, err := stats.place.PutIfAbsent(ctx, ids, data, w.cfg.codecFor(seg))
	if err != nil {
		return nil, err
	}
	for k, n := range sizes {
		if n == 0 {
			present = append(present, hexIDs[k])
			continue
		}
		stored(done, stats, rel[at[k]], n, len(data[k]))
	}
	metrics.ChunksRefused.Add(float64(len(present)))
	return present, nil
}

// store stores the chunks dedup answered missing (Store decides how: see
// repo.Writer) and records where every asked chunk is: where it was
// stored now, or where dedup located it.
func (w *worker) store(ctx context.Context, seg *contracts.Segment, rel []int, reply *contracts.MissingReply, asked map[chunk.ID]int, bufs [][]byte, done *contracts.SegmentDone, stats *segmentStats) error {
	for _, l := range reply.Located {
		id, err := chunk.ParseID(l.ID)
		if err != nil {
			return fmt.Errorf("dedup reply: %w", err)
		}
		p, err := chunk.ParsePackID(reply.Packs[l.Pack]) // index checked by Validate
		if err != nil {
			return fmt.Errorf("dedup reply: %w", err)
		}
		stats.place.Locate(id, chunk.Loc{Pack: p, Off: l.Off, Len: l.Len})
	}
	if len(reply.Missing) == 0 {
		return nil
	}
	ids, data, at, err := pick(reply.Missing, asked, bufs)
	if err != nil {
		return err
	}
	var loose []bool // repairs: on their own (see MissingReply.Loose)
	if len(reply.Loose) > 0 {
		repair := map[string]bool{}
		for _, s := range reply.Loose {
			repair[s] = true
		}
		loose = make([]bool, len(ids))
		for k, s := range reply.Missing {
			loose[k] = repair[s]
		}
	}
	sizes, err := stats.place.Store(ctx, ids, data, loose, w.cfg.codecFor(seg), w.active.Load() <= 1)
	if err != nil {
		return err
	}
	for k, n := range sizes {
		stored(done, stats, rel[at[k]], n, len(data[k]))
	}
	return nil
}

// stored counts a chunk this segment stored at position at: size bytes
// stored of raw read.
func stored(done *contracts.SegmentDone, stats *segmentStats, at, size, raw int) {
	done.UploadedChunks++
	done.UploadedBytes += int64(size)
	stats.storedRaw += int64(raw)
	stats.stored = append(stats.stored, at)
}

// count adds a segment whose result was published to the metrics: what
// was read and what became of it, and what was never read (read of the
// segment's chunks: the rest are unallocated, or an incremental's
// unchanged ones).
func count(seg *contracts.Segment, read int, done *contracts.SegmentDone, stats *segmentStats, took time.Duration) {
	metrics.SegmentDuration.Observe(took.Seconds())
	metrics.BytesRead.Add(float64(done.ReadBytes))
	metrics.BytesStored.Add(float64(done.UploadedBytes))
	metrics.ChunksUploaded.Add(float64(done.UploadedChunks))
	metrics.BytesDeduplicated.Add(float64(max(0, done.ReadBytes-stats.zeroBytes-stats.storedRaw)))
	metrics.BytesSkipped.WithLabelValues("zero").Add(float64(stats.zeroBytes))
	segBytes := min(int64(seg.Chunks)*int64(seg.ChunkSize), seg.DiskSize-seg.FirstChunk*int64(seg.ChunkSize))
	unread := max(0, segBytes-done.ReadBytes)
	if read == seg.Chunks {
		unread = 0
	}
	reason := "unallocated"
	if seg.Inherit {
		reason = "unchanged"
	}
	metrics.BytesSkipped.WithLabelValues(reason).Add(float64(unread))
}

// pick returns the ids and bytes of the chunks named by hexIDs, each one
// that was asked about, and their positions in the batch.
func pick(hexIDs []string, asked map[chunk.ID]int, bufs [][]byte) ([]chunk.ID, [][]byte, []int, error) {
	ids := make([]chunk.ID, len(hexIDs))
	data := make([][]byte, len(hexIDs))
	at := make([]int, len(hexIDs))
	for k, hexID := range hexIDs {
		id, err := chunk.ParseID(hexID)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("dedup reply: %w", err)
		}
		i, ok := asked[id]
		if !ok {
			return nil, nil, nil, fmt.Errorf("dedup reply names chunk %s that was not asked about", hexID)
		}
		ids[k], data[k], at[k] = id, bufs[i], i
	}
	return ids, data, at, nil
}
