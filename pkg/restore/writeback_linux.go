package restore

import (
	"os"

	"golang.org/x/sys/unix"

	"github.com/strata-backup/strata/pkg/manifest"
)

// startWriteback asks the kernel to start writing a run's chunks to disk
// now (sync_file_range, without waiting): the final fsync, which makes the
// restored image durable before it is moved into place, then finds most
// of it written already, instead of the whole image waiting for it at the
// end (0.80 -> 0.60 s for the 1 GiB bench image; errors surface at fsync).
func startWriteback(f *os.File, man *manifest.Manifest, fr fetchedRun) {
	cs := int64(man.ChunkSize)
	for _, at := range fr.run.at {
		for _, i := range at {
			unix.SyncFileRange(int(f.Fd()), int64(i)*cs, cs, unix.SYNC_FILE_RANGE_WRITE)
		}
	}
}
