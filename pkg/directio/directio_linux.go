package directio

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// Flag is the open(2) flag; 0 where the platform has none.
const Flag = unix.O_DIRECT

// Open opens name with flags plus O_DIRECT, or without it when the
// filesystem refuses it (EINVAL); direct says which.
func Open(name string, flags int, perm os.FileMode) (f *os.File, direct bool, err error) {
	f, err = os.OpenFile(name, flags|unix.O_DIRECT, perm)
	if !errors.Is(err, unix.EINVAL) {
		return f, err == nil, err
	}
	f, err = os.OpenFile(name, flags, perm)
	return f, false, err
}

// Refused reports an error of a direct transfer the filesystem would
// take through the cache instead.
func Refused(err error) bool { return errors.Is(err, unix.EINVAL) }

// Stop clears O_DIRECT on f, for the tail that is not whole blocks.
func Stop(f *os.File) error {
	fd := f.Fd()
	fl, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
	if err != nil {
		return err
	}
	_, err = unix.FcntlInt(fd, unix.F_SETFL, fl&^unix.O_DIRECT)
	return err
}
