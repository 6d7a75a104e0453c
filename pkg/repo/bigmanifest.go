package repo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/objstore"
)

// putBigManifest stores a spilled manifest: encoded into a temporary
// file (sealed by the sealer into a second one in an encrypted repository)
// and sent from a read-only mapping of it, so the encoding — gigabytes
// for a disk holding tens of TiB of data — is never in the heap; the
// pages are the file's, which the kernel reclaims.
func (r *Repository) putBigManifest(ctx context.Context, key string, m *manifest.Manifest) error {
	f, err := manifest.TempFile("put")
	if err != nil {
		return err
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	n, err := m.EncodeTo(w)
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		return err
	}
	if f, n, err = r.seal.sealFile(f, n, []byte(key)); err != nil {
		return fmt.Errorf("seal: %w", err)
	}
	defer f.Close()
	b, err := syscall.Mmap(int(f.Fd()), 0, int(n), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map the encoded manifest: %w", err)
	}
	defer syscall.Munmap(b)
	return r.Store.Put(ctx, key, b)
}

// getBigManifest reads a manifest bigger than WholeManifest, whose first
// bytes were read already, into a temporary file in pieces (opened by the
// sealer into another in an encrypted repository) and decodes it
// from there (manifest.DecodeFrom: checked whole, decoded a block at a
// time, spilled past SpillAbove).
func (r *Repository) getBigManifest(ctx context.Context, key string, first []byte) (*manifest.Manifest, error) {
	f, err := manifest.TempFile("get")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Write(first); err != nil {
		return nil, err
	}
	off := int64(len(first))
	first = nil
	const piece = 4 << 20
	for {
		b, err := r.Store.GetRange(ctx, key, off, piece)
		if errors.Is(err, objstore.ErrBadRange) {
			break // ended exactly at a piece's end
		}
		if err != nil {
			return nil, err
		}
		if _, err := f.WriteAt(b, off); err != nil {
			return nil, err
		}
		off += int64(len(b))
		if len(b) < piece {
			break
		}
	}
	src, size, err := r.seal.openFile(f, off, []byte(key))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", manifest.ErrCorrupt, err)
	}
	defer src.Close()
	m, err := manifest.DecodeFrom(src, size)
	if err != nil {
		return nil, err
	}
	if m.ChunkSize != r.Config.ChunkSize {
		m.Close()
		return nil, fmt.Errorf("%w: chunk size %d, repository's is %d", manifest.ErrCorrupt, m.ChunkSize, r.Config.ChunkSize)
	}
	return m, nil
}
