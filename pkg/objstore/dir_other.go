//go:build !linux

package objstore

import "os"

func linkNew(dir, p string, data []byte) (created, supported bool, err error) {
	return false, false, nil
}

func openWrite(name string, flags int, data []byte) (*os.File, error) {
	return os.OpenFile(name, flags, 0o644)
}

func writeSync(f *os.File, data []byte) error {
	if _, err := f.Write(data); err != nil {
		return err
	}
	return f.Sync()
}
