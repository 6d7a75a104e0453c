package libvirt

import (
	"fmt"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"
)

// RestoreTarget is what a restore target URL names: a new domain, the
// directory its disk images go to, their format, and whether it starts.
//
//	libvirt+unix:///system/NEW-NAME?dir=/var/lib/libvirt/images[&format=qcow2|raw][&start=true]
type RestoreTarget struct {
	Target
	Dir, Format string
	Start       bool
}

// ParseRestoreTarget reads a restore target URL. Without dir the images
// go beside the backed-up domain's first disk image.
func ParseRestoreTarget(raw string) (RestoreTarget, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return RestoreTarget{}, fmt.Errorf("restore target %q: %w", raw, err)
	}
	q := u.Query()
	rt := RestoreTarget{Dir: q.Get("dir"), Format: q.Get("format")}
	if rt.Format == "" {
		rt.Format = "qcow2"
	}
	if rt.Format != "qcow2" && rt.Format != "raw" {
		return RestoreTarget{}, fmt.Errorf("restore target %q: format %q (qcow2 or raw)", raw, rt.Format)
	}
	if rt.Dir != "" && (!path.IsAbs(rt.Dir) || path.Clean(rt.Dir) != rt.Dir) {
		return RestoreTarget{}, fmt.Errorf("restore target %q: dir must be an absolute clean path", raw)
	}
	if s := q.Get("start"); s != "" {
		if rt.Start, err = strconv.ParseBool(s); err != nil {
			return RestoreTarget{}, fmt.Errorf("restore target %q: start=%q (true or false)", raw, s)
		}
	}
	q.Del("dir")
	q.Del("format")
	q.Del("start")
	u.RawQuery = q.Encode()
	if rt.Target, err = ParseTarget(u.String()); err != nil {
		return RestoreTarget{}, err
	}
	if rt.Backup != "" {
		return RestoreTarget{}, fmt.Errorf("restore target %q: a restore names a new domain, not a disk of a backup", raw)
	}
	if rt.Conn.Scheme != "qemu+unix" {
		return RestoreTarget{}, fmt.Errorf("restore target %q: restores write disk images on this host: run the restore on the libvirt host (libvirt+unix://)", raw)
	}
	return rt, nil
}

// Exists reports whether the daemon has a domain called name.
func (c *Conn) Exists(name string) (bool, error) {
	_, err := c.l.DomainLookupByName(name)
	if isCode(err, golibvirt.ErrNoDomain) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up domain %s: %w", name, err)
	}
	return true, nil
}

// Define defines a domain from its XML and, when start, starts it.
func (c *Conn) Define(xml string, start bool) error {
	dom, err := c.l.DomainDefineXML(xml)
	if err != nil {
		return fmt.Errorf("define domain: %w", err)
	}
	if start {
		if err := c.l.DomainCreate(dom); err != nil {
			return fmt.Errorf("start domain %s: %w", dom.Name, err)
		}
	}
	return nil
}

// State is the state of the domain called name: running, paused,
// shutoff, crashed, … ("" when there is none).
func (c *Conn) State(name string) (string, error) {
	dom, err := c.l.DomainLookupByName(name)
	if isCode(err, golibvirt.ErrNoDomain) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	state, _, err := c.l.DomainGetState(dom, 0)
	if err != nil {
		return "", fmt.Errorf("state of domain %s: %w", name, err)
	}
	names := map[int32]string{0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "shutoff", 6: "crashed", 7: "pmsuspended"}
	return names[state], nil
}

// Undefine stops (if running) and undefines the domain called name.
func (c *Conn) Undefine(name string) error {
	dom, err := c.l.DomainLookupByName(name)
	if isCode(err, golibvirt.ErrNoDomain) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := c.l.DomainDestroy(dom); err != nil && !isCode(err, golibvirt.ErrOperationInvalid) {
		return fmt.Errorf("stop domain %s: %w", name, err)
	}
	if err := c.l.DomainUndefineFlags(dom, golibvirt.DomainUndefineCheckpointsMetadata|golibvirt.DomainUndefineNvram); err != nil && !isCode(err, golibvirt.ErrNoDomain) {
		return fmt.Errorf("undefine domain %s: %w", name, err)
	}
	return nil
}

