// Package vcsimcbt is TEST SCAFFOLDING: govmomi's vCenter simulator
// (vcsim) with the one thing Strata needs that vcsim v0.56.0 lacks —
// Changed Block Tracking — for the e2e tests and the compose demo
// (cmd/strata-vcsim). Product code never imports it: the services talk to
// the simulator only through its real SOAP and datastore HTTP endpoints.
package vcsimcbt

// TEST SCAFFOLDING: a vSphere for the e2e tests.
//
// govmomi's simulator (vcsim) v0.56.0 serves the real vSphere SOAP API and
// datastore HTTP endpoint, but has no QueryChangedDiskAreas and keeps no
// CBT change ids. This file adds exactly that and nothing else, through
// the simulator's method dispatch hook (Registry.Handler) and a wrapper
// around its HTTP handler that answers only QueryChangedDiskAreas (the
// dispatch hook cannot add a method to an existing managed object: the
// session's view of the object takes precedence over it):
//
//   - tests write into a VM's disk through cbtSim.write, which writes the
//     disk's flat file on the simulated datastore and records the extent
//     with a sequence number;
//   - when a snapshot is taken of a VM with changeTrackingEnabled, each
//     disk's backing changeId is stamped "<generation>/<sequence>", which
//     the simulator's own snapshot code then copies into the snapshot;
//   - QueryChangedDiskAreas(snapshot, disk, offset, changeId) answers the
//     extents written after changeId up to the snapshot's change id ("*":
//     everything ever written), in pages of cbtPage bytes; a change id of
//     another generation (after resetCBT) is refused, as vSphere refuses
//     change ids after a CBT reset.
//
// Product code never sees this file: the services are separate processes
// using the real govmomi client against the simulator's endpoints.

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// cbtPage is how much of a disk one QueryChangedDiskAreas reply covers:
// small enough that the tests' disks need several pages.
const cbtPage = 32 << 20

// TB is what the simulator needs from its caller: testing.TB, or a
// process that exits on failure (cmd/strata-vcsim).
type TB interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// Sim is a running simulator with the CBT extension.
type Sim struct {
	t      TB
	Host   string // host:port of the simulator
	client *govmomi.Client

	ctx       *simulator.Context
	dsDir     string // the datastore's directory on this machine
	mu        sync.Mutex
	disks     map[diskRef]*trackedDisk
	poweredOn []string // names of the VMs powered on, in order
	noTools   map[string]bool
}

type diskRef struct {
	vm  string // VM managed object id
	key int32  // device key
}

type trackedDisk struct {
	path     string // flat file on the simulated datastore
	capacity int64
	gen      int
	seq      int
	writes   []trackedWrite
}

type trackedWrite struct {
	gen, seq    int
	off, length int64
}

// Start runs a vCenter simulator (one datacenter, one host, no VMs) with
// the CBT extension on listen ("127.0.0.1:0": any port), with a
// self-signed certificate; t.Cleanup stops it.
func Start(t TB, listen string) *Sim {
	t.Helper()
	m := simulator.VPX()
	m.Cluster, m.Host, m.Machine = 0, 1, 0
	if err := m.Create(); err != nil {
		t.Fatal(err)
	}
	m.Service.TLS = new(tls.Config)
	m.Service.Listen = &url.URL{Host: listen}
	sim := &Sim{t: t, disks: map[diskRef]*trackedDisk{}, noTools: map[string]bool{}}
	m.Service.Context.Map.Handler = sim.dispatch
	srv := m.Service.NewServer()
	sim.ctx = m.Service.Context
	// No request has reached the server yet: swapping its handler is safe.
	srv.Config.Handler = sim.intercept(srv.Config.Handler)
	t.Cleanup(func() { srv.Close(); m.Remove() })
	sim.Host = srv.URL.Host
	c, err := govmomi.NewClient(context.Background(), srv.URL, true)
	if err != nil {
		t.Fatal(err)
	}
	sim.client = c
	return sim
}

// Env is what a Strata service needs to reach the simulator.
func (s *Sim) Env() []string {
	return []string{"STRATA_VSPHERE_USER=user", "STRATA_VSPHERE_PASSWORD=pass", "STRATA_VSPHERE_INSECURE=true",
		"STRATA_VSPHERE_URL=https://" + s.Host + "/sdk"}
}

