// Package directio writes large data past the page cache (O_DIRECT).
//
// Writing into new page-cache pages is what made a 16 MiB pack cost 55–70
// ms and a 2 GiB restore ~4 s on a 2-core VM (every new cache page a fault
// on the host); O_DIRECT took 11–16 ms and ~1.3 s. A backup's data is not
// read again soon either, so it should not evict the host's cache. O_DIRECT
// wants memory, file offsets and lengths in whole logical blocks: callers
// write the whole blocks direct and the rest through the cache.
package directio

import "unsafe"

// Align is the block O_DIRECT transfers are cut to: 4 KiB covers the
// logical block size of every common device.
const Align = 4096

// Aligned reports whether b starts on a block boundary.
func Aligned(b []byte) bool {
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))%Align == 0
}

// Buffer returns n bytes of memory starting on a block boundary.
func Buffer(n int) []byte {
	b := make([]byte, n+Align)
	skip := (Align - int(uintptr(unsafe.Pointer(&b[0]))%Align)) % Align
	return b[skip : skip+n : skip+n]
}
