//go:build !linux

package directio

import "os"

// Flag is the open(2) flag; 0 where the platform has none.
const Flag = 0

// Open opens name with flags: this platform has no O_DIRECT.
func Open(name string, flags int, perm os.FileMode) (*os.File, bool, error) {
	f, err := os.OpenFile(name, flags, perm)
	return f, false, err
}

// Refused is false: nothing is written direct here.
func Refused(error) bool { return false }

// Stop does nothing here.
func Stop(*os.File) error { return nil }
