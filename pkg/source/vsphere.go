package source

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/strata-backup/strata/contracts"
	"github.com/strata-backup/strata/pkg/consistency"
	"github.com/strata-backup/strata/pkg/vsphere"
)

// SnapshotName is the name of the vSphere snapshot a backup holds.
func SnapshotName(backupID string) string { return "strata-" + backupID }

// vsphereDriver is vsphere:// sources: VMs on vCenter or ESXi.
type vsphereDriver struct {
	sessions *vsphere.Sessions // nil: not configured in this process
}

func (o *vsphereDriver) vsphereVM(ctx context.Context, rawURL string) (vsphere.Target, *govmomi.Client, *vsphere.VM, error) {
	if o.sessions == nil {
		return vsphere.Target{}, nil, nil, errors.New("vsphere sources are not configured in this process")
	}
	t, err := vsphere.ParseTarget(rawURL, o.sessions.Config())
	if err != nil {
		return t, nil, nil, err
	}
	c, err := o.sessions.Client(ctx, t.Endpoint)
	if err != nil {
		return t, nil, nil, err
	}
	vm, err := vsphere.FindVM(ctx, c, t.VM)
	return t, c, vm, err
}

func (o *vsphereDriver) Snapshot(ctx context.Context, rawURL, backupID string) (*Point, error) {
	mode := consistency.Crash
	if o.sessions.Config().Quiesce {
		mode = consistency.Filesystem
	}
	return o.SnapshotConsistent(ctx, rawURL, backupID, consistency.Want{Mode: mode})
}

// SnapshotConsistent takes the snapshot quiesced by VMware Tools unless
// crash consistency is asked for. A quiesce that fails falls back to a
// plain snapshot (preferred, the record says why) or fails the backup
// (required). vcsim accepts the quiesce flag without a guest to quiesce:
// the tests show the API path, not a real VSS or fsfreeze inside a guest.
func (o *vsphereDriver) SnapshotConsistent(ctx context.Context, rawURL, backupID string, want consistency.Want) (*Point, error) {
	_, c, vm, err := o.vsphereVM(ctx, rawURL)
	if err != nil {
		return nil, err
	}
	p := &Point{}
	if p.VM, err = vm.Hardware(ctx); err != nil {
		return nil, err
	}
	enabled, err := vm.EnableChangeTracking(ctx)
	if err != nil {
		return nil, err
	}
	if enabled {
		p.Note = "changed block tracking was off; Strata enabled it: the next backup can be incremental"
	}
	quiesce := want.Mode != consistency.Crash
	// Hooks run on the host only: VMware Tools runs the guest's own
	// scripts at a quiesce (and a guest hook would need Tools' guest
	// operations, with guest credentials).
	var hookWhy string
	if want.PreFreeze != nil {
		if err := want.PreFreeze(ctx, nil); err != nil {
			hookWhy = fmt.Sprintf("pre-freeze hook: %v", err)
		}
	}
	postThaw := func() {
		if want.PostThaw != nil {
			if err := want.PostThaw(ctx, nil); err != nil {
				p.Consistency.Why = consistency.JoinWhy(p.Consistency.Why, "post-thaw hook: "+err.Error())
			}
		}
	}
	if hookWhy != "" && quiesce {
		if want.Required {
			postThaw()
			return nil, fmt.Errorf("%w (%s): %s", consistency.ErrRequired, want.Mode, hookWhy)
		}
		quiesce = false
	}
	start := time.Now()
	snap, err := vm.Snapshot(ctx, SnapshotName(backupID), quiesce)
	p.Consistency = consistency.Outcome{Mode: want.Mode, Frozen: time.Since(start)}
	if want.Mode == consistency.Application && want.PreFreeze == nil {
		p.Consistency.Mode = consistency.Filesystem
	}
	switch {
	case want.Mode == consistency.Crash:
		p.Consistency = consistency.Outcome{Mode: consistency.Crash, Why: "crash consistency asked for"}
	case hookWhy != "":
		p.Consistency = consistency.Outcome{Mode: consistency.Crash, Why: hookWhy}
	}
	if hookWhy != "" && want.Mode == consistency.Crash {
		p.Consistency.Why = consistency.JoinWhy(p.Consistency.Why, hookWhy)
	}
	if err != nil && quiesce {
		why := fmt.Sprintf("VMware Tools could not quiesce the guest: %v", err)
		if want.Required {
			postThaw()
			return nil, fmt.Errorf("%w (%s): %s", consistency.ErrRequired, want.Mode, why)
		}
		p.Consistency = consistency.Outcome{Mode: consistency.Crash, Why: why}
		snap, err = vm.Snapshot(ctx, SnapshotName(backupID), false)
	}
	postThaw()
	if err != nil {
		return nil, err
	}
	disks, err := vsphere.Disks(ctx, c, snap)
	if err != nil {
		return nil, err
	}
	for _, d := range disks {
		p.Disks = append(p.Disks, PointDisk{Name: d.Label, URL: vsphere.DiskURL(rawURL, snap.Value, d.Key)})
	}
	return p, nil
}

