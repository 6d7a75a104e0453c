package guestfs

import (
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
