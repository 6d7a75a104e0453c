package guestfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"

	ntfs "www.velocidex.com/golang/go-ntfs/parser"
)

// ntfsFS reads NTFS through www.velocidex.com/golang/go-ntfs: resident
// and non-resident data, sparse and compressed (LZNT1) streams. NTFS has
// no Unix owner or mode: files read back 0644, directories 0755; reparse
// points (Windows symlinks, junctions) are not followed.
type ntfsFS struct {
	ctx  *ntfs.NTFSContext
	root *ntfs.MFT_ENTRY
}

func openNTFS(s section) (f FS, err error) {
	defer recovered(&err)
	ctx, err := ntfs.GetNTFSContext(s, 0)
	if err != nil {
		return nil, err
	}
	root, err := ctx.GetMFT(5)
	if err != nil {
		return nil, fmt.Errorf("root directory: %w", err)
	}
	return &ntfsFS{ctx: ctx, root: root}, nil
}

func (n *ntfsFS) entry(name string) (e *ntfs.MFT_ENTRY, err error) {
	if name == "." {
		return n.root, nil
	}
	e, err = n.root.Open(n.ctx, name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, fs.ErrNotExist)
	}
	return e, nil
}

func ntfsEntry(fi *ntfs.FileInfo) Entry {
	e := Entry{Name: fi.Name, Size: fi.Size, ModTime: fi.Mtime.UTC(), Mode: 0o644}
	if fi.IsDir {
		e.Mode, e.Size = fs.ModeDir|0o755, 0
	}
	return e
}

func (n *ntfsFS) Lstat(name string) (e Entry, err error) {
	defer recovered(&err)
	if name == "." {
		return Entry{Name: "/", Mode: fs.ModeDir | 0o755}, nil
	}
	m, err := n.entry(name)
	if err != nil {
		return Entry{}, err
	}
	base := path.Base(name)
	infos := ntfs.Stat(n.ctx, m)
	for _, fi := range infos {
		if strings.EqualFold(fi.Name, base) {
			return ntfsEntry(fi), nil
		}
	}
	if len(infos) > 0 {
		return ntfsEntry(infos[0]), nil
	}
	return Entry{}, fmt.Errorf("%s: no file name attribute", name)
}

func (n *ntfsFS) ReadDir(name string) (out []Entry, err error) {
	defer recovered(&err)
	m, err := n.entry(name)
	if err != nil {
		return nil, err
	}
	for _, fi := range ntfs.ListDir(n.ctx, m) {
		if fi.IsSlack || fi.Name == "" || fi.Name == "." || fi.Name == ".." {
			continue
		}
		// The root's metadata files ($MFT, $Bitmap, …) are not the user's.
		if name == "." && strings.HasPrefix(fi.Name, "$") {
			continue
		}
		out = append(out, ntfsEntry(fi))
	}
	return out, nil
}

func (n *ntfsFS) Open(name string) (r io.ReadCloser, err error) {
	defer recovered(&err)
	e, err := n.Lstat(name)
	if err != nil {
		return nil, err
	}
	if !e.Mode.IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", name)
	}
	m, err := n.entry(name)
	if err != nil {
		return nil, err
	}
	data, err := ntfs.OpenStream(n.ctx, m, 128, ntfs.WILDCARD_STREAM_ID, ntfs.WILDCARD_STREAM_NAME)
	if errors.Is(err, fs.ErrNotExist) && e.Size == 0 {
		return io.NopCloser(strings.NewReader("")), nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: data: %w", name, err)
	}
	return safeReader{io.NopCloser(io.NewSectionReader(data, 0, e.Size))}, nil
}

// ntfsFree reads $Bitmap (one bit per cluster) into free byte ranges of
// the volume. Only for a volume whose log says it was shut down clean:
// otherwise $Bitmap may lag behind clusters the log allocated.
func ntfsFree(s section) (free []Extent, err error) {
	defer recovered(&err)
	f, err := openNTFS(s)
	if err != nil {
		return nil, err
	}
	n := f.(*ntfsFS)
	if err := n.logClean(); err != nil {
		return nil, err
	}
	m, err := n.entry("$Bitmap")
	if err != nil {
		return nil, err
	}
	bm, err := ntfs.OpenStream(n.ctx, m, 128, ntfs.WILDCARD_STREAM_ID, ntfs.WILDCARD_STREAM_NAME)
	if err != nil {
		return nil, fmt.Errorf("$Bitmap: %w", err)
	}
	cluster := n.ctx.ClusterSize
	clusters := n.ctx.Boot.VolumeSize() * int64(n.ctx.Boot.Sector_size()) / cluster
	if cluster <= 0 || clusters <= 0 || clusters*cluster > s.len+cluster {
		return nil, fmt.Errorf("%d clusters of %d bytes on a %d-byte volume", clusters, cluster, s.len)
	}
	buf := make([]byte, 64<<10)
	for c := int64(0); c < clusters; {
		k, rerr := bm.ReadAt(buf, c/8)
		if k == 0 {
			if rerr == nil {
				rerr = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("$Bitmap at cluster %d: %w", c, rerr)
		}
		for i := 0; i < k*8 && c < clusters; i, c = i+1, c+1 {
			if buf[i/8]&(1<<(i%8)) != 0 {
				continue
			}
			free = addExtent(free, Extent{c * cluster, cluster})
		}
	}
	// The last cluster may run past the volume's end.
	if l := len(free); l > 0 && free[l-1].Offset+free[l-1].Length > s.len {
		free[l-1].Length = s.len - free[l-1].Offset
	}
	return free, nil
}

// logClean checks $LogFile's restart area: a volume not shut down clean
// (or one whose log cannot be read) is refused.
func (n *ntfsFS) logClean() error {
	m, err := n.entry("$LogFile")
	if err != nil {
		return err
	}
	log, err := ntfs.OpenStream(n.ctx, m, 128, ntfs.WILDCARD_STREAM_ID, ntfs.WILDCARD_STREAM_NAME)
	if err != nil {
		return fmt.Errorf("$LogFile: %w", err)
	}
	page := make([]byte, 512)
	if _, err := log.ReadAt(page, 0); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("$LogFile: %w", err)
	}
	if bytes.Count(page, []byte{0xff}) == len(page) {
		return nil // an empty log (a fresh mkntfs, or emptied on a clean unmount): nothing to replay
	}
	if string(page[:4]) != "RSTR" {
		return errors.New("$LogFile has no restart page (chkdsk needed?)")
	}
	ra := int(binary.LittleEndian.Uint16(page[24:]))
	if ra+16 > len(page) {
		return errors.New("$LogFile restart area out of range")
	}
	inUse, flags := binary.LittleEndian.Uint16(page[ra+12:]), binary.LittleEndian.Uint16(page[ra+14:])
	if flags&0x2 == 0 && inUse != 0xffff {
		return errors.New("its log says it was not shut down clean (blocks it allocated may still be marked free)")
	}
	return nil
}
