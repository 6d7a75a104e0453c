// Package vsphere is Strata's side of a VMware vSphere conversation through
// govmomi: find a VM, make sure Changed Block Tracking is on, hold one
// snapshot per backup, list the snapshot's disks, ask which areas changed
// since a change id, and read the snapshot's flat disk extents through the
// datastore HTTP endpoint with Range requests.
//
// Everything here is idempotent by name (a snapshot is named after its
// backup), because JetStream delivers the requests that drive it at least
// once.
package vsphere

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Config of vSphere access (prefix STRATA_). Credentials live here, never in
// source URLs, because source URLs are stored in backup records.
type Config struct {
	// URL: the default endpoint, for sources written vsphere:///VM.
	URL      string `envconfig:"VSPHERE_URL"`
	User     string `envconfig:"VSPHERE_USER"`
	Password string `envconfig:"VSPHERE_PASSWORD"`
	// Insecure skips TLS verification (self-signed vCenter certificates,
	// the simulator).
	Insecure bool `envconfig:"VSPHERE_INSECURE" default:"false"`
	// Quiesce asks VMware Tools to quiesce the guest for the snapshot.
	Quiesce bool `envconfig:"VSPHERE_QUIESCE" default:"false"`
}

// Target is what a vsphere:// source URL names: a VM, and for one disk of
// a backup's snapshot, the snapshot and the disk's device key.
//
//	vsphere://vcenter.example.com/DC1/vm/web-01        inventory path
//	vsphere:///web-01                                  name, endpoint from STRATA_VSPHERE_URL
//	vsphere://host/web-01?snapshot=snapshot-42&disk=2000   one disk (planned by the snapshotter)
type Target struct {
	Endpoint string // https://host/sdk
	VM       string // name, or inventory path when it holds a '/'
	Snapshot string // snapshot managed object id, for a disk
	DiskKey  int32
}

// ParseTarget reads a vsphere:// URL.
func ParseTarget(raw string, cfg Config) (Target, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "vsphere" {
		return Target{}, fmt.Errorf("vsphere source %q: not a vsphere:// URL", raw)
	}
	var t Target
	switch {
	case u.Host != "":
		t.Endpoint = "https://" + u.Host + "/sdk"
	case cfg.URL != "":
		t.Endpoint = cfg.URL
	default:
		return Target{}, fmt.Errorf("vsphere source %q names no host and STRATA_VSPHERE_URL is not set", raw)
	}
	t.VM = strings.TrimPrefix(u.Path, "/")
	if t.VM == "" {
		return Target{}, fmt.Errorf("vsphere source %q names no VM", raw)
	}
	if strings.Contains(t.VM, "/") {
		t.VM = "/" + t.VM
	}
	q := u.Query()
	t.Snapshot = q.Get("snapshot")
	if d := q.Get("disk"); d != "" {
		key, err := strconv.ParseInt(d, 10, 32)
		if err != nil {
			return Target{}, fmt.Errorf("vsphere source %q: disk key %q: %w", raw, d, err)
		}
		t.DiskKey = int32(key)
	}
	return t, nil
}

// DiskURL names one disk of a snapshot of the VM the source URL names.
func DiskURL(source, snapshot string, key int32) string {
	u, _ := url.Parse(source)
	u.RawQuery = url.Values{"snapshot": {snapshot}, "disk": {strconv.Itoa(int(key))}}.Encode()
	return u.String()
}

// Sessions keeps one logged-in client per endpoint for the process: vCenter
// limits sessions, and a login costs more than the reads it would serve.
type Sessions struct {
	cfg     Config
	mu      sync.Mutex
	clients map[string]*govmomi.Client
}

// NewSessions returns an empty session cache.
func NewSessions(cfg Config) *Sessions {
	return &Sessions{cfg: cfg, clients: map[string]*govmomi.Client{}}
}

// Config returns the configuration the sessions log in with.
func (s *Sessions) Config() Config { return s.cfg }

// Client returns a logged-in client for the endpoint, logging in again when
// the cached session expired.
func (s *Sessions) Client(ctx context.Context, endpoint string) (*govmomi.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.clients[endpoint]; c != nil {
		if us, err := c.SessionManager.UserSession(ctx); err == nil && us != nil {
			return c, nil
		}
		delete(s.clients, endpoint)
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, fmt.Errorf("vsphere endpoint %q: %w", endpoint, err)
	}
	if s.cfg.User != "" {
		u.User = url.UserPassword(s.cfg.User, s.cfg.Password)
	}
	c, err := govmomi.NewClient(ctx, u, s.cfg.Insecure)
	if err != nil {
		return nil, fmt.Errorf("log in to vsphere %s: %w", u.Redacted(), err)
	}
	s.clients[endpoint] = c
	return c, nil
}

// VM is one virtual machine of one session.
type VM struct {
	c  *govmomi.Client
	vm *object.VirtualMachine
}

// ErrVMNotFound: no VM has that name or inventory path.
var ErrVMNotFound = errors.New("vsphere VM not found")

