package transfer

import (
	"context"
	"sync"
	"time"

	"github.com/strata-backup/strata/pkg/source"
)

// diskPool keeps source disks open between the segments of one backup:
// opening an NBD export costs a handshake of several round trips (tens of
// milliseconds), more than reading a segment's few changed chunks. Disks
// are keyed by backup and source, never shared across backups, so a
// replaced image file is never read through a stale handle; idle ones are
// closed after idleTimeout. At most perDisk connections to one disk are
// open at once (STRATA_NBD_CONNECTIONS: qemu-nbd serves -e N clients).
type diskPool struct {
	sources *source.Opener
	perDisk int
	mu      sync.Mutex
	// changed is closed (and replaced) whenever a disk comes back or is
	// closed: a channel, not a sync.Cond, so a waiter can also stop
	// waiting when its context ends.
	changed chan struct{}
	idle    map[poolKey][]pooledDisk
	open    map[poolKey]int // connections open, idle or in use
}

type poolKey struct{ backup, source string }

type pooledDisk struct {
	disk  source.Disk
	since time.Time
}

const idleTimeout = 20 * time.Second

func newDiskPool(ctx context.Context, sources *source.Opener, perDisk int) *diskPool {
	p := &diskPool{sources: sources, perDisk: max(1, perDisk), idle: map[poolKey][]pooledDisk{}, open: map[poolKey]int{}}
	p.changed = make(chan struct{})
	go func() {
		t := time.NewTicker(idleTimeout / 2)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				p.closeIdle(time.Now().Add(time.Hour))
				return
			case now := <-t.C:
				p.closeIdle(now)
			}
		}
	}()
	return p
}

// get returns an open disk for the backup's source, waiting while the
// disk already has perDisk connections in use.
func (p *diskPool) get(ctx context.Context, backup, src string) (source.Disk, error) {
	k := poolKey{backup, src}
	p.mu.Lock()
	for {
		if list := p.idle[k]; len(list) > 0 {
			d := list[len(list)-1].disk
			p.idle[k] = list[:len(list)-1]
			p.mu.Unlock()
			return d, nil
		}
		if p.open[k] < p.perDisk {
			break
		}
		// Every holder hands its disk back or closes it.
		changed := p.changed
		p.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		p.mu.Lock()
	}
	p.open[k]++
	p.mu.Unlock()
	d, err := p.sources.Open(ctx, src)
	if err != nil {
		p.closed(k)
		return nil, err
	}
	return d, nil
}

// closed accounts for a connection of k that was closed.
func (p *diskPool) closed(k poolKey) {
	p.mu.Lock()
	p.closedLocked(k)
	p.mu.Unlock()
}

func (p *diskPool) closedLocked(k poolKey) {
	if p.open[k]--; p.open[k] <= 0 {
		delete(p.open, k)
	}
	p.signal()
}

// put hands a disk back; a disk that failed is closed instead.
func (p *diskPool) put(backup, src string, d source.Disk, healthy bool) {
	k := poolKey{backup, src}
	if !healthy {
		d.Close()
		p.closed(k)
		return
	}
	p.mu.Lock()
	p.idle[k] = append(p.idle[k], pooledDisk{d, time.Now()})
	p.signal()
	p.mu.Unlock()
}

func (p *diskPool) closeIdle(now time.Time) {
	p.mu.Lock()
	var closing []source.Disk
	for k, list := range p.idle {
		keep := list[:0]
		for _, pd := range list {
			if now.Sub(pd.since) >= idleTimeout {
				closing = append(closing, pd.disk)
				p.closedLocked(k)
			} else {
				keep = append(keep, pd)
			}
		}
		if len(keep) == 0 {
			delete(p.idle, k)
		} else {
			p.idle[k] = keep
		}
	}
	p.mu.Unlock()
	for _, d := range closing {
		d.Close()
	}
}

// signal wakes every waiter; p.mu is held.
func (p *diskPool) signal() {
	close(p.changed)
	p.changed = make(chan struct{})
}
