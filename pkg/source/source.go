// Package source reads virtual disks. Every source — a raw image file, a
// block device, later vSphere and NBD — is a Disk; the transfer pipeline
// reads every kind the same way.
package source

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/vsphere"
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

// Open opens the disk a file:// or nbd:// source URL names (sources that
// need no shared state; see Opener for all of them).
func Open(ctx context.Context, rawURL string) (Disk, error) {
	return (&Opener{}).Open(ctx, rawURL)
}

// Opener opens sources and holds what they share across a process: the
// vSphere sessions. One per service process.
type Opener struct {
	VSphere *vsphere.Sessions // nil: vsphere:// sources refused
}

// NewOpener returns an opener for the configured sources.
func NewOpener(cfg vsphere.Config) *Opener {
	return &Opener{VSphere: vsphere.NewSessions(cfg)}
}

// Open opens one disk: a file or NBD source URL, or a disk URL the
// snapshotter planned (see Snapshot).
func (o *Opener) Open(ctx context.Context, rawURL string) (Disk, error) {
	if err := contracts.ValidateSource(rawURL); err != nil {
		return nil, err
	}
	u, _ := url.Parse(rawURL)
	switch u.Scheme {
	case "file":
		return OpenFile(u.Path)
	case "nbd":
		return OpenNBD(u)
	case "vsphere":
		return o.openVSphere(ctx, rawURL)
	}
	return nil, fmt.Errorf("source %q: unsupported", rawURL)
}

// Point is a consistent point in time of a VM's disks, held until Release.
type Point struct {
	Disks []PointDisk
	// Note tells the user something the backup record should keep
	// (change tracking just enabled, for example).
	Note string
	// VM is the virtual hardware of a hypervisor's VM (nil for images).
	VM *contracts.VMConfig
}

// PointDisk is one disk of a Point: its name (stable across backups of the
// VM, used to match a disk with its parent) and the URL Open reads it by.
type PointDisk struct {
	Name string
	URL  string
}

// Snapshot takes (or, redelivered, finds again) the point in time a backup
// reads. A file or NBD source is its own point: one disk, nothing held;
// the hypervisor or the exporter (qemu-nbd on a snapshot) keeps it still.
func (o *Opener) Snapshot(ctx context.Context, rawURL, backupID string) (*Point, error) {
	if err := contracts.ValidateSource(rawURL); err != nil {
		return nil, err
	}
	if strings.HasPrefix(rawURL, "vsphere:") {
		return o.snapshotVSphere(ctx, rawURL, backupID)
	}
	return &Point{Disks: []PointDisk{{Name: "disk0", URL: rawURL}}}, nil
}

// Release lets go of what Snapshot took for the backup. Idempotent: a
// point already released is not an error.
func (o *Opener) Release(ctx context.Context, rawURL, backupID string) (released bool, err error) {
	if strings.HasPrefix(rawURL, "vsphere:") {
		return o.releaseVSphere(ctx, rawURL, backupID)
	}
	return false, nil
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