func (o *vsphereDriver) Release(ctx context.Context, rawURL, backupID string, _ bool) (bool, error) {
	_, _, vm, err := o.vsphereVM(ctx, rawURL)
	if errors.Is(err, vsphere.ErrVMNotFound) {
		return false, nil // the VM is gone, and its snapshots with it
	}
	if err != nil {
		return false, err
	}
	return vm.RemoveSnapshot(ctx, SnapshotName(backupID))
}

// VSphereDisk is one disk of a backup's vSphere snapshot.
type VSphereDisk struct {
	*vsphere.FlatDisk
	c        *govmomi.Client
	vm, snap types.ManagedObjectReference
}

func (o *vsphereDriver) Open(ctx context.Context, rawURL string) (Disk, error) {
	t, c, vm, err := o.vsphereVM(ctx, rawURL)
	if err != nil {
		return nil, err
	}
	if t.Snapshot == "" || t.DiskKey == 0 {
		return nil, fmt.Errorf("vsphere source %q names a VM, not one disk of a snapshot", rawURL)
	}
	snap := types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: t.Snapshot}
	disks, err := vsphere.Disks(ctx, c, snap)
	if err != nil {
		return nil, err
	}
	for _, d := range disks {
		if d.Key == t.DiskKey {
			flat, err := vsphere.OpenFlat(ctx, c, d)
			if err != nil {
				return nil, err
			}
			return &VSphereDisk{FlatDisk: flat, c: c, vm: vm.Ref(), snap: snap}, nil
		}
	}
	return nil, fmt.Errorf("snapshot %s has no disk with key %d", t.Snapshot, t.DiskKey)
}

// ChangedExtents asks vSphere (CBT): since empty → the allocated areas
// (change id "*"); otherwise the areas changed since that change id. The
// returned ChangeID is the disk's change id at this snapshot.
func (d *VSphereDisk) ChangedExtents(ctx context.Context, since ChangeID) ([]Extent, ChangeID, error) {
	if d.Info.ChangeID == "" {
		if since != "" {
			return nil, "", ErrNoChangeTracking
		}
		return []Extent{{0, d.Size()}}, "", nil
	}
	query := string(since)
	if query == "" {
		query = "*"
	}
	areas, err := vsphere.ChangedAreas(ctx, d.c, d.vm, d.snap, d.Info, query)
	if err != nil {
		return nil, "", err
	}
	out := make([]Extent, len(areas))
	for i, a := range areas {
		out[i] = Extent{a.Offset, a.Length}
	}
	return out, ChangeID(d.Info.ChangeID), nil
}

// ParseRestoreTarget reads vsphere://HOST/NEW-VM[?datastore=&pool=&folder=]:
// the new VM's name and the user's placement choice.
func ParseRestoreTarget(u *url.URL) (string, vsphere.Choice, error) {
	name := strings.TrimPrefix(u.Path, "/")
	if name == "" || strings.Contains(name, "/") {
		return "", vsphere.Choice{}, fmt.Errorf("restore target %s: want vsphere://HOST/NEW-VM-NAME[?datastore=DS&pool=POOL&folder=FOLDER]", u.Redacted())
	}
	q := u.Query()
	for k := range q {
		if k != "datastore" && k != "pool" && k != "folder" {
			return "", vsphere.Choice{}, fmt.Errorf("restore target %s: unknown option %q (datastore, pool, folder)", u.Redacted(), k)
		}
	}
	return name, vsphere.Choice{Datastore: q.Get("datastore"), Pool: q.Get("pool"), Folder: q.Get("folder")}, nil
}

