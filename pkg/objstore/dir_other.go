//go:build !linux

package objstore

func linkNew(dir, p string, data []byte) (created, supported bool, err error) {
	return false, false, nil
}