// CreateVM makes a VM with one thin disk per size on the host's local
// datastore; each disk's flat file is sized to its capacity (sparse).
func (s *Sim) CreateVM(name string, sizes ...int64) *object.VirtualMachine {
	s.t.Helper()
	ctx := context.Background()
	f := find.NewFinder(s.client.Client, true)
	dc, err := f.DefaultDatacenter(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	f.SetDatacenter(dc)
	folders, err := dc.Folders(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	pool, err := f.DefaultResourcePool(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	ds, err := f.DefaultDatastore(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	var devices object.VirtualDeviceList
	scsi, err := devices.CreateSCSIController("pvscsi")
	if err != nil {
		s.t.Fatal(err)
	}
	devices = append(devices, scsi)
	ctrl := scsi.(types.BaseVirtualController)
	for i, size := range sizes {
		disk := devices.CreateDisk(ctrl, ds.Reference(), ds.Path(fmt.Sprintf("%s/%s-disk%d.vmdk", name, name, i)))
		disk.CapacityInKB = size / 1024
		disk.CapacityInBytes = size
		unit := int32(i)
		disk.UnitNumber = &unit
		disk.Key = int32(-100 - i)
		devices = append(devices, disk)
	}
	changes, err := devices.ConfigSpec(types.VirtualDeviceConfigSpecOperationAdd)
	if err != nil {
		s.t.Fatal(err)
	}
	for _, c := range changes {
		if _, ok := c.GetVirtualDeviceConfigSpec().Device.(*types.VirtualDisk); ok {
			c.GetVirtualDeviceConfigSpec().FileOperation = types.VirtualDeviceConfigSpecFileOperationCreate
		}
	}
	spec := types.VirtualMachineConfigSpec{Name: name, GuestId: string(types.VirtualMachineGuestOsIdentifierUbuntu64Guest),
		NumCPUs: VMCPUs, MemoryMB: VMMemoryMB, Firmware: string(types.GuestOsDescriptorFirmwareTypeEfi),
		Files: &types.VirtualMachineFileInfo{VmPathName: ds.Path(name)}, DeviceChange: changes}
	task, err := folders.VmFolder.CreateVM(ctx, spec, pool, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	res, err := task.WaitForResult(ctx)
	if err != nil {
		s.t.Fatalf("create VM %s: %v", name, err)
	}
	vm := object.NewVirtualMachine(s.client.Client, res.Result.(types.ManagedObjectReference))
	var dso mo.Datastore
	if err := ds.Properties(ctx, ds.Reference(), []string{"summary"}, &dso); err != nil {
		s.t.Fatal(err)
	}
	dsDir := strings.TrimPrefix(dso.Summary.Url, "file://")
	s.dsDir = dsDir
	list, err := vm.Device(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, d := range list.SelectByType((*types.VirtualDisk)(nil)) {
		disk := d.(*types.VirtualDisk)
		var p object.DatastorePath
		p.FromString(disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo).FileName)
		flat := filepath.Join(dsDir, strings.TrimSuffix(p.Path, ".vmdk")+"-flat.vmdk")
		if err := os.Truncate(flat, sizes[i]); err != nil {
			s.t.Fatal(err)
		}
		s.disks[diskRef{vm.Reference().Value, disk.Key}] = &trackedDisk{path: flat, capacity: sizes[i]}
	}
	return vm
}

// VMExists reports whether a VM of that name is in the inventory.
func (s *Sim) VMExists(name string) bool {
	_, err := s.findVM(name)
	return err == nil
}

// findVM finds a VM by name in the simulator's datacenter.
func (s *Sim) findVM(name string) (*object.VirtualMachine, error) {
	f := find.NewFinder(s.client.Client, true)
	dc, err := f.DefaultDatacenter(context.Background())
	if err != nil {
		s.t.Fatal(err)
	}
	f.SetDatacenter(dc)
	return f.VirtualMachine(context.Background(), name)
}

// The virtual hardware CreateVM gives every VM (guest ubuntu64Guest, EFI).
const (
	VMCPUs     = 2
	VMMemoryMB = 3072
)

// Hardware reads a VM's guest OS id, CPUs, memory and firmware.
func (s *Sim) Hardware(name string) (guest string, cpus int32, memoryMB int32, firmware string) {
	s.t.Helper()
	ctx := context.Background()
	vm, err := s.findVM(name)
	if err != nil {
		s.t.Fatal(err)
	}
	var o mo.VirtualMachine
	if err := vm.Properties(ctx, vm.Reference(), []string{"config"}, &o); err != nil {
		s.t.Fatal(err)
	}
	return o.Config.GuestId, o.Config.Hardware.NumCPU, o.Config.Hardware.MemoryMB, o.Config.Firmware
}

// DestroyVM removes a VM and its files, as a lost VM would be.
func (s *Sim) DestroyVM(name string) {
	s.t.Helper()
	ctx := context.Background()
	vm, err := s.findVM(name)
	if err != nil {
		s.t.Fatal(err)
	}
	task, err := vm.Destroy(ctx)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		s.t.Fatalf("destroy VM %s: %v", name, err)
	}
}

// FlatFile is the path on this machine of disk i of a VM created by the
// simulator's file naming (<vm>/<vm>-disk<i>-flat.vmdk).
func (s *Sim) FlatFile(vm string, i int) string {
	return filepath.Join(s.dsDir, vm, fmt.Sprintf("%s-disk%d-flat.vmdk", vm, i))
}

// DiskPath is the flat file of disk i of the VM on this machine.
func (s *Sim) DiskPath(vm *object.VirtualMachine, i int) string { return s.disk(vm, i).path }

// disk returns the i-th tracked disk of the VM, in device key order.
func (s *Sim) disk(vm *object.VirtualMachine, i int) *trackedDisk {
	s.mu.Lock()
	defer s.mu.Unlock()
	var keys []int32
	for r := range s.disks {
		if r.vm == vm.Reference().Value {
			keys = append(keys, r.key)
		}
	}
	slices.Sort(keys)
	return s.disks[diskRef{vm.Reference().Value, keys[i]}]
}

// PoweredOn lists the VMs powered on so far, in order.
func (s *Sim) PoweredOn() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.poweredOn...)
}

// DiskCount is the number of disks of the VM.
func (s *Sim) DiskCount(vm *object.VirtualMachine) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for r := range s.disks {
		if r.vm == vm.Reference().Value {
			n++
		}
	}
	return n
}

// Write writes data into disk i of the VM, as the guest would, and records
// the change.
func (s *Sim) Write(vm *object.VirtualMachine, i int, off int64, data []byte) {
	s.t.Helper()
	d := s.disk(vm, i)
	f, err := os.OpenFile(d.path, os.O_WRONLY, 0)
	if err != nil {
		s.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		s.t.Fatal(err)
	}
	s.mu.Lock()
	d.seq++
	d.writes = append(d.writes, trackedWrite{gen: d.gen, seq: d.seq, off: off, length: int64(len(data))})
	s.mu.Unlock()
}

// ResetCBT starts a new change-id generation for every disk of the VM:
// change ids handed out before are refused from now on.
func (s *Sim) ResetCBT(vm *object.VirtualMachine) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for r, d := range s.disks {
		if r.vm == vm.Reference().Value {
			d.gen++
		}
	}
}

