package source

import (
	"context"
	"net/url"

	"github.com/strata-backup/strata/contracts"
)

// Driver is one kind of source, registered under its URL scheme in
// Opener.drivers: the one place that knows which kinds exist. A new
// hypervisor is a new Driver, not an edit of every caller.
type Driver interface {
	// Open opens one disk: a source URL of this scheme, or a disk URL
	// this driver's Snapshot planned. URLs reach drivers validated
	// (contracts.ValidateSource).
	Open(ctx context.Context, rawURL string) (Disk, error)
	// Snapshot takes (or, redelivered, finds again) the point in time a
	// backup reads. Images and exports are their own point: one disk,
	// nothing held.
	Snapshot(ctx context.Context, rawURL, backupID string) (*Point, error)
	// Release lets go of what Snapshot took once the backup is verified
	// (kept) or has failed; a source with change-tracking points (libvirt
	// checkpoints) keeps the point of a kept backup and drops the rest.
	// Idempotent.
	Release(ctx context.Context, rawURL, backupID string, kept bool) (released bool, err error)
}

// Restorer is a driver that restores a backup back to its hypervisor, to
// a target URL of its own scheme.
type Restorer interface {
	// CheckRestore refuses, before any disk is restored, a restore that
	// could not finish (name taken, no room, unknown placement).
	CheckRestore(ctx context.Context, rec *contracts.BackupRecord, target *url.URL) error
	// Restore creates the target from the backup's restored disk images.
	Restore(ctx context.Context, rec *contracts.BackupRecord, target *url.URL, images []Image) error
}

// BootChecker is a driver that can prove restored images boot (Xen
// Orchestra's health check): the restore test's last step.
type BootChecker interface {
	BootCheck(ctx context.Context, rec *contracts.BackupRecord, images []Image) error
}

// Image is one restored disk image, in disk order.
type Image struct {
	Path string
	Size int64
}

// Sources that are their own point in time: a raw image or device, an
// NBD export (the exporter — qemu-nbd on a snapshot — holds it still).
type fileDriver struct{}

func (fileDriver) Open(_ context.Context, rawURL string) (Disk, error) {
	u, _ := url.Parse(rawURL)
	return OpenFile(u.Path)
}
func (fileDriver) Snapshot(_ context.Context, rawURL, _ string) (*Point, error) {
	return selfPoint(rawURL), nil
}
func (fileDriver) Release(context.Context, string, string, bool) (bool, error) { return false, nil }

// nbdDriver opens nbd:// sources, and nbds:// ones with TLS.
type nbdDriver struct{ tls *NBDTLS }

func (d nbdDriver) Open(_ context.Context, rawURL string) (Disk, error) {
	u, _ := url.Parse(rawURL)
	if u.Scheme == "nbds" {
		cfg, err := d.tls.config(u.Hostname())
		if err != nil {
			return nil, err
		}
		return openNBD(u, cfg)
	}
	return OpenNBD(u)
}
func (nbdDriver) Snapshot(_ context.Context, rawURL, _ string) (*Point, error) {
	return selfPoint(rawURL), nil
}
func (nbdDriver) Release(context.Context, string, string, bool) (bool, error) { return false, nil }

func selfPoint(rawURL string) *Point {
	return &Point{Disks: []PointDisk{{Name: "disk0", URL: rawURL}}}
}
