package guestfs

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
)

// maxLinks bounds the symlinks one lookup follows, as Linux's ELOOP does.
const maxLinks = 40

// ErrLoop: a path leads through too many symlinks.
var ErrLoop = errors.New("too many levels of symbolic links")

// Resolve follows the symlinks of name inside fsys, as cat and open do on
// the running guest, and returns the path they lead to. The volume is the
// whole world: an absolute target starts at the volume's root, and ".."
// stops there, so no link leads out of it (a guest's /etc/os-release ->
// ../usr/lib/os-release resolves as it would in the guest; a link to
// /proc/... finds nothing). The result is a cleaned path inside fsys ("."
// for its root).
func Resolve(fsys FS, name string) (string, error) {
	todo := splitPath(name)
	var done []string
	links := 0
	for len(todo) > 0 {
		elem := todo[0]
		todo = todo[1:]
		switch elem {
		case "", ".":
			continue
		case "..":
			if len(done) > 0 {
				done = done[:len(done)-1]
			}
			continue
		}
		cur := path.Join(append(done, elem)...)
		e, err := fsys.Lstat(cur)
		if err != nil {
			return "", err
		}
		if e.Mode&fs.ModeSymlink == 0 {
			done = append(done, elem)
			continue
		}
		if links++; links > maxLinks {
			return "", fmt.Errorf("%s: %w", name, ErrLoop)
		}
		target := splitPath(e.Link)
		if strings.HasPrefix(e.Link, "/") {
			done = nil
		}
		todo = append(target, todo...)
	}
	if len(done) == 0 {
		return ".", nil
	}
	return path.Join(done...), nil
}

func splitPath(p string) []string {
	var out []string
	for _, s := range strings.Split(p, "/") {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}
