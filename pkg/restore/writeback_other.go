//go:build !linux

package restore

import "os"

// imageWriter: only Linux writes restored images with O_DIRECT and starts
// writeback early; elsewhere the final fsync writes the whole image.
type imageWriter struct{ f *os.File }

func newImageWriter(f *os.File, chunkSize int) *imageWriter { return &imageWriter{f: f} }

func (w *imageWriter) writeAt(b []byte, off int64) error {
	_, err := w.f.WriteAt(b, off)
	return err
}

func (w *imageWriter) close() {}
