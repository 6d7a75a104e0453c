// Package overlay makes a read-only disk writable without touching it: a
// copy-on-write file holds every part of the disk that was written, at its
// own offset, and a map with one bit per grain (the backup's chunk size)
// says which parts the file holds. The same pair is a live restore's
// target: a background fill copies every grain the guest has not written
// into the file, after which the file alone is the disk.
//
// Durability follows the block-device contract: a write is durable once a
// Flush that started after it returns. The map only ever gains bits, and a
// bit is persisted only after the data it covers was synced, so a crash at
// any point leaves every grain either as the base has it or as the guest
// last flushed it — never zeros or a torn copy where the base had data.
package overlay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/nbd"
)

// Base is the disk under an overlay (a backup point's Reader).
type Base interface {
	Size() int64
	ReadAt(ctx context.Context, p []byte, off int64) error
	Extents(off, length int64) []nbd.Extent
}

// Options describe what an overlay lies over.
type Options struct {
	// Identity names the base ("vm/backup/disk0"); a map made over another
	// base is refused, so an overlay never lands on the wrong backup.
	Identity string
	// Grain is the bytes per map bit: a power of two (the chunk size).
	Grain int
}

const (
	mapMagic  = "STRATA-OVERLAY-MAP 1\n"
	headerLen = 4096
	pageLen   = 4096 // the map is persisted a page at a time
	stripes   = 256  // grain locks
)

type header struct {
	Identity string `json:"identity"`
	Size     int64  `json:"size"`
	Grain    int    `json:"grain"`
}

// Overlay is a writable disk: Base plus the grains written to its file.
// Its methods may be called concurrently.
type Overlay struct {
	base  Base
	data  *os.File
	mapf  *os.File
	size  int64
	grain int64
	n     int // grains

	locks [stripes]sync.Mutex // held while a grain is copied up or filled

	mu      sync.Mutex
	bits    []byte
	present int
	dirty   map[int]bool // map pages changed since the last Flush

	flushMu sync.Mutex
}

// Open opens the overlay whose data and map files are at dataPath and
// mapPath, creating both when the map does not exist yet (an existing
// data file is then reused as the target, sized to the base).
func Open(dataPath, mapPath string, base Base, opt Options) (*Overlay, error) {
	if opt.Grain <= 0 || opt.Grain&(opt.Grain-1) != 0 {
		return nil, fmt.Errorf("overlay grain %d: not a power of two", opt.Grain)
	}
	size := base.Size()
	want := header{Identity: opt.Identity, Size: size, Grain: opt.Grain}
	o := &Overlay{base: base, size: size, grain: int64(opt.Grain), dirty: map[int]bool{}}
	o.n = int((size + o.grain - 1) / o.grain)
	o.bits = make([]byte, (o.n+7)/8)

	mapf, err := os.OpenFile(mapPath, os.O_RDWR, 0)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := createMap(mapPath, want, len(o.bits)); err != nil {
			return nil, err
		}
		if mapf, err = os.OpenFile(mapPath, os.O_RDWR, 0); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, err
	}
	o.mapf = mapf
	if err := o.loadMap(mapPath, want); err != nil {
		mapf.Close()
		return nil, err
	}
	data, err := os.OpenFile(dataPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		mapf.Close()
		return nil, err
	}
	o.data = data
	st, err := data.Stat()
	if err == nil && st.Size() != size {
		if o.present > 0 {
			err = fmt.Errorf("overlay %s is %d bytes, its map %s is for a %d-byte disk", dataPath, st.Size(), mapPath, size)
		} else {
			err = data.Truncate(size)
		}
	}
	if err != nil {
		o.Close()
		return nil, err
	}
	return o, nil
}