// Snapshots lists the VM's snapshot names.
func (s *Sim) Snapshots(vm *object.VirtualMachine) []string {
	var o mo.VirtualMachine
	if err := vm.Properties(context.Background(), vm.Reference(), []string{"snapshot"}, &o); err != nil {
		s.t.Fatal(err)
	}
	var names []string
	var walk func([]types.VirtualMachineSnapshotTree)
	walk = func(l []types.VirtualMachineSnapshotTree) {
		for _, n := range l {
			names = append(names, n.Name)
			walk(n.ChildSnapshotList)
		}
	}
	if o.Snapshot != nil {
		walk(o.Snapshot.RootSnapshotList)
	}
	return names
}

// NoTools makes a quiesced snapshot of the VM fail as vSphere fails it
// when VMware Tools is not running in the guest (ToolsUnavailable);
// vcsim itself accepts the quiesce flag of any VM.
func (s *Sim) NoTools(name string, none bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.noTools[name] = none
}

// dispatch is the simulator's method hook: stamp change ids before a
// snapshot copies the VM's config, and answer QueryChangedDiskAreas.
func (s *Sim) dispatch(ctx *simulator.Context, m *simulator.Method) (mo.Reference, types.BaseMethodFault) {
	switch m.Name {
	case "PowerOnVM_Task":
		if vm, ok := ctx.Map.Get(m.This).(*simulator.VirtualMachine); ok {
			s.mu.Lock()
			s.poweredOn = append(s.poweredOn, vm.Name)
			s.mu.Unlock()
		}
	case "CreateSnapshot_Task", "CreateSnapshotEx_Task":
		vm, ok := ctx.Map.Get(m.This).(*simulator.VirtualMachine)
		if !ok {
			return nil, nil
		}
		if req, ok := m.Body.(*types.CreateSnapshot_Task); ok && req.Quiesce {
			s.mu.Lock()
			noTools := s.noTools[vm.Name]
			s.mu.Unlock()
			if noTools {
				return nil, &types.ToolsUnavailable{}
			}
		}
		ctx.WithLock(vm, func() {
			cbt := vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled
			for _, dev := range vm.Config.Hardware.Device {
				disk, ok := dev.(*types.VirtualDisk)
				if !ok {
					continue
				}
				b := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
				b.ChangeId = ""
				s.mu.Lock()
				if d := s.disks[diskRef{m.This.Value, disk.Key}]; d != nil && cbt {
					b.ChangeId = fmt.Sprintf("52 strata-test cbt/%d/%d", d.gen, d.seq)
				}
				s.mu.Unlock()
			}
		})
	}
	return nil, nil
}