// DiskSource is where a new domain's disk reads from: an image file, or
// an NBD export (instant recovery: a served backup).
type DiskSource struct {
	File   string // image path
	Format string // qcow2, raw
	// NBD export: on a unix socket, or a TCP host and port.
	NBDExport, NBDSocket, NBDHost string
	NBDPort                       int
}

// NewDomainXML turns the XML a domain was backed up with into a new
// domain's: another name, no UUID (libvirt makes one), no MAC addresses
// (libvirt makes new ones: the original may still run), and each
// backed-up disk (by target name) reading from its new source. Without
// nics the network interfaces go too (a throwaway check domain must not
// meet the original's network with its addresses).
func NewDomainXML(recorded, name string, disks map[string]DiskSource, nics bool) (string, error) {
	var d libvirtxml.Domain
	if err := d.Unmarshal(recorded); err != nil {
		return "", fmt.Errorf("recorded domain XML: %w", err)
	}
	d.Name, d.UUID, d.ID = name, "", nil
	if d.Devices == nil {
		return "", fmt.Errorf("recorded domain XML has no devices")
	}
	found := 0
	for i := range d.Devices.Disks {
		disk := &d.Devices.Disks[i]
		if disk.Target == nil {
			continue
		}
		src, ok := disks[disk.Target.Dev]
		if !ok {
			continue
		}
		found++
		disk.BackingStore, disk.Mirror = nil, nil
		if disk.Driver == nil {
			disk.Driver = &libvirtxml.DomainDiskDriver{Name: "qemu"}
		}
		switch {
		case src.File != "":
			disk.Source = &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: src.File}}
			disk.Driver.Type = src.Format
		case src.NBDSocket != "":
			disk.Source = &libvirtxml.DomainDiskSource{Network: &libvirtxml.DomainDiskSourceNetwork{Protocol: "nbd", Name: src.NBDExport,
				Hosts: []libvirtxml.DomainDiskSourceHost{{Transport: "unix", Socket: src.NBDSocket}}}}
			disk.Driver.Type = "raw"
		default:
			disk.Source = &libvirtxml.DomainDiskSource{Network: &libvirtxml.DomainDiskSourceNetwork{Protocol: "nbd", Name: src.NBDExport,
				Hosts: []libvirtxml.DomainDiskSourceHost{{Name: src.NBDHost, Port: strconv.Itoa(src.NBDPort)}}}}
			disk.Driver.Type = "raw"
		}
	}
	if found != len(disks) {
		return "", fmt.Errorf("recorded domain XML has %d of the %d backed-up disks", found, len(disks))
	}
	for i := range d.Devices.Interfaces {
		d.Devices.Interfaces[i].MAC = nil
	}
	if !nics {
		d.Devices.Interfaces = nil
	}
	return d.Marshal()
}

// ImageDir is where a restore puts images when the target names no dir:
// beside the recorded domain's first file-backed disk.
func ImageDir(recorded string) (string, error) {
	var d libvirtxml.Domain
	if err := d.Unmarshal(recorded); err != nil {
		return "", fmt.Errorf("recorded domain XML: %w", err)
	}
	if d.Devices != nil {
		for _, disk := range d.Devices.Disks {
			if disk.Source != nil && disk.Source.File != nil && disk.Source.File.File != "" && (disk.Device == "" || disk.Device == "disk") {
				return filepath.Dir(disk.Source.File.File), nil
			}
		}
	}
	return "", fmt.Errorf("the domain had no file-backed disk: say where the images go (?dir=/var/lib/libvirt/images)")
}

// ImagePath is a restored disk's image: DIR/NAME-DISK.FORMAT.
func (rt RestoreTarget) ImagePath(dir, disk string) string {
	ext := rt.Format
	if ext == "raw" {
		ext = "img"
	}
	return filepath.Join(dir, rt.Domain+"-"+disk+"."+ext)
}

// CheckImages refuses images that exist already.
func CheckImages(paths ...string) error {
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s exists already: restore under another name or into another dir", p)
		}
	}
	return nil
}
