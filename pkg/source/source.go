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
	"github.com/strata-backup/strata/pkg/consistency"
	"github.com/strata-backup/strata/pkg/libvirt"
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

// Opener opens sources through the driver registered for each URL scheme,
// and holds what drivers share across a process (vSphere sessions). One
// per service process; the zero value knows file and nbd sources.
type Opener struct {
	VSphere *vsphere.Sessions // nil: vsphere:// sources refused
	Libvirt libvirt.Settings  // no scratch directory: libvirt sources refused
	NBD     NBDTLS            // how nbds:// sources prove and check identities
}

// Config is the settings of the sources that need any (prefix STRATA_).
type Config struct {
	vsphere.Config
	libvirt.Settings
	NBDTLS
}

// NewOpener returns an opener for the configured sources.
func NewOpener(cfg Config) *Opener {
	return &Opener{VSphere: vsphere.NewSessions(cfg.Config), Libvirt: cfg.Settings, NBD: cfg.NBDTLS}
}

// drivers is the registry: the only place that knows which schemes exist.
func (o *Opener) drivers() map[string]Driver {
	m := map[string]Driver{
		"file":    fileDriver{},
		"nbd":     nbdDriver{},
		"nbds":    nbdDriver{tls: &o.NBD},
		"vsphere": &vsphereDriver{sessions: o.VSphere},
	}
	for _, scheme := range libvirt.Schemes {
		m[scheme] = libvirtDriver{cfg: o.Libvirt}
	}
	return m
}

// driver returns the driver of rawURL's scheme.
func (o *Opener) driver(rawURL string) (Driver, error) {
	if err := contracts.ValidateSource(rawURL); err != nil {
		return nil, err
	}
	u, _ := url.Parse(rawURL)
	d, ok := o.drivers()[u.Scheme]
	if !ok {
		return nil, fmt.Errorf("source %q: no driver for scheme %q", rawURL, u.Scheme)
	}
	return d, nil
}

// Open opens one disk: a file or NBD source URL, or a disk URL the
// snapshotter planned (see Snapshot).
func (o *Opener) Open(ctx context.Context, rawURL string) (Disk, error) {
	d, err := o.driver(rawURL)
	if err != nil {
		return nil, err
	}
	return d.Open(ctx, rawURL)
}

// Point is a consistent point in time of a VM's disks, held until Release.
type Point struct {
	Disks []PointDisk
	// Note tells the user something the backup record should keep
	// (change tracking just enabled, for example).
	Note string
	// VM is the virtual hardware of a hypervisor's VM (nil for images).
	VM *contracts.VMConfig
	// Consistency is what the snapshot got.
	Consistency consistency.Outcome
}

// PointDisk is one disk of a Point: its name (stable across backups of the
// VM, used to match a disk with its parent) and the URL Open reads it by.
type PointDisk struct {
	Name string
	URL  string
}

// Snapshot takes (or, redelivered, finds again) the point in time a backup
// reads.
//
// want is the consistency the backup asks for: a driver that can freeze
// its guest (Consistent) does; any other takes a crash-consistent point,
// or, when want is required, none (the error says why).
func (o *Opener) Snapshot(ctx context.Context, rawURL, backupID string, want consistency.Want) (*Point, error) {
	d, err := o.driver(rawURL)
	if err != nil {
		return nil, err
	}
	if c, ok := d.(Consistent); ok {
		return c.SnapshotConsistent(ctx, rawURL, backupID, want)
	}
	var p *Point
	out, err := consistency.Around(ctx, nil, want, 0, func(ctx context.Context) error {
		var err error
		p, err = d.Snapshot(ctx, rawURL, backupID)
		return err
	})
	if p != nil {
		p.Consistency = out
		if want.Mode != consistency.Crash {
			p.Consistency.Why = strings.Replace(p.Consistency.Why, "the guest has no agent channel",
				"the source has no guest to freeze (a disk image, an export, or a hypervisor without agent support here)", 1)
		}
	}
	return p, err
}

// Thaw thaws the guest behind a source URL (a freeze its snapshotter left:
// pkg/freezes). A source with no guest to thaw is not an error.
func (o *Opener) Thaw(ctx context.Context, rawURL string) error {
	d, err := o.driver(rawURL)
	if err != nil {
		return err
	}
	if t, ok := d.(Thawer); ok {
		return t.Thaw(ctx, rawURL)
	}
	return nil
}

// Thawer is a driver that can thaw its guest's filesystems.
type Thawer interface {
	Thaw(ctx context.Context, rawURL string) error
}

