package nbd

import (
	"context"
	"errors"
	"io"
	"os"
)

// FileExport serves an image file, writable: a throwaway copy a guest may
// write to (a boot check). Extents reports it all as data.
type FileExport struct {
	F *os.File
	N int64
}

// OpenFileExport opens path read-write for serving.
func OpenFileExport(path string) (*FileExport, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &FileExport{F: f, N: fi.Size()}, nil
}

func (e *FileExport) Size() int64 { return e.N }

func (e *FileExport) ReadAt(_ context.Context, p []byte, off int64) error {
	n, err := e.F.ReadAt(p, off)
	if errors.Is(err, io.EOF) && off+int64(n) >= e.N {
		clear(p[n:]) // a file cut short of its size reads as zeros
		return nil
	}
	return err
}

func (e *FileExport) Extents(off, length int64) []Extent {
	n := min(length, e.N-off, 1<<30)
	if n <= 0 {
		return nil
	}
	return []Extent{{Length: uint32(n)}}
}

func (e *FileExport) WriteAt(_ context.Context, p []byte, off int64) error {
	_, err := e.F.WriteAt(p, off)
	return err
}

func (e *FileExport) Zero(ctx context.Context, off, n int64) error {
	zero := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(zero)))
		if err := e.WriteAt(ctx, zero[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

func (e *FileExport) Flush(context.Context) error { return e.F.Sync() }

// Close closes the file.
func (e *FileExport) Close() error { return e.F.Close() }
