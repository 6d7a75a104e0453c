// Package source reads virtual disks. Every source — a raw image file, a
// block device, later vSphere and NBD — is a Disk; the transfer pipeline
// reads every kind the same way.
package source

import (
	"context"
	"errors"
	"fmt"
	"net/url"

	"github.com/strata-backup/strata/contracts"
)

// Extent is a byte range of a disk.
type Extent struct {
	Offset, Length int64
}

// ChangeID names a point in a disk's change history (vSphere change id,
// dirty bitmap generation). Empty means "from the beginning".
type ChangeID string

// ErrNoChangeTracking: the source cannot say what changed since a point;
// the caller re-reads everything and compares chunk ids with the parent.
var ErrNoChangeTracking = errors.New("source has no change tracking")

// Disk is one virtual disk of one snapshot. ReadAt follows io.ReaderAt and
// is safe for concurrent use.
type Disk interface {
	Size() int64
	ReadAt(p []byte, off int64) (int, error)
	// ChangedExtents lists the extents changed since `since`, or every
	// allocated extent when since is empty, and the id of the current state.
	ChangedExtents(ctx context.Context, since ChangeID) ([]Extent, ChangeID, error)
	Close() error
}

// Open opens the disk a source URL names.
func Open(ctx context.Context, rawURL string) (Disk, error) {
	if err := contracts.ValidateSource(rawURL); err != nil {
		return nil, err
	}
	u, _ := url.Parse(rawURL)
	switch u.Scheme {
	case "file":
		return OpenFile(u.Path)
	case "nbd":
		return OpenNBD(u)
	}
	return nil, fmt.Errorf("source %q: unsupported", rawURL)
}

// ChunkRuns turns byte extents into the ordered, merged runs of chunk
// indexes they touch.
func ChunkRuns(extents []Extent, chunkSize int) [][2]int64 {
	var runs [][2]int64 // [first, end)
	cs := int64(chunkSize)
	for _, e := range extents {
		if e.Length <= 0 {
			continue
		}
		first, end := e.Offset/cs, (e.Offset+e.Length+cs-1)/cs
		if n := len(runs); n > 0 && first <= runs[n-1][1] {
			runs[n-1][1] = max(runs[n-1][1], end)
			continue
		}
		runs = append(runs, [2]int64{first, end})
	}
	return runs
}