// Restore creates a VM called as the target names it from restored disk
// images, placed beside the VM the backup's source URL names or, when that
// VM is gone, in its datacenter's defaults, then overridden by the user's
// choice; with the backup's recorded hardware.
func (o *vsphereDriver) Restore(ctx context.Context, rec *contracts.BackupRecord, target *url.URL, images []Image) error {
	name, choice, err := ParseRestoreTarget(target)
	if err != nil {
		return err
	}
	c, p, err := o.placement(ctx, rec.Source, choice, imagesSize(images))
	if err != nil {
		return err
	}
	_, err = vsphere.CreateFromImages(ctx, c, p, rec.VMConfig, name, vsphereImages(images))
	return err
}

// CheckRestore refuses, before any disk is restored, a restore to vSphere
// that could not finish: the name is taken, a chosen place does not exist,
// or no placement has room for the backup's disks.
func (o *vsphereDriver) CheckRestore(ctx context.Context, rec *contracts.BackupRecord, target *url.URL) error {
	name, choice, err := ParseRestoreTarget(target)
	if err != nil {
		return err
	}
	c, _, err := o.placement(ctx, rec.Source, choice, rec.Size())
	if err != nil {
		return err
	}
	if _, err := vsphere.FindVM(ctx, c, name); err == nil {
		return fmt.Errorf("a VM named %s exists already; restore under another name", name)
	}
	return nil
}

func vsphereImages(images []Image) []vsphere.Image {
	out := make([]vsphere.Image, len(images))
	for i, img := range images {
		out[i] = vsphere.Image{Path: img.Path, Size: img.Size}
	}
	return out
}

func imagesSize(images []Image) int64 {
	var n int64
	for _, img := range images {
		n += img.Size
	}
	return n
}

// placement puts a restored VM beside the backed-up one or, when that VM
// no longer exists (the disaster a restore is for), in the datacenter it
// was in (its inventory path's, or the only one): VM folder, first
// resource pool, the datastore with the most free space; then applies the
// user's choice.
func (o *vsphereDriver) placement(ctx context.Context, sourceURL string, choice vsphere.Choice, need int64) (*govmomi.Client, vsphere.Placement, error) {
	t, c, like, err := o.vsphereVM(ctx, sourceURL)
	var p vsphere.Placement
	switch {
	case err == nil:
		p, err = vsphere.PlacementBeside(ctx, c, like)
	case errors.Is(err, vsphere.ErrVMNotFound) && c != nil:
		datacenter := ""
		if before, _, ok := strings.Cut(t.VM, "/vm/"); ok && strings.HasPrefix(t.VM, "/") {
			datacenter = before
		}
		p, err = vsphere.DefaultPlacement(ctx, c, datacenter, need)
	}
	if err != nil {
		return nil, p, err
	}
	p, err = choice.Apply(ctx, c, p)
	return c, p, err
}

// BootCheck is a restore test's last step for a vSphere backup (Xen
// Orchestra's health check): a throwaway VM made from the restored images
// beside the original, powered on and off, then destroyed.
func (o *vsphereDriver) BootCheck(ctx context.Context, rec *contracts.BackupRecord, images []Image) error {
	c, p, err := o.placement(ctx, rec.Source, vsphere.Choice{}, imagesSize(images))
	if err != nil {
		return err
	}
	vm, err := vsphere.CreateFromImages(ctx, c, p, rec.VMConfig, "strata-check-"+rec.ID, vsphereImages(images))
	if vm != nil {
		defer vm.Destroy(context.WithoutCancel(ctx))
	}
	if err != nil {
		return err
	}
	return vm.PowerCycle(ctx)
}
