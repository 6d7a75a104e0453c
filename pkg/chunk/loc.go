package chunk

import (
	"encoding/hex"
	"fmt"
)

// PackID names a pack: an object holding many stored chunks back to back
// (see package repo). The zero PackID names no pack.
type PackID [16]byte

func (p PackID) String() string { return hex.EncodeToString(p[:]) }

// IsZero reports whether p names no pack.
func (p PackID) IsZero() bool { return p == PackID{} }

// ParsePackID parses a hex pack id.
func ParsePackID(s string) (PackID, error) {
	var p PackID
	if len(s) != 2*len(p) {
		return p, fmt.Errorf("pack id %q: want %d hex digits", s, 2*len(p))
	}
	if _, err := hex.Decode(p[:], []byte(s)); err != nil {
		return p, fmt.Errorf("pack id %q: %w", s, err)
	}
	return p, nil
}

// Loc is where a stored chunk lies: bytes [Off, Off+Len) of a pack. The
// zero Loc means the chunk is an object of its own (how every chunk was
// stored before packs), so a reader given no location still finds it.
type Loc struct {
	Pack     PackID
	Off, Len uint32
}

// InPack reports whether l names a range of a pack.
func (l Loc) InPack() bool { return !l.Pack.IsZero() }

func (l Loc) String() string {
	if !l.InPack() {
		return "loose"
	}
	return fmt.Sprintf("%s@%d+%d", l.Pack, l.Off, l.Len)
}

// Ref is a chunk and where it is stored.
type Ref struct {
	ID  ID
	Loc Loc
}
