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
// closed after idleTimeout.
type diskPool struct {
	sources *source.Opener
	mu      sync.Mutex
	idle    map[poolKey][]pooledDisk
}

type poolKey struct{ backup, source string }

type pooledDisk struct {
	disk  source.Disk
	since time.Time
}

const idleTimeout = 20 * time.Second

func newDiskPool(ctx context.Context, sources *source.Opener) *diskPool {
	p := &diskPool{sources: sources, idle: map[poolKey][]pooledDisk{}}
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

// get returns an open disk for the backup's source.
func (p *diskPool) get(ctx context.Context, backup, src string) (source.Disk, error) {
	k := poolKey{backup, src}
	p.mu.Lock()
	if list := p.idle[k]; len(list) > 0 {
		d := list[len(list)-1].disk
		p.idle[k] = list[:len(list)-1]
		p.mu.Unlock()
		return d, nil
	}
	p.mu.Unlock()
	return p.sources.Open(ctx, src)
}

// put hands a disk back; a disk that failed is closed instead.
func (p *diskPool) put(backup, src string, d source.Disk, healthy bool) {
	if !healthy {
		d.Close()
		return
	}
	k := poolKey{backup, src}
	p.mu.Lock()
	p.idle[k] = append(p.idle[k], pooledDisk{d, time.Now()})
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