func createMap(path string, h header, bitmapLen int) error {
	head, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if len(mapMagic)+len(head)+1 > headerLen {
		return fmt.Errorf("overlay map header of %d bytes", len(head))
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	buf := make([]byte, headerLen)
	copy(buf, mapMagic)
	copy(buf[len(mapMagic):], append(head, '\n'))
	_, err = f.Write(buf)
	if err == nil {
		err = f.Truncate(headerLen + int64(bitmapLen)) // the bitmap starts all zero: nothing present
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		return fmt.Errorf("create overlay map %s: %w", path, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (o *Overlay) loadMap(path string, want header) error {
	buf := make([]byte, headerLen+len(o.bits))
	if _, err := io.ReadFull(io.NewSectionReader(o.mapf, 0, int64(len(buf))), buf); err != nil {
		return fmt.Errorf("overlay map %s: %w", path, err)
	}
	if !bytes.HasPrefix(buf, []byte(mapMagic)) {
		return fmt.Errorf("%s is not an overlay map", path)
	}
	line, _, _ := bytes.Cut(buf[len(mapMagic):headerLen], []byte("\n"))
	var got header
	if err := json.Unmarshal(line, &got); err != nil {
		return fmt.Errorf("overlay map %s: header: %w", path, err)
	}
	if got != want {
		return fmt.Errorf("overlay map %s was made over %s (%d bytes, grain %d), not %s (%d bytes, grain %d)",
			path, got.Identity, got.Size, got.Grain, want.Identity, want.Size, want.Grain)
	}
	copy(o.bits, buf[headerLen:])
	if extra := o.n % 8; extra != 0 {
		o.bits[len(o.bits)-1] &= 1<<extra - 1 // bits past the last grain mean nothing
	}
	for _, b := range o.bits {
		for ; b != 0; b &= b - 1 {
			o.present++
		}
	}
	return nil
}

// Close releases the files; unflushed writes may be lost.
func (o *Overlay) Close() error {
	err := o.data.Close()
	if cerr := o.mapf.Close(); err == nil {
		err = cerr
	}
	return err
}

// Size is the disk's size.
func (o *Overlay) Size() int64 { return o.size }

// Progress returns how many grains the file holds, of how many.
func (o *Overlay) Progress() (present, total int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.present, o.n
}

func (o *Overlay) has(i int) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.bits[i/8]&(1<<(i%8)) != 0
}

// mark records that the file holds grain i; its data is already written.
func (o *Overlay) mark(i int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.bits[i/8]&(1<<(i%8)) == 0 {
		o.bits[i/8] |= 1 << (i % 8)
		o.present++
		o.dirty[i/8/pageLen] = true
	}
}

// span returns grain i's offset and length (the last may be short).
func (o *Overlay) span(i int) (int64, int64) {
	off := int64(i) * o.grain
	return off, min(o.grain, o.size-off)
}

func (o *Overlay) check(off, n int64) error {
	if off < 0 || n < 0 || off > o.size || n > o.size-off {
		return fmt.Errorf("[%d, +%d) beyond the disk's %d bytes", off, n, o.size)
	}
	return nil
}

// ReadAt reads grains the file holds from it and the rest from the base.
func (o *Overlay) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := o.check(off, int64(len(p))); err != nil {
		return err
	}
	for len(p) > 0 {
		// One run of grains from the same side at a time.
		i := int(off / o.grain)
		in := o.has(i)
		end := (int64(i) + 1) * o.grain
		for j := i + 1; end < off+int64(len(p)) && o.has(j) == in; j++ {
			end += o.grain
		}
		n := min(int64(len(p)), end-off)
		var err error
		if in {
			_, err = o.data.ReadAt(p[:n], off)
		} else {
			err = o.base.ReadAt(ctx, p[:n], off)
		}
		if err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}

// Extents reports grains the file holds as data and the rest as the base
// reports them.
func (o *Overlay) Extents(off, length int64) []nbd.Extent {
	if o.check(off, length) != nil || length == 0 {
		return nil
	}
	i := int(off / o.grain)
	in := o.has(i)
	end := (int64(i) + 1) * o.grain
	for j := i + 1; end < off+length && o.has(j) == in; j++ {
		end += o.grain
	}
	n := min(length, end-off)
	if in {
		return []nbd.Extent{{Length: uint32(min(n, 1<<31)), Flags: 0}}
	}
	return o.base.Extents(off, n)
}

// WriteAt writes p at off into the file. A grain written for the first
// time is first copied up whole from the base, unless p covers it.
func (o *Overlay) WriteAt(ctx context.Context, p []byte, off int64) error {
	if err := o.check(off, int64(len(p))); err != nil {
		return err
	}
	return o.each(off, int64(len(p)), func(i int, goff, within, n int64) error {
		return o.writeGrain(ctx, i, p[goff-off+within:][:n], within)
	})
}

// Zero makes [off, off+n) read back as zeros (trim and write-zeroes):
// whole grains become holes in the file.
func (o *Overlay) Zero(ctx context.Context, off, n int64) error {
	if err := o.check(off, n); err != nil {
		return err
	}
	var zeros []byte
	return o.each(off, n, func(i int, goff, within, k int64) error {
		if _, glen := o.span(i); within == 0 && k == glen {
			o.locks[i%stripes].Lock()
			defer o.locks[i%stripes].Unlock()
			if err := punch(o.data, goff, glen); err != nil {
				return fmt.Errorf("zero [%d, +%d): %w", goff, glen, err)
			}
			o.mark(i)
			return nil
		}
		if zeros == nil {
			zeros = make([]byte, o.grain)
		}
		return o.writeGrain(ctx, i, zeros[:k], within)
	})
}

// each calls fn for every grain [off, off+n) touches, with the grain's
// offset and the part of it touched.
func (o *Overlay) each(off, n int64, fn func(i int, goff, within, k int64) error) error {
	for end := off + n; off < end; {
		i := int(off / o.grain)
		goff, glen := o.span(i)
		within := off - goff
		k := min(glen-within, end-off)
		if err := fn(i, goff, within, k); err != nil {
			return err
		}
		off += k
	}
	return nil
}

func (o *Overlay) writeGrain(ctx context.Context, i int, p []byte, within int64) error {
	goff, glen := o.span(i)
	o.locks[i%stripes].Lock()
	defer o.locks[i%stripes].Unlock()
	if o.has(i) || (within == 0 && int64(len(p)) == glen) {
		if _, err := o.data.WriteAt(p, goff+within); err != nil {
			return err
		}
		o.mark(i)
		return nil
	}
	// Copy-up: the grain's other bytes must stay what the base holds.
	buf := make([]byte, glen)
	if err := o.base.ReadAt(ctx, buf, goff); err != nil {
		return fmt.Errorf("copy up [%d, +%d): %w", goff, glen, err)
	}
	copy(buf[within:], p)
	if _, err := o.data.WriteAt(buf, goff); err != nil {
		return err
	}
	o.mark(i)
	return nil
}

// punch frees a range of the file so it reads as zeros, or writes zeros
// where the filesystem cannot punch holes.
func punch(f *os.File, off, n int64) error {
	const punchHole, keepSize = 0x02, 0x01
	if err := syscall.Fallocate(int(f.Fd()), punchHole|keepSize, off, n); err == nil {
		return nil
	}
	_, err := f.WriteAt(make([]byte, n), off)
	return err
}

// Flush makes every write that returned before it durable: the data is
// synced first, then the map pages that gained bits by then.
func (o *Overlay) Flush(ctx context.Context) error {
	o.flushMu.Lock()
	defer o.flushMu.Unlock()
	// Take the bits before syncing the data: each was set after its
	// grain's data was written, so the sync below covers all of them.
	o.mu.Lock()
	pages := make(map[int][]byte, len(o.dirty))
	for pg := range o.dirty {
		end := min(len(o.bits), (pg+1)*pageLen)
		pages[pg] = bytes.Clone(o.bits[pg*pageLen : end])
	}
	clear(o.dirty)
	o.mu.Unlock()
	err := o.data.Sync()
	if err == nil {
		for pg, b := range pages {
			if _, err = o.mapf.WriteAt(b, headerLen+int64(pg)*pageLen); err != nil {
				break
			}
		}
	}
	if err == nil && len(pages) > 0 {
		err = o.mapf.Sync()
	}
	if err != nil {
		o.mu.Lock()
		for pg := range pages {
			o.dirty[pg] = true // written again by the next Flush
		}
		o.mu.Unlock()
		return fmt.Errorf("flush overlay: %w", err)
	}
	return nil
}

// FillOptions pace a Fill.
type FillOptions struct {
	// BytesPerSecond bounds the copy (0: as fast as the base reads).
	BytesPerSecond int64
	// Batch is the bytes read from the base at once (default 8 MiB).
	Batch int64
	// FlushEvery persists progress after this many bytes (default 256
	// MiB), FlushInterval after this long (default 5 s), whichever first.
	FlushEvery    int64
	FlushInterval time.Duration
	// Progress, if set, is called after each batch.
	Progress func(present, total int)
}

// Fill copies every grain the file does not hold yet from the base (a
// live restore's background copy); grains the guest writes meanwhile are
// left as written. It returns nil once the file holds the whole disk and
// that is flushed; cancelled, it flushes what it copied so a later Fill
// resumes there.
func (o *Overlay) Fill(ctx context.Context, opt FillOptions) (err error) {
	if opt.Batch <= 0 {
		opt.Batch = 8 << 20
	}
	if opt.FlushEvery <= 0 {
		opt.FlushEvery = 256 << 20
	}
	if opt.FlushInterval <= 0 {
		opt.FlushInterval = 5 * time.Second
	}
	lastFlush := time.Now()
	perBatch := max(1, int(opt.Batch/o.grain))
	buf := make([]byte, int64(perBatch)*o.grain)
	start, copied, sinceFlush := time.Now(), int64(0), int64(0)
	defer func() {
		if ferr := o.Flush(context.WithoutCancel(ctx)); err == nil {
			err = ferr
		}
	}()
	for first := 0; first < o.n; first += perBatch {
		last := min(o.n, first+perBatch)
		// Read the batch's missing grains from the base: one read per run.
		for i := first; i < last; {
			if o.has(i) {
				i++
				continue
			}
			j := i + 1
			for j < last && !o.has(j) {
				j++
			}
			off, _ := o.span(i)
			end, endLen := o.span(j - 1)
			end += endLen
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := o.base.ReadAt(ctx, buf[off-int64(first)*o.grain:end-int64(first)*o.grain], off); err != nil {
				return fmt.Errorf("live restore: read [%d, +%d): %w", off, end-off, err)
			}
			for k := i; k < j; k++ {
				if err := o.fillGrain(k, buf[int64(k-first)*o.grain:]); err != nil {
					return err
				}
			}
			copied += end - off
			sinceFlush += end - off
			i = j
		}
		if sinceFlush >= opt.FlushEvery || (sinceFlush > 0 && time.Since(lastFlush) >= opt.FlushInterval) {
			if err := o.Flush(ctx); err != nil {
				return err
			}
			sinceFlush, lastFlush = 0, time.Now()
		}
		if opt.Progress != nil {
			opt.Progress(o.Progress())
		}
		if opt.BytesPerSecond > 0 {
			// Sleep off whatever the copy is ahead of its budget.
			ahead := time.Duration(float64(copied)/float64(opt.BytesPerSecond)*float64(time.Second)) - time.Since(start)
			if ahead > 0 {
				select {
				case <-time.After(ahead):
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
	}
	return nil
}

// fillGrain stores grain i from data unless the guest wrote it meanwhile.
func (o *Overlay) fillGrain(i int, data []byte) error {
	goff, glen := o.span(i)
	o.locks[i%stripes].Lock()
	defer o.locks[i%stripes].Unlock()
	if o.has(i) {
		return nil
	}
	var err error
	if chunk.AllZero(data[:glen]) {
		err = punch(o.data, goff, glen) // a restored hole stays sparse
	} else {
		_, err = o.data.WriteAt(data[:glen], goff)
	}
	if err != nil {
		return fmt.Errorf("live restore: write [%d, +%d): %w", goff, glen, err)
	}
	o.mark(i)
	return nil
}
