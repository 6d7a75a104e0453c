package repo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/strata-backup/strata/pkg/manifest"
	"github.com/strata-backup/strata/pkg/objstore"
)

// putBigManifest stores a spilled manifest: encoded into a temporary
// file (sealed as a stream into a second one in an encrypted repository)
// and sent from a read-only mapping of it, so the encoding — gigabytes
// for a disk holding tens of TiB of data — is never in the heap; the
// pages are the file's, which the kernel reclaims.
func (r *Repository) putBigManifest(ctx context.Context, key string, m *manifest.Manifest) error {
	f, err := tempFile("put")
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
	if keys, ok := r.seal.(*Keys); ok {
		sealed, err := tempFile("seal")
		if err != nil {
			return err
		}
		defer sealed.Close()
		w := bufio.NewWriterSize(sealed, 1<<20)
		if err := keys.sealStream(w, io.NewSectionReader(f, 0, n), n, []byte(key)); err != nil {
			return fmt.Errorf("seal: %w", err)
		}
		if err := w.Flush(); err != nil {
			return err
		}
		f.Close()
		f = sealed
		if n, err = f.Seek(0, io.SeekEnd); err != nil {
			return err
		}
	}
	b, err := syscall.Mmap(int(f.Fd()), 0, int(n), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map the encoded manifest: %w", err)
	}
	defer syscall.Munmap(b)
	return r.Store.Put(ctx, key, b)
}

// tempFile is an unlinked temporary file in manifest.SpillDir.
func tempFile(what string) (*os.File, error) {
	f, err := os.CreateTemp(manifest.SpillDir, "strata-manifest-"+what+"-*")
	if err != nil {
		return nil, fmt.Errorf("manifest %s file: %w", what, err)
	}
	os.Remove(f.Name())
	return f, nil
}

// getBigManifest reads a manifest bigger than WholeManifest, whose first
// bytes were read already, into a temporary file in pieces (opened from
// its stream seal into another in an encrypted repository) and decodes it
// from there (manifest.DecodeFrom: checked whole, decoded a block at a
// time, spilled past SpillAbove).
func (r *Repository) getBigManifest(ctx context.Context, key string, first []byte) (*manifest.Manifest, error) {
	f, err := tempFile("get")
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
	src, size := f, off
	if keys, ok := r.seal.(*Keys); ok {
		head := make([]byte, len(streamMagic))
		f.ReadAt(head, 0)
		if string(head) != streamMagic { // sealed whole (small once, or written before streams)
			b := make([]byte, off)
			if _, err := f.ReadAt(b, 0); err != nil {
				return nil, err
			}
			return r.decodeManifest(key, b)
		}
		plain, err := tempFile("open")
		if err != nil {
			return nil, err
		}
		defer plain.Close()
		w := bufio.NewWriterSize(plain, 1<<20)
		if err := keys.openStream(w, bufio.NewReaderSize(io.NewSectionReader(f, 0, off), 1<<20), off, []byte(key)); err != nil {
			return nil, fmt.Errorf("%w: %v", manifest.ErrCorrupt, err)
		}
		if err := w.Flush(); err != nil {
			return nil, err
		}
		f.Close()
		if size, err = plain.Seek(0, io.SeekEnd); err != nil {
			return nil, err
		}
		src = plain
	}
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
