package vsphere

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"strings"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vmdk"
)

// FlatDisk reads one disk of a snapshot: the flat extent of its VMDK,
// through the datastore HTTP endpoint (/folder), one Range request per
// read. Safe for concurrent use.
type FlatDisk struct {
	c    *govmomi.Client
	url  *url.URL
	size int64
	Info DiskInfo
}

// OpenFlat resolves the disk's flat extent: it reads the VMDK descriptor
// and refuses what is not one flat extent (sparse, delta, multi-extent).
func OpenFlat(ctx context.Context, c *govmomi.Client, disk DiskInfo) (*FlatDisk, error) {
	u, err := flatURL(ctx, c, disk)
	if err != nil {
		return nil, err
	}
	return &FlatDisk{c: c, url: u, size: disk.Capacity, Info: disk}, nil
}

// flatURL is the datastore HTTP URL of the disk's flat extent.
func flatURL(ctx context.Context, c *govmomi.Client, disk DiskInfo) (*url.URL, error) {
	if disk.HasParent {
		return nil, fmt.Errorf("%s (%s) is a delta disk on top of an older snapshot: consolidate the VM's snapshots before backing it up", disk.Label, disk.FileName)
	}
	var p object.DatastorePath
	if !p.FromString(disk.FileName) {
		return nil, fmt.Errorf("%s: backing file %q is not a datastore path", disk.Label, disk.FileName)
	}
	ds := object.NewDatastore(c.Client, disk.Datastore)
	if err := ds.FindInventoryPath(ctx); err != nil {
		return nil, fmt.Errorf("%s: locate datastore %s: %w", disk.Label, p.Datastore, err)
	}
	var desc *vmdk.Descriptor
	err := c.Client.Client.Do(ctx, mustRequest(ds.NewURL(p.Path)), func(res *http.Response) error {
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("HTTP %s", res.Status)
		}
		var err error
		desc, err = vmdk.ParseDescriptor(io.LimitReader(res.Body, 1<<20))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: read descriptor %s: %w", disk.Label, disk.FileName, err)
	}
	if len(desc.Extent) != 1 || !flatExtent(desc.Extent[0].Type) {
		return nil, fmt.Errorf("%s: %s is a %q disk with %d extents; only single flat extents are supported", disk.Label, disk.FileName, desc.Type, len(desc.Extent))
	}
	extent := path.Join(path.Dir(p.Path), desc.Extent[0].Info)
	return ds.NewURL(extent), nil
}

func flatExtent(t string) bool {
	switch strings.ToUpper(t) {
	case "VMFS", "FLAT":
		return true
	}
	return false
}

func mustRequest(u *url.URL) *http.Request {
	req, err := http.NewRequest(http.MethodGet, u.String(), nil)
	if err != nil {
		panic(err) // a URL built by govmomi from parsed parts
	}
	return req
}

// Size is the disk's capacity.
func (d *FlatDisk) Size() int64 { return d.size }

// ReadAt reads len(p) bytes at off with one Range request. A server that
// ignores the range, or an extent shorter than the disk, is an error: the
// bytes would be wrong.
func (d *FlatDisk) ReadAt(p []byte, off int64) (int, error) {
	if off >= d.size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), d.size-off)
	req := mustRequest(d.url)
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+want-1))
	var n int
	err := d.c.Client.Client.Do(context.Background(), req, func(res *http.Response) error {
		switch res.StatusCode {
		case http.StatusPartialContent:
		case http.StatusRequestedRangeNotSatisfiable:
			return fmt.Errorf("flat extent of %s ends before %d (capacity %d)", d.Info.Label, off, d.size)
		default:
			return fmt.Errorf("HTTP %s", res.Status)
		}
		var err error
		n, err = io.ReadFull(res.Body, p[:want])
		if err != nil {
			return fmt.Errorf("flat extent of %s short at %d: %w", d.Info.Label, off+int64(n), err)
		}
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("read %s at %d: %w", d.Info.Label, off, err)
	}
	if want < int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

// Close holds nothing to release: the session belongs to Sessions.
func (d *FlatDisk) Close() error { return nil }