// Consistent is a driver that can freeze its guest's filesystems around
// the snapshot (libvirt, through the QEMU guest agent); it records what
// it got in Point.Consistency.
type Consistent interface {
	SnapshotConsistent(ctx context.Context, rawURL, backupID string, want consistency.Want) (*Point, error)
}

// Release lets go of what Snapshot took for the backup, verified (kept)
// or failed. Idempotent: a point already released is not an error.
func (o *Opener) Release(ctx context.Context, rawURL, backupID string, kept bool) (released bool, err error) {
	d, err := o.driver(rawURL)
	if err != nil {
		return false, err
	}
	return d.Release(ctx, rawURL, backupID, kept)
}

// RestoresTo reports whether target names a place a driver restores to (a
// hypervisor URL such as vsphere://HOST/NEW-VM) rather than a file path.
func (o *Opener) RestoresTo(target string) bool {
	u, err := url.Parse(target)
	if err != nil || u.Scheme == "" {
		return false
	}
	_, ok := o.drivers()[u.Scheme].(Restorer)
	return ok
}

// restorer returns the driver that restores rec to target, refusing a
// target of another kind than the backup's source.
func (o *Opener) restorer(rec *contracts.BackupRecord, target string) (Restorer, *url.URL, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, nil, fmt.Errorf("restore target %q: %w", target, err)
	}
	r, ok := o.drivers()[u.Scheme].(Restorer)
	if !ok {
		return nil, nil, fmt.Errorf("restore target %q: no driver restores to %s://", target, u.Scheme)
	}
	if src, err := url.Parse(rec.Source); err != nil || src.Scheme != u.Scheme {
		return nil, nil, fmt.Errorf("backup %s is of %s, not of a %s VM: restore it to a file", rec.ID, rec.Source, u.Scheme)
	}
	return r, u, nil
}

// CheckRestore refuses, before any disk is restored, a restore to target
// that could not finish.
func (o *Opener) CheckRestore(ctx context.Context, rec *contracts.BackupRecord, target string) error {
	r, u, err := o.restorer(rec, target)
	if err != nil {
		return err
	}
	return r.CheckRestore(ctx, rec, u)
}

// Restore makes target (a new VM) from the restored images of rec's disks.
func (o *Opener) Restore(ctx context.Context, rec *contracts.BackupRecord, target string, images []Image) error {
	r, u, err := o.restorer(rec, target)
	if err != nil {
		return err
	}
	return r.Restore(ctx, rec, u, images)
}

// BootCheck runs the driver's boot check of restored images when the
// backup's source has one (a hypervisor); checked reports whether it did.
func (o *Opener) BootCheck(ctx context.Context, rec *contracts.BackupRecord, images []Image) (checked bool, err error) {
	d, err := o.driver(rec.Source)
	if err != nil {
		return false, err
	}
	b, ok := d.(BootChecker)
	if !ok {
		return false, nil
	}
	return true, b.BootCheck(ctx, rec, images)
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

// WhollyInside returns the chunk ranges [first, end) that lie entirely
// inside extents (sorted, disjoint): a chunk partly outside is not one.
func WhollyInside(extents []Extent, chunkSize int) [][2]int64 {
	var runs [][2]int64
	cs := int64(chunkSize)
	for i := 0; i < len(extents); {
		// Join extents that touch: a chunk may span two of them.
		off, end := extents[i].Offset, extents[i].Offset+extents[i].Length
		for i++; i < len(extents) && extents[i].Offset <= end; i++ {
			end = max(end, extents[i].Offset+extents[i].Length)
		}
		first, last := (off+cs-1)/cs, end/cs
		if first < last {
			runs = append(runs, [2]int64{first, last})
		}
	}
	return runs
}

// SubtractRuns returns the chunks of runs not in cut (both sorted,
// disjoint [first, end) ranges), and how many chunks were taken out.
func SubtractRuns(runs, cut [][2]int64) ([][2]int64, int64) {
	var out [][2]int64
	var removed int64
	j := 0
	for _, r := range runs {
		lo, hi := r[0], r[1]
		for j < len(cut) && cut[j][1] <= lo {
			j++
		}
		for k := j; k < len(cut) && cut[k][0] < hi; k++ {
			c := cut[k]
			if c[0] > lo {
				out = append(out, [2]int64{lo, c[0]})
			}
			removed += min(hi, c[1]) - max(lo, c[0])
			lo = max(lo, c[1])
		}
		if lo < hi {
			out = append(out, [2]int64{lo, hi})
		}
	}
	return out, removed
}