// FindVM looks a VM up by inventory path, or by name across every
// datacenter (a name held by two VMs is refused, not guessed).
func FindVM(ctx context.Context, c *govmomi.Client, name string) (*VM, error) {
	f := find.NewFinder(c.Client, false)
	if strings.HasPrefix(name, "/") {
		vm, err := f.VirtualMachine(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("%w: %s (%v)", ErrVMNotFound, name, err)
		}
		return &VM{c, vm}, nil
	}
	dcs, err := f.DatacenterList(ctx, "*")
	if err != nil {
		return nil, fmt.Errorf("list datacenters: %w", err)
	}
	var found []*object.VirtualMachine
	for _, dc := range dcs {
		f.SetDatacenter(dc)
		if vms, err := f.VirtualMachineList(ctx, name); err == nil {
			found = append(found, vms...)
		}
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("%w: %s", ErrVMNotFound, name)
	case 1:
		return &VM{c, found[0]}, nil
	}
	return nil, fmt.Errorf("vsphere VM name %q is ambiguous (%d VMs); use its inventory path", name, len(found))
}

// Ref is the VM's managed object reference.
func (v *VM) Ref() types.ManagedObjectReference { return v.vm.Reference() }

// EnableChangeTracking turns CBT on when it is off. vSphere starts tracking
// at the next snapshot, which the backup takes right after.
func (v *VM) EnableChangeTracking(ctx context.Context) (changed bool, err error) {
	var o mo.VirtualMachine
	if err := v.vm.Properties(ctx, v.vm.Reference(), []string{"config.changeTrackingEnabled"}, &o); err != nil {
		return false, fmt.Errorf("read CBT setting of %s: %w", v.vm.InventoryPath, err)
	}
	if o.Config != nil && o.Config.ChangeTrackingEnabled != nil && *o.Config.ChangeTrackingEnabled {
		return false, nil
	}
	task, err := v.vm.Reconfigure(ctx, types.VirtualMachineConfigSpec{ChangeTrackingEnabled: types.NewBool(true)})
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		return false, fmt.Errorf("enable changed block tracking on %s: %w", v.vm.InventoryPath, err)
	}
	return true, nil
}

// Snapshot returns the snapshot with this name, taking it (memory off) if
// there is none: a redelivered request finds the one it took before.
func (v *VM) Snapshot(ctx context.Context, name string, quiesce bool) (types.ManagedObjectReference, error) {
	if ref, err := v.findSnapshot(ctx, name); err != nil || ref != nil {
		if ref == nil {
			return types.ManagedObjectReference{}, err
		}
		return *ref, nil
	}
	task, err := v.vm.CreateSnapshot(ctx, name, "Strata backup; removed when the backup is verified or has failed", false, quiesce)
	if err != nil {
		return types.ManagedObjectReference{}, fmt.Errorf("create snapshot %s of %s: %w", name, v.vm.InventoryPath, err)
	}
	res, err := task.WaitForResult(ctx)
	if err != nil {
		return types.ManagedObjectReference{}, fmt.Errorf("create snapshot %s of %s: %w", name, v.vm.InventoryPath, err)
	}
	ref, ok := res.Result.(types.ManagedObjectReference)
	if !ok {
		return types.ManagedObjectReference{}, fmt.Errorf("create snapshot %s: task returned %T", name, res.Result)
	}
	return ref, nil
}

// RemoveSnapshot deletes the named snapshot (consolidating its delta into
// the VM's disks); a snapshot already gone is not an error.
func (v *VM) RemoveSnapshot(ctx context.Context, name string) (removed bool, err error) {
	ref, err := v.findSnapshot(ctx, name)
	if err != nil || ref == nil {
		return false, err
	}
	res, err := methods.RemoveSnapshot_Task(ctx, v.c.Client, &types.RemoveSnapshot_Task{This: *ref, RemoveChildren: false, Consolidate: types.NewBool(true)})
	if err == nil {
		err = object.NewTask(v.c.Client, res.Returnval).Wait(ctx)
	}
	if err != nil {
		return false, fmt.Errorf("remove snapshot %s of %s: %w", name, v.vm.InventoryPath, err)
	}
	return true, nil
}

func (v *VM) findSnapshot(ctx context.Context, name string) (*types.ManagedObjectReference, error) {
	var o mo.VirtualMachine
	if err := v.vm.Properties(ctx, v.vm.Reference(), []string{"snapshot"}, &o); err != nil {
		return nil, fmt.Errorf("list snapshots of %s: %w", v.vm.InventoryPath, err)
	}
	var found []types.ManagedObjectReference
	if o.Snapshot != nil {
		walkSnapshots(o.Snapshot.RootSnapshotList, func(t types.VirtualMachineSnapshotTree) {
			if t.Name == name {
				found = append(found, t.Snapshot)
			}
		})
	}
	switch len(found) {
	case 0:
		return nil, nil
	case 1:
		return &found[0], nil
	}
	return nil, fmt.Errorf("%d snapshots of %s are named %s", len(found), v.vm.InventoryPath, name)
}