// intercept answers QueryChangedDiskAreas SOAP calls and passes every
// other request to the simulator.
func (s *Sim) intercept(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/sdk" {
			next.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		if !bytes.Contains(body, []byte("QueryChangedDiskAreas")) {
			next.ServeHTTP(w, r)
			return
		}
		method, err := simulator.UnmarshalBody(types.TypeFunc(), body)
		req, ok := method.Body.(*types.QueryChangedDiskAreas)
		if err != nil || !ok {
			next.ServeHTTP(w, r)
			return
		}
		info, fault := s.changedAreas(req)
		w.Header().Set("Content-Type", "text/xml; charset=utf-8")
		var out bytes.Buffer
		out.WriteString(xml.Header + `<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>`)
		if fault != "" {
			w.WriteHeader(http.StatusInternalServerError)
			out.WriteString(`<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>`)
			xml.EscapeText(&out, []byte(fault))
			out.WriteString(`</faultstring><detail><InvalidArgumentFault xmlns="urn:vim25" xsi:type="InvalidArgument"><invalidProperty>changeId</invalidProperty></InvalidArgumentFault></detail></soapenv:Fault>`)
		} else {
			fmt.Fprintf(&out, `<QueryChangedDiskAreasResponse xmlns="urn:vim25"><returnval><startOffset>%d</startOffset><length>%d</length>`, info.StartOffset, info.Length)
			for _, a := range info.ChangedArea {
				fmt.Fprintf(&out, `<changedArea><start>%d</start><length>%d</length></changedArea>`, a.Start, a.Length)
			}
			out.WriteString(`</returnval></QueryChangedDiskAreasResponse>`)
		}
		out.WriteString(`</soapenv:Body></soapenv:Envelope>`)
		w.Write(out.Bytes())
	})
}

func parseChangeID(id string) (gen, seq int, ok bool) {
	rest, found := strings.CutPrefix(id, "52 strata-test cbt/")
	if !found {
		return 0, 0, false
	}
	g, q, found := strings.Cut(rest, "/")
	gen, err1 := strconv.Atoi(g)
	seq, err2 := strconv.Atoi(q)
	return gen, seq, found && err1 == nil && err2 == nil
}

// changedAreas is QueryChangedDiskAreas: the areas of the disk written
// after req.ChangeId up to the snapshot's change id, one page from
// req.StartOffset; or a fault message.
func (s *Sim) changedAreas(req *types.QueryChangedDiskAreas) (types.DiskChangeInfo, string) {
	var none types.DiskChangeInfo
	fail := func(msg string) (types.DiskChangeInfo, string) { return none, msg }
	if req.Snapshot == nil {
		return fail("snapshot required")
	}
	snap, ok := s.ctx.Map.Get(*req.Snapshot).(*simulator.VirtualMachineSnapshot)
	if !ok {
		return fail("snapshot not found")
	}
	var at string
	for _, dev := range snap.Config.Hardware.Device {
		if disk, ok := dev.(*types.VirtualDisk); ok && disk.Key == req.DeviceKey {
			at = disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo).ChangeId
		}
	}
	atGen, atSeq, ok := parseChangeID(at)
	if !ok {
		return fail("change tracking is not active on this disk in the snapshot")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.disks[diskRef{req.This.Value, req.DeviceKey}]
	if d == nil {
		return fail("unknown disk")
	}
	fromSeq := 0
	if req.ChangeId != "*" {
		gen, seq, ok := parseChangeID(req.ChangeId)
		if !ok || gen != atGen || seq > atSeq {
			return fail(fmt.Sprintf("change id %q is not valid for this disk", req.ChangeId))
		}
		fromSeq = seq
	}
	if req.StartOffset < 0 || req.StartOffset >= d.capacity {
		return fail("start offset outside the disk")
	}
	end := min(d.capacity, req.StartOffset+cbtPage)
	var areas []types.DiskChangeExtent
	for _, w := range d.writes {
		if w.seq <= fromSeq || w.seq > atSeq || (req.ChangeId != "*" && w.gen != atGen) {
			continue
		}
		lo, hi := max(w.off, req.StartOffset), min(w.off+w.length, end)
		if lo < hi {
			areas = append(areas, types.DiskChangeExtent{Start: lo, Length: hi - lo})
		}
	}
	// vSphere reports merged, ordered areas.
	slices.SortFunc(areas, func(a, b types.DiskChangeExtent) int { return int(a.Start - b.Start) })
	var merged []types.DiskChangeExtent
	for _, a := range areas {
		if n := len(merged); n > 0 && merged[n-1].Start+merged[n-1].Length >= a.Start {
			merged[n-1].Length = max(merged[n-1].Start+merged[n-1].Length, a.Start+a.Length) - merged[n-1].Start
			continue
		}
		merged = append(merged, a)
	}
	return types.DiskChangeInfo{StartOffset: req.StartOffset, Length: end - req.StartOffset, ChangedArea: merged}, ""
}
