package vsphere

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/strata-backup/strata/contracts"
)

// Image is a raw disk image to put into a new VM.
type Image struct {
	Path string
	Size int64
}

// Hardware reads the VM's virtual hardware: what a restore recreates.
func (v *VM) Hardware(ctx context.Context) (*contracts.VMConfig, error) {
	var o mo.VirtualMachine
	if err := v.vm.Properties(ctx, v.vm.Reference(), []string{"config.guestId", "config.hardware.numCPU", "config.hardware.memoryMB", "config.firmware"}, &o); err != nil {
		return nil, fmt.Errorf("hardware of %s: %w", v.vm.InventoryPath, err)
	}
	if o.Config == nil {
		return nil, fmt.Errorf("hardware of %s: no configuration", v.vm.InventoryPath)
	}
	return &contracts.VMConfig{GuestID: o.Config.GuestId, CPUs: o.Config.Hardware.NumCPU, MemoryMB: int64(o.Config.Hardware.MemoryMB), Firmware: o.Config.Firmware}, nil
}

// Placement is where a restored VM goes.
type Placement struct {
	Folder    *object.Folder
	Pool      *object.ResourcePool
	Host      *object.HostSystem // nil: the pool's choice
	Datastore *object.Datastore
	GuestID   string
}

// PlacementBeside places a VM beside like: its folder, resource pool,
// host, guest OS, and the datastore of its first disk.
func PlacementBeside(ctx context.Context, c *govmomi.Client, like *VM) (Placement, error) {
	var o mo.VirtualMachine
	if err := like.vm.Properties(ctx, like.vm.Reference(), []string{"parent", "resourcePool", "runtime.host", "config.guestId", "config.hardware.device"}, &o); err != nil {
		return Placement{}, fmt.Errorf("placement of %s: %w", like.vm.InventoryPath, err)
	}
	disks, err := disksOf(o.Config.Hardware.Device)
	if err != nil {
		return Placement{}, fmt.Errorf("placement of %s: %w", like.vm.InventoryPath, err)
	}
	if o.Parent == nil || o.ResourcePool == nil {
		return Placement{}, fmt.Errorf("placement of %s: no folder or resource pool (a template?)", like.vm.InventoryPath)
	}
	p := Placement{Folder: object.NewFolder(c.Client, *o.Parent), Pool: object.NewResourcePool(c.Client, *o.ResourcePool),
		Datastore: object.NewDatastore(c.Client, disks[0].Datastore), GuestID: o.Config.GuestId}
	if o.Runtime.Host != nil {
		p.Host = object.NewHostSystem(c.Client, *o.Runtime.Host)
	}
	return p, nil
}

// DefaultPlacement is for a VM that no longer exists (disaster recovery):
// the VM folder of the datacenter (the one named, or the only one), its
// first resource pool by inventory path, and the datastore with the most
// free space, which must hold need bytes.
func DefaultPlacement(ctx context.Context, c *govmomi.Client, datacenter string, need int64) (Placement, error) {
	f := find.NewFinder(c.Client, true)
	var dc *object.Datacenter
	var err error
	if datacenter != "" {
		dc, err = f.Datacenter(ctx, datacenter)
	} else {
		dc, err = f.DefaultDatacenter(ctx)
	}
	if err != nil {
		return Placement{}, fmt.Errorf("datacenter for the restored VM: %w", err)
	}
	f.SetDatacenter(dc)
	folders, err := dc.Folders(ctx)
	if err != nil {
		return Placement{}, fmt.Errorf("folders of %s: %w", dc.InventoryPath, err)
	}
	pools, err := f.ResourcePoolList(ctx, "*")
	if err != nil || len(pools) == 0 {
		return Placement{}, fmt.Errorf("resource pools of %s: %v", dc.InventoryPath, err)
	}
	slices.SortFunc(pools, func(a, b *object.ResourcePool) int { return strings.Compare(a.InventoryPath, b.InventoryPath) })
	stores, err := f.DatastoreList(ctx, "*")
	if err != nil {
		return Placement{}, fmt.Errorf("datastores of %s: %w", dc.InventoryPath, err)
	}
	var best *object.Datastore
	var bestFree int64
	for _, ds := range stores {
		var o mo.Datastore
		if err := ds.Properties(ctx, ds.Reference(), []string{"summary"}, &o); err != nil || !o.Summary.Accessible {
			continue
		}
		if o.Summary.FreeSpace > bestFree {
			best, bestFree = ds, o.Summary.FreeSpace
		}
	}
	if best == nil || bestFree < need {
		return Placement{}, fmt.Errorf("no datastore in %s has %d bytes free for the restored disks (most free: %d)", dc.InventoryPath, need, bestFree)
	}
	return Placement{Folder: folders.VmFolder, Pool: pools[0], Datastore: best, GuestID: "otherGuest64"}, nil
}

// Choice names where a restored VM must go, overriding the placement:
// inventory paths (or names, in a single-datacenter inventory); empty
// fields keep the placement's.
type Choice struct {
	Datastore, Pool, Folder string
}