func walkSnapshots(list []types.VirtualMachineSnapshotTree, f func(types.VirtualMachineSnapshotTree)) {
	for _, t := range list {
		f(t)
		walkSnapshots(t.ChildSnapshotList, f)
	}
}

// DiskInfo describes one virtual disk as a snapshot saw it.
type DiskInfo struct {
	Key      int32
	Label    string // "Hard disk 1"
	Capacity int64
	FileName string // "[datastore1] web-01/web-01.vmdk"
	// Datastore holding FileName.
	Datastore types.ManagedObjectReference
	// ChangeID is the CBT change id of the disk at the snapshot; empty when
	// change tracking was off.
	ChangeID string
	// HasParent: the disk is a delta on top of an older snapshot's disk.
	HasParent bool
}

// Disks lists the virtual disks of a snapshot, in device order. Only flat
// VMDK backings are supported (what vSphere creates for thin and thick
// disks); others are refused with the device named.
func Disks(ctx context.Context, c *govmomi.Client, snapshot types.ManagedObjectReference) ([]DiskInfo, error) {
	var s mo.VirtualMachineSnapshot
	if err := c.RetrieveOne(ctx, snapshot, []string{"config.hardware.device"}, &s); err != nil {
		return nil, fmt.Errorf("list disks of snapshot %s: %w", snapshot.Value, err)
	}
	out, err := disksOf(s.Config.Hardware.Device)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", snapshot.Value, err)
	}
	return out, nil
}

// disks lists the VM's current virtual disks.
func (v *VM) disks(ctx context.Context) ([]DiskInfo, error) {
	var o mo.VirtualMachine
	if err := v.vm.Properties(ctx, v.vm.Reference(), []string{"config.hardware.device"}, &o); err != nil {
		return nil, fmt.Errorf("list disks of %s: %w", v.vm.InventoryPath, err)
	}
	return disksOf(o.Config.Hardware.Device)
}

func disksOf(devices []types.BaseVirtualDevice) ([]DiskInfo, error) {
	var out []DiskInfo
	for _, dev := range devices {
		disk, ok := dev.(*types.VirtualDisk)
		if !ok {
			continue
		}
		label := fmt.Sprintf("disk-%d", disk.Key)
		if d := disk.DeviceInfo.GetDescription(); d != nil && d.Label != "" {
			label = d.Label
		}
		b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if !ok {
			return nil, fmt.Errorf("%s: backing %T is not supported (flat VMDK only)", label, disk.Backing)
		}
		if b.Datastore == nil {
			return nil, fmt.Errorf("%s: backing %s names no datastore", label, b.FileName)
		}
		capacity := disk.CapacityInBytes
		if capacity == 0 {
			capacity = disk.CapacityInKB * 1024
		}
		out = append(out, DiskInfo{Key: disk.Key, Label: label, Capacity: capacity, FileName: b.FileName,
			Datastore: *b.Datastore, ChangeID: b.ChangeId, HasParent: b.Parent != nil})
	}
	if len(out) == 0 {
		return nil, errors.New("no virtual disks")
	}
	return out, nil
}

// Area is a byte range of a disk.
type Area struct{ Offset, Length int64 }

// ChangedAreas asks vSphere which areas of the disk changed between the
// change id and the snapshot, paging through the whole disk. changeID "*"
// asks for every allocated area (for a full backup).
func ChangedAreas(ctx context.Context, c *govmomi.Client, vm, snapshot types.ManagedObjectReference, disk DiskInfo, changeID string) ([]Area, error) {
	var out []Area
	for off := int64(0); off < disk.Capacity; {
		res, err := methods.QueryChangedDiskAreas(ctx, c.Client, &types.QueryChangedDiskAreas{
			This: vm, Snapshot: &snapshot, DeviceKey: disk.Key, StartOffset: off, ChangeId: changeID})
		if err != nil {
			return nil, fmt.Errorf("query changed areas of %s since %q at %d: %w", disk.Label, changeID, off, err)
		}
		info := res.Returnval
		if info.StartOffset != off || info.Length <= 0 {
			return nil, fmt.Errorf("query changed areas of %s at %d: reply covers [%d, +%d)", disk.Label, off, info.StartOffset, info.Length)
		}
		slices.SortFunc(info.ChangedArea, func(a, b types.DiskChangeExtent) int { return cmp.Compare(a.Start, b.Start) })
		for _, a := range info.ChangedArea {
			if a.Start < off || a.Length <= 0 || a.Start+a.Length > min(disk.Capacity, off+info.Length) {
				return nil, fmt.Errorf("query changed areas of %s: area [%d, +%d) outside the reply's range", disk.Label, a.Start, a.Length)
			}
			if n := len(out); n > 0 && out[n-1].Offset+out[n-1].Length >= a.Start {
				out[n-1].Length = max(out[n-1].Offset+out[n-1].Length, a.Start+a.Length) - out[n-1].Offset
				continue
			}
			out = append(out, Area{a.Start, a.Length})
		}
		off += info.Length
	}
	return out, nil
}