// Apply overrides p with the choices, refusing names that do not resolve.
func (ch Choice) Apply(ctx context.Context, c *govmomi.Client, p Placement) (Placement, error) {
	if ch == (Choice{}) {
		return p, nil
	}
	f := find.NewFinder(c.Client, true)
	if dc, err := f.DefaultDatacenter(ctx); err == nil {
		f.SetDatacenter(dc) // relative names need one; absolute paths do not
	}
	if ch.Datastore != "" {
		ds, err := f.Datastore(ctx, ch.Datastore)
		if err != nil {
			return p, fmt.Errorf("datastore %s: %w", ch.Datastore, err)
		}
		p.Datastore = ds
	}
	if ch.Pool != "" {
		pool, err := f.ResourcePool(ctx, ch.Pool)
		if err != nil {
			return p, fmt.Errorf("resource pool %s: %w", ch.Pool, err)
		}
		p.Pool, p.Host = pool, nil
	}
	if ch.Folder != "" {
		folder, err := f.Folder(ctx, ch.Folder)
		if err != nil {
			return p, fmt.Errorf("folder %s: %w", ch.Folder, err)
		}
		p.Folder = folder
	}
	return p, nil
}

// CreateFromImages creates a powered-off VM called name at p with the
// backed-up VM's hardware (hw; nil: the placement's guest OS and the
// server's defaults) and one thin disk per image, and uploads each image
// into its disk's flat extent through the datastore HTTP endpoint. A VM of
// that name already existing is refused: a restore never overwrites a VM.
func CreateFromImages(ctx context.Context, c *govmomi.Client, p Placement, hw *contracts.VMConfig, name string, images []Image) (*VM, error) {
	if _, err := FindVM(ctx, c, name); err == nil {
		return nil, fmt.Errorf("a VM named %s exists already; restore under another name", name)
	}
	ds := p.Datastore
	if err := ds.FindInventoryPath(ctx); err != nil {
		return nil, fmt.Errorf("datastore for %s: %w", name, err)
	}
	var devices object.VirtualDeviceList
	scsi, err := devices.CreateSCSIController("pvscsi")
	if err != nil {
		return nil, err
	}
	devices = append(devices, scsi)
	for i, img := range images {
		disk := devices.CreateDisk(scsi.(types.BaseVirtualController), ds.Reference(), ds.Path(fmt.Sprintf("%s/%s-disk%d.vmdk", name, name, i)))
		disk.CapacityInBytes = img.Size
		disk.CapacityInKB = (img.Size + 1023) / 1024
		unit := int32(i)
		if unit >= 7 {
			unit++ // unit 7 is the controller's own
		}
		disk.UnitNumber = &unit
		disk.Key = int32(-100 - i)
		devices = append(devices, disk)
	}
	changes, err := devices.ConfigSpec(types.VirtualDeviceConfigSpecOperationAdd)
	if err != nil {
		return nil, err
	}
	for _, ch := range changes {
		if _, ok := ch.GetVirtualDeviceConfigSpec().Device.(*types.VirtualDisk); ok {
			ch.GetVirtualDeviceConfigSpec().FileOperation = types.VirtualDeviceConfigSpecFileOperationCreate
		}
	}
	spec := types.VirtualMachineConfigSpec{Name: name, GuestId: p.GuestID,
		Files: &types.VirtualMachineFileInfo{VmPathName: ds.Path(name)}, DeviceChange: changes}
	if hw != nil {
		spec.GuestId = cmp.Or(hw.GuestID, spec.GuestId)
		spec.NumCPUs, spec.MemoryMB, spec.Firmware = hw.CPUs, hw.MemoryMB, hw.Firmware
	}
	task, err := p.Folder.CreateVM(ctx, spec, p.Pool, p.Host)
	if err != nil {
		return nil, fmt.Errorf("create VM %s: %w", name, err)
	}
	res, err := task.WaitForResult(ctx)
	if err != nil {
		return nil, fmt.Errorf("create VM %s: %w", name, err)
	}
	vm := &VM{c: c, vm: object.NewVirtualMachine(c.Client, res.Result.(types.ManagedObjectReference))}
	vm.vm.InventoryPath = name
	created, err := vm.disks(ctx)
	if err != nil || len(created) != len(images) {
		return vm, fmt.Errorf("VM %s was created with %d disks for %d images: %v", name, len(created), len(images), err)
	}
	for i, img := range images {
		u, err := flatURL(ctx, c, created[i])
		if err != nil {
			return vm, err
		}
		f, err := os.Open(img.Path)
		if err != nil {
			return vm, err
		}
		param := soap.DefaultUpload
		param.ContentLength = img.Size
		err = c.Client.Client.Upload(ctx, f, u, &param)
		f.Close()
		if err != nil {
			return vm, fmt.Errorf("upload disk %d of %s: %w", i, name, err)
		}
	}
	return vm, nil
}

// PowerCycle powers the VM on, waits until vSphere reports it running, and
// powers it off again: the restore test's boot check.
func (v *VM) PowerCycle(ctx context.Context) error {
	task, err := v.vm.PowerOn(ctx)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err == nil {
		err = v.vm.WaitForPowerState(ctx, types.VirtualMachinePowerStatePoweredOn)
	}
	if err != nil {
		return fmt.Errorf("power on %s: %w", v.vm.InventoryPath, err)
	}
	task, err = v.vm.PowerOff(ctx)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		return fmt.Errorf("power off %s: %w", v.vm.InventoryPath, err)
	}
	return nil
}

// Destroy deletes the VM and its files (powered off first if needed).
func (v *VM) Destroy(ctx context.Context) error {
	if state, err := v.vm.PowerState(ctx); err == nil && state == types.VirtualMachinePowerStatePoweredOn {
		if task, err := v.vm.PowerOff(ctx); err == nil {
			task.Wait(ctx)
		}
	}
	task, err := v.vm.Destroy(ctx)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		return fmt.Errorf("destroy VM %s: %w", v.vm.InventoryPath, err)
	}
	return nil
}
